#!/usr/bin/env bash
# Run examples/timm_factory.py (timm's optimizer factory creating a DiffGrad) in an environment
# of its own. timm imports torchvision, and PyPI's only torchvision for torch 2.13 is built for a
# CUDA torch: beside the pinned CPU torch it fails to import. This environment takes the pinned
# pair torch 2.14.1 / torchvision 0.29.1 instead (a CUDA build, about 5.5 GB installed, which
# runs on the CPU), uses the package from this checkout, and is removed afterwards.
#
#   bash scripts/check_timm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
need_gb=10
free_gb=$(df -Pk "${TMPDIR:-/tmp}" | awk 'NR == 2 { print int($4 / 1048576) }')
if (( free_gb < need_gb )); then
    echo "check_timm: SKIPPED, ${free_gb} GB free in ${TMPDIR:-/tmp}, the environment needs ${need_gb} GB"
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3.11 -m venv "$work/venv"
if ! "$work/venv/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 "timm>=1.0" >"$work/pip.log" 2>&1; then
    grep -v "^WARNING: Location" "$work/pip.log"
    exit 1
fi
output="$(cd "$work" && PYTHONPATH="$OLDPWD" DIFFGRAD_CACHE_DIR="$work/kernel-cache" \
    "$work/venv/bin/python" "$OLDPWD/examples/timm_factory.py" --steps 2)"
echo "$output"
[[ "$output" == *"DiffGrad with"* && "$output" == *"OK timm_factory"* ]] || { echo "check_timm: FAILED"; exit 1; }
