#!/usr/bin/env bash
# The one-command GPU check: the optimizer tests on CUDA (fused=True's Triton kernel among them),
# then the step benchmark on CUDA at 100 M+ parameters in float32 and bfloat16 (with the
# device-to-device copy as the bandwidth ceiling). Everything goes to one results file: $OUT/gpu_check.txt where $OUT is set (the device
# machine), else results/gpu_check/gpu_check.txt. Its timeouts add up to under 8 minutes (it
# has not run on a GPU yet). It also runs the timm example, which needs a torchvision built for the installed torch (the device
# machine has one; PyPI has no CPU build of torchvision for torch 2.13).
#
#   bash scripts/gpu_check.sh
#
# Needs python3 with a CUDA build of torch (and the Triton it comes with) and pytest (hypothesis for the property tests); the
# package is used from this checkout, not installed.
set -uo pipefail
cd "$(dirname "$0")/.."
out_dir="${OUT:-results/gpu_check}"
mkdir -p "$out_dir"
results="$out_dir/gpu_check.txt"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
{
    echo "# scripts/gpu_check.sh, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    python3 - <<'PY'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
print(f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA DEVICE'}")
PY
    echo
    echo "## Optimizer tests on cuda (the cuda cases of the device-parametrised tests: reference, modifiers, paths, compact state, AMP)"
    timeout 230 python3 -m pytest -q -p no:cacheprovider -x tests/optim -k cuda 2>&1 | tail -n 25 || status=1
    echo
    echo "## timm's optimizer factory (needs timm with a torchvision built for the installed torch)"
    timeout 50 python3 examples/timm_factory.py 2>&1 | tail -n 3 || status=1
    for dtype in float32 bfloat16; do
        echo
        echo "## Step benchmark, cuda, $dtype parameters, ResNet-50 widths x sqrt(5) (about 118 M parameters)"
        timeout 90 python3 benchmarks/step.py --device cuda --dtype "$dtype" --scale 5 --cases resnet50 --rounds 8 \
            --no-first-step --only "Adam,DiffGrad,pytorch_optimizer,bitsandbytes" 2>&1 || status=1
    done
} 2>&1 | tee "$results"
echo "results: $results"
exit $status
