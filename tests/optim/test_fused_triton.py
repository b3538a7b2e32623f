"""``fused=True``'s Triton kernel (diffgrad/optim/fused_triton.py), run on CPU tensors in
Triton's interpreter (tests/conftest.py sets ``TRITON_INTERPRET`` where there is no GPU), against
the per-tensor reference path: every option set and modifier set, the parameter dtypes, bfloat16
state as stored and 8-bit state decoded around the kernel. The kernel takes the CUDA route of the
dispatcher (``functional._fused_diffgrad_cuda``) with CPU tensors. It is also compiled for two
GPU architectures, which Triton's compiler does without a GPU.

Where CUDA is present the kernel is compiled instead, and test_reference.py and
test_modifiers.py run it on the device.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import diffgrad.optim.functional as functional
from diffgrad import DiffGrad
from optim_info import HP, MODIFIER_SETS, OPTION_SETS, decoded_state

interpreted = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="Triton compiles for the GPU here (the device tests run it)"
)


@pytest.fixture
def triton_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fused=True`` on CPU tensors takes the CUDA route, to the interpreted kernel."""
    pytest.importorskip("triton")
    monkeypatch.setattr(functional.fused_kernel, "fused_diffgrad_cpu", functional._fused_diffgrad_cuda)


def _params(dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """A 0-dim, a non-contiguous matrix, one of several kernel blocks, and one 8-bit-sized."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn((), generator=g, dtype=torch.float64).to(dtype),
        torch.randn(4, 3, generator=g, dtype=torch.float64).to(dtype).t(),
        torch.randn(2500, generator=g, dtype=torch.float64).to(dtype),
        torch.randn(16, 256, generator=g, dtype=torch.float64).to(dtype),
    ]


def _run(options: dict, dtype: torch.dtype, path: dict, steps: int = 6) -> tuple[list[torch.Tensor], DiffGrad]:
    params = [p.requires_grad_() for p in _params(dtype)]
    opt = DiffGrad(params, **HP, **options, **path)
    g = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        for i, p in enumerate(params):
            grad = torch.randn(p.shape, generator=g, dtype=torch.float64).mul_(1 + step % 3).to(dtype)
            # The third parameter skips every third step: its step count falls behind the others'.
            p.grad = None if i == 2 and step % 3 == 0 else grad
        opt.step()
    return params, opt


CASES = {**{f"option:{k}": v for k, v in OPTION_SETS.items()}, **{f"modifier:{k}": v for k, v in MODIFIER_SETS.items()}}
TOLERANCES = {torch.float64: {"rtol": 1e-12, "atol": 1e-14}, torch.float32: {"rtol": 1e-5, "atol": 1e-6}}


@interpreted
@pytest.mark.usefixtures("triton_route")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES)
def test_matches_the_per_tensor_path(case: str, dtype: torch.dtype) -> None:
    options = CASES[case]
    expected, reference = _run(options, dtype, {"foreach": False})
    actual, fused = _run(options, dtype, {"fused": True})
    for p, q in zip(actual, expected):
        torch.testing.assert_close(p, q, **TOLERANCES[dtype])
        for key, value in reference.state[q].items():
            torch.testing.assert_close(fused.state[p][key], value, **TOLERANCES[dtype])


@interpreted
@pytest.mark.usefixtures("triton_route")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.complex64])
@pytest.mark.parametrize("state_dtype", [None, torch.bfloat16, "8bit"])
@pytest.mark.parametrize("case", ["option:plain", "option:all", "modifier:all_dfc_rms"])
def test_low_precision_and_compact_state(case: str, dtype: torch.dtype, state_dtype: torch.dtype | str | None) -> None:
    """Parameters and state in their stored dtypes: the arithmetic in float32 in both paths, so
    they agree up to float32 round-off before the values are rounded to their storage; where that
    round-off sends a value to the neighbouring code of its format, the paths part by one unit
    of the parameter's format, or by α times the state format's relative spacing."""
    options = {**CASES[case], "state_dtype": state_dtype}
    expected, reference = _run(options, dtype, {"foreach": False})
    actual, fused = _run(options, dtype, {"fused": True})
    param_ulp = {torch.bfloat16: 2**-7, torch.float16: 2**-10}.get(dtype, 1e-6)
    state_spacing = {None: 0.0, torch.bfloat16: 2**-7, "8bit": 2**-3}[state_dtype]
    tolerance = param_ulp + HP["lr"] * state_spacing
    for p, q in zip(actual, expected):
        torch.testing.assert_close(p, q, rtol=tolerance, atol=tolerance)
        for key, value in reference.state[q].items():
            assert fused.state[p][key].dtype == value.dtype, key
            if key == "step" or key.endswith("_absmax"):
                continue
            actual_values, expected_values = (
                decoded_state(fused.state[p], key, p),
                decoded_state(reference.state[q], key, q),
            )
            spacing = max(state_spacing, param_ulp)
            torch.testing.assert_close(
                actual_values, expected_values, rtol=spacing, atol=spacing * expected_values.abs().max()
            )


@interpreted
@pytest.mark.usefixtures("triton_route")
@pytest.mark.parametrize(
    "options",
    [{}, {"amsgrad": True, "weight_decay": 0.1}, {"adainject": True, "rectify": True}, {"state_dtype": torch.bfloat16}],
    ids=["plain", "amsgrad_wd", "adainject_rectify", "bf16_state"],
)
def test_planned_launches_match_the_per_tensor_path(options: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Contiguous real tensors take the launches planned once (two groups here: float32 and
    bfloat16 parameters); a step where the step counts differ, or after a parameter's storage was
    replaced, is planned anew or takes the general launches, with the same values."""
    from diffgrad.optim import fused_triton

    planned = []
    run_plan = fused_triton._run_plan
    monkeypatch.setattr(fused_triton, "_run_plan", lambda *args: planned.append(run_plan(*args)) or planned[-1])

    def run(path: dict) -> tuple[list[torch.Tensor], DiffGrad]:
        g = torch.Generator().manual_seed(0)
        params = [
            torch.randn(3000, generator=g),
            torch.randn(7, 5, generator=g),
            torch.randn(40, generator=g).bfloat16(),
        ]
        params = [p.requires_grad_() for p in params]
        opt = DiffGrad(params, **HP, **options, **path)
        for step in range(1, 9):
            if step == 4:
                params[0].data = params[0].data.clone()  # new storage: a new plan
            for i, p in enumerate(params):
                skip = i == 1 and step == 6  # the step counts part here
                p.grad = None if skip else torch.randn(p.shape, generator=g).to(p.dtype)
            opt.step()
        return params, opt

    actual, fused = run({"fused": True})
    # Step 6 plans the two parameters with gradients; from step 7 on the counts differ.
    assert planned == [True] * 6 + [False] * 2, planned
    expected, reference = run({"foreach": False})
    for p, q in zip(actual, expected):
        tolerance = {"rtol": 2**-7, "atol": 2**-7} if p.dtype == torch.bfloat16 or options.get("state_dtype") else {}
        torch.testing.assert_close(p, q, **tolerance)
        for key, value in reference.state[q].items():
            torch.testing.assert_close(fused.state[p][key], value, **tolerance)


def test_without_triton_fused_on_cuda_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "diffgrad.optim.fused_triton", None)
    with pytest.raises(RuntimeError, match="Triton"):
        functional._fused_diffgrad_cuda([], [], [], [], [], [], [], [], [])


