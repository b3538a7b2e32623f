#!/usr/bin/env bash
# Build the wheel and the sdist, install the wheel into a fresh virtual environment (with the
# pinned CPU torch) and use it from outside the checkout: the package imports, its version is
# the project's, and the fused kernel's C++ source ships (a fused step builds and runs).
#
#   bash scripts/check_dist.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3.11 -m venv "$work/build-env"
"$work/build-env/bin/pip" install -q build
"$work/build-env/bin/python" -m build --outdir "$work/dist" . >/dev/null
wheel=("$work"/dist/*.whl)
sdist=("$work"/dist/*.tar.gz)
listing="$(tar -tzf "${sdist[0]}")"
[[ "$listing" == *"diffgrad/optim/csrc/fused_step.cpp"* ]] || { echo "the sdist lacks fused_step.cpp"; exit 1; }
python3.11 -m venv "$work/venv"
"$work/venv/bin/pip" install -q torch==2.13.0 "${wheel[0]}"
cd "$work"
DIFFGRAD_CACHE_DIR="$work/kernel-cache" "$work/venv/bin/python" - <<'PY'
import importlib.metadata, torch, diffgrad
from diffgrad import DiffGrad
assert "site-packages" in diffgrad.__file__, diffgrad.__file__
assert importlib.metadata.version("diffgrad") == diffgrad.__version__
p = torch.nn.Parameter(torch.ones(3))
p.grad = torch.full((3,), 0.5)
DiffGrad([p], lr=0.1, fused=True).step()
q = torch.nn.Parameter(torch.ones(3))
q.grad = torch.full((3,), 0.5)
DiffGrad([q], lr=0.1, foreach=False).step()
assert torch.equal(p, q), (p, q)
print(f"dist: diffgrad {diffgrad.__version__} wheel and sdist built; the installed wheel steps fused = per-tensor")
PY
