#!/usr/bin/env bash
# Run the test suite on another release of torch: a throwaway environment with PyPI's build of
# that release (a CUDA build of several GB, which runs on the CPU; its own Triton), the lab and
# test extras of pyproject.toml, and the package from this checkout on PYTHONPATH (so a release
# below the declared floor can be tried). docs/install.md's table of torch versions comes from it.
#
#   bash scripts/check_torch.sh 2.11.0                         # the whole suite, Python 3.11
#   PYTHON=python3.12 bash scripts/check_torch.sh 2.11.0 tests/distributed -x
set -euo pipefail
version="${1:?usage: scripts/check_torch.sh TORCH_VERSION [PYTEST_ARGUMENTS...]}"
shift
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"${PYTHON:-python3.11}" -m venv "$work/venv"
# The extras' requirements, less Triton: each torch build brings the Triton it was made with.
mapfile -t requirements < <("$work/venv/bin/python" - <<'PY'
import tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
for requirement in extras["lab"] + extras["test"]:
    if not requirement.startswith("triton"):
        print(requirement)
PY
)
if ! "$work/venv/bin/pip" install -q "torch==$version" "${requirements[@]}" >"$work/pip.log" 2>&1; then
    grep -v "^WARNING: Location" "$work/pip.log"
    exit 1
fi
"$work/venv/bin/python" -c 'import sys, torch; print(f"check_torch: torch {torch.__version__}, Python {sys.version.split()[0]}")'
PYTHONPATH="$PWD" DIFFGRAD_CACHE_DIR="$work/kernel-cache" "$work/venv/bin/python" -m pytest -q -p no:cacheprovider "${@:-tests}"
