"""The implementation paths against each other, including what test_reference.py's small tensors
do not reach: large tensors, mixed dtypes, compact state unpacked in batches, and the default
path's choice where the fused kernel cannot be built."""

from __future__ import annotations

import functools

import pytest
import torch

from diffgrad import DiffGrad
from diffgrad.optim import functional
from optim_info import DEVICES, HP, PATHS

ALL_OPTIONS = {"weight_decay": 0.05, "amsgrad": True, "maximize": True}


def test_compact_state_unpacked_in_batches_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference paths unpack compact state a few tensors at a time (``UNPACK_NUMEL``): the
    batches change nothing, bit for bit."""

    def run(size: int) -> tuple[list[torch.Tensor], DiffGrad]:
        monkeypatch.setattr(functional, "UNPACK_NUMEL", size)
        g = torch.Generator().manual_seed(0)
        params = [
            torch.randn(16, 320, generator=g, requires_grad=True),
            torch.randn(8, 512, generator=g, requires_grad=True),
        ]
        opt = DiffGrad(params, **HP, **ALL_OPTIONS, state_dtype="8bit", foreach=True)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        return params, opt

    whole_params, whole_opt = run(1 << 30)
    sliced_params, sliced_opt = run(768)  # one tensor at a time
    for p, q in zip(whole_params, sliced_params):
        assert torch.equal(p, q)
        for key, value in whole_opt.state[p].items():
            assert torch.equal(value, sliced_opt.state[q][key]), key


@pytest.mark.parametrize("device", DEVICES)
def test_all_paths_agree_on_every_state_key(device: str) -> None:
    """Per-tensor, foreach, fused and the default mix, on float32, bfloat16 and float16
    parameters together (state in float32), large and small, contiguous or not."""
    runs = {}
    for name, path in PATHS.items():
        g = torch.Generator().manual_seed(0)
        params = [
            torch.randn(64, 640, generator=g).to(device).requires_grad_(),  # over the kernel's serial size
            torch.randn(5, 4, generator=g).to(device).t().requires_grad_(),
            torch.randn(300, generator=g).to(device, torch.bfloat16).requires_grad_(),
            torch.randn(3, 7, generator=g).to(device, torch.float16).requires_grad_(),
        ]
        opt = DiffGrad(params, **HP, **ALL_OPTIONS, **path)
        for _ in range(25):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g).to(device, p.dtype)
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


def test_default_path_without_a_compiler_takes_the_per_tensor_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the fused kernel cannot be built, the default path steps CPU tensors with the
    per-tensor path: the same numbers as ``foreach=False``."""

    def no_compiler() -> None:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(functional.fused_kernel, "library", no_compiler)
    monkeypatch.setattr(functional, "_kernel_available", functools.cache(functional._kernel_available.__wrapped__))
    runs = []
    for path in ({}, {"foreach": False}):
        g = torch.Generator().manual_seed(0)
        p = torch.randn(40, 30, generator=g, requires_grad=True)
        opt = DiffGrad([p], **HP, **ALL_OPTIONS, **path)
        for _ in range(5):
            p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        runs.append((p, opt.state[p]))
    (p, state), (q, expected) = runs
    assert torch.equal(p, q)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
