#!/usr/bin/env bash
# The one-command GPU check, into one results file ($OUT/gpu_check.txt where $OUT is set, as on the
# device machine, else results/gpu_check/gpu_check.txt):
#   - the optimizer tests' CUDA cases (fused=True's Triton kernel among them);
#   - the timm example (it needs a torchvision built for the installed torch; PyPI has no CPU
#     build of torchvision for torch 2.13, the device machine has a CUDA one);
#   - the first steps of fused=True in new processes (the Triton kernel's compile, cold and warm);
#   - the step benchmark at about 118 M parameters in float32 and bfloat16, with the
#     device-to-device copy as the bandwidth ceiling.
# Its timeouts add up to under 8 minutes. It exits non-zero if any part failed.
#
#   bash scripts/gpu_check.sh
#
# Needs python3 with a CUDA build of torch (and the Triton it comes with), pytest and hypothesis;
# the package is used from this checkout, not installed.
set -uo pipefail
cd "$(dirname "$0")/.."
out_dir="${OUT:-results/gpu_check}"
mkdir -p "$out_dir"
results="$out_dir/gpu_check.txt"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
exec > >(tee "$results") 2>&1
echo "# scripts/gpu_check.sh, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
python3 - <<'PY'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
print(f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA DEVICE'}")
PY
echo
echo "## Optimizer tests on cuda (the cuda cases of the device-parametrised tests: reference, modifiers, paths, compact state, AMP)"
timeout 200 python3 -m pytest -q -p no:cacheprovider --maxfail=10 tests/optim -k cuda 2>&1 | tail -n 40 || status=1
echo
echo "## timm's optimizer factory (needs timm with a torchvision built for the installed torch)"
timeout 40 python3 examples/timm_factory.py 2>&1 | tail -n 3 || status=1
echo
echo "## First steps of fused=True on cuda in new processes (cold: empty Triton cache; warm: the cold run's)"
timeout 90 python3 benchmarks/step.py --device cuda --cases resnet50,resnet50x4 --rounds 2 --no-compact \
    --only "DiffGrad fused" 2>&1 | sed -n '/First steps/,$p' || status=1
for dtype in float32 bfloat16; do
    echo
    echo "## Step benchmark, cuda, $dtype parameters, ResNet-50 widths x sqrt(5) (about 118 M parameters)"
    timeout 70 python3 benchmarks/step.py --device cuda --dtype "$dtype" --scale 5 --cases resnet50 --rounds 8 \
        --no-first-step --only "Adam,DiffGrad,pytorch_optimizer,bitsandbytes" 2>&1 || status=1
done
echo "results: $results (exit status $status)"
exit $status
