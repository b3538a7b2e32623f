"""The implementation paths against each other and the reference, including what
test_reference.py's small tensors do not reach: the default path's sliced step on torch's fused
Adam kernel (large CPU tensors, :mod:`diffgrad.optim.cpu_slices`) and compact state unpacked in
batches."""

from __future__ import annotations

import pytest
import torch

from diffgrad import DiffGrad
from diffgrad.optim import cpu_slices, functional
from optim_info import HP, PATHS
from reference import RefState, reference_kwargs, reference_step

ALL_OPTIONS = {"weight_decay": 0.05, "amsgrad": True, "maximize": True}


@pytest.mark.parametrize(
    "options", [ALL_OPTIONS, {"weight_decay": 0.1, "decoupled_weight_decay": True, "friction": "dfc1"}], ids=["all", "decoupled_dfc1"]
)
def test_sliced_default_step_matches_reference(monkeypatch: pytest.MonkeyPatch, options: dict) -> None:
    """With every CPU tensor sent to the sliced step on torch's fused Adam kernel, float64 still
    equals the reference."""
    monkeypatch.setattr(cpu_slices, "MIN_NUMEL", 0)
    monkeypatch.setattr(cpu_slices, "CHUNK", 5)  # (3, 4) takes three slices, the last one short
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_() for shape in [(), (3, 4), (7,)]]
    opt = DiffGrad(params, **HP, **options)
    ref = [(p.detach().flatten().tolist(), RefState()) for p in params]
    for _ in range(40):
        for i, p in enumerate(params):
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
            theta, st = ref[i]
            ref[i] = (reference_step(theta, p.grad.flatten().tolist(), st, **reference_kwargs(options, HP)), st)
        opt.step()
    for p, (theta, st) in zip(params, ref):
        torch.testing.assert_close(p.detach().flatten(), torch.tensor(theta, dtype=torch.float64), rtol=1e-12, atol=1e-14)
        for key, value in (("exp_avg", st.m), ("exp_avg_sq", st.v), ("previous_grad", st.g_prev)):
            torch.testing.assert_close(opt.state[p][key].flatten(), torch.tensor(value, dtype=torch.float64))


@pytest.mark.parametrize(
    "module, name, state_dtype", [(cpu_slices, "CHUNK", None), (functional, "UNPACK_NUMEL", "8bit")], ids=["slices", "8bit"]
)
def test_slices_equal_whole_tensors_bit_for_bit(monkeypatch: pytest.MonkeyPatch, module, name: str, state_dtype) -> None:
    """The default path's cache-sized slices (an uneven last one included), and compact state
    unpacked a few tensors at a time, change nothing."""

    def run(size: int) -> tuple[list[torch.Tensor], DiffGrad]:
        monkeypatch.setattr(module, name, size)
        g = torch.Generator().manual_seed(0)
        params = [torch.randn(16, 320, generator=g, requires_grad=True), torch.randn(8, 512, generator=g, requires_grad=True)]
        opt = DiffGrad(params, **HP, **ALL_OPTIONS, state_dtype=state_dtype)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        return params, opt

    whole_params, whole_opt = run(1 << 30)
    sliced_params, sliced_opt = run(768)  # 5120 elements: six slices of 768 and one of 512
    for p, q in zip(whole_params, sliced_params):
        assert torch.equal(p, q)
        for key, value in whole_opt.state[p].items():
            assert torch.equal(value, sliced_opt.state[q][key]), key


def test_all_paths_agree_on_every_state_key() -> None:
    """Per-tensor, foreach, fused and the default mix, on float32, bfloat16 and float16
    parameters together (state in float32), large and small, contiguous or not."""
    runs = {}
    for name, path in PATHS.items():
        g = torch.Generator().manual_seed(0)
        params = [
            torch.randn(64, 640, generator=g).requires_grad_(),  # over _SERIAL_NUMEL: fused Adam kernel
            torch.randn(5, 4, generator=g).t().requires_grad_(),
            torch.randn(300, generator=g).to(torch.bfloat16).requires_grad_(),
            torch.randn(3, 7, generator=g).to(torch.float16).requires_grad_(),
        ]
        opt = DiffGrad(params, **HP, **ALL_OPTIONS, **path)
        for _ in range(25):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
            opt.step()
        runs[name] = (params, opt)
    base_params, base_opt = runs["single_tensor"]
    for name, (params, opt) in runs.items():
        for p, q in zip(base_params, params):
            # Low-precision parameters may round the same float32 update differently by one ulp.
            tol = {"rtol": 1e-5, "atol": 1e-6} if p.dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-3}
            torch.testing.assert_close(q, p, **tol, msg=f"{name}: param")
            assert set(opt.state[q]) == set(base_opt.state[p])
            for key, value in base_opt.state[p].items():
                assert opt.state[q][key].dtype == (torch.float32 if key != "step" else value.dtype)
                torch.testing.assert_close(opt.state[q][key], value, rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")