# Compiles the kernel for a GPU architecture with Triton's own compiler (ptxas included), which
# needs no GPU: the compiled code path that the interpreter does not take. Every constexpr
# option appears on and off, and every dtype the kernel reads.
_COMPILE_FOR_GPU = """
import inspect, re, sys
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from diffgrad.optim.fused_triton import _diffgrad_kernel as kernel

names = list(inspect.signature(kernel.fn).parameters)
base = dict(PARAM=tl.float32, GRAD=tl.float32, EXP_AVG=tl.float32, EXP_AVG_SQ=tl.float32, PREVIOUS_GRAD=tl.float32,
            MAX_EXP_AVG_SQ=tl.float32, COMPUTE=tl.float32, COUPLED=False, AMSGRAD=False, ABSOLUTE=True,
            RELATIVE=False, PER_TENSOR=False, INJECT=False, CAUTIOUS=False, COUNT_ONLY=False, BLOCK=1024)
bf16_state = dict(EXP_AVG=tl.bfloat16, EXP_AVG_SQ=tl.bfloat16, PREVIOUS_GRAD=tl.bfloat16, MAX_EXP_AVG_SQ=tl.bfloat16)
every = dict(COUPLED=True, AMSGRAD=True, ABSOLUTE=False, RELATIVE=True, PER_TENSOR=True, INJECT=True, CAUTIOUS=True)
cases = [
    {},
    {**bf16_state, "AMSGRAD": True, "RELATIVE": True, "COUPLED": True},
    {"PARAM": tl.bfloat16, "GRAD": tl.bfloat16, **bf16_state},
    {"PARAM": tl.float16, "GRAD": tl.float16},
    every,
    {**every, "COUNT_ONLY": True},
    {**{k: tl.float64 for k in ("PARAM", "GRAD", "EXP_AVG", "EXP_AVG_SQ", "PREVIOUS_GRAD", "MAX_EXP_AVG_SQ", "COMPUTE")}, **every},
]
for capability in (80, 90):
    for case in cases:
        constants = {**base, **case}
        scalars = "fp64" if constants["COMPUTE"] == tl.float64 else "fp32"
        signature = {"addresses": "*i64", "coefficients": "*fp64", "tensor_scalars": "*" + scalars, "counts": "*i64",
                     "chunk_tensors": "*i32", "chunk_starts": "*i64", "n_tensors": "i32",
                     **{name: "constexpr" for name in constants}}
        if "constexprs" in inspect.signature(ASTSource).parameters:
            source = ASTSource(fn=kernel, signature=signature,
                               constexprs={(names.index(name),): value for name, value in constants.items()})
        else:  # Triton 3.2
            source = ASTSource(fn=kernel, signature=signature, constants=constants)
        compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32))
        assert compiled.asm["cubin"], (capability, case)
        # In float32, every division and square root is the correctly rounded one, as torch's.
        approximate = re.findall(r"(?:div\\.full|div\\.approx|sqrt\\.approx|rcp\\.approx)\\.f32", compiled.asm["ptx"])
        assert constants["COMPUTE"] != tl.float32 or not approximate, (capability, case, approximate)
print("compiled", 2 * len(cases))
"""


def test_kernel_compiles_for_gpus_without_one(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_GPU], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compiled 14" in done.stdout
