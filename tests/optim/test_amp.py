"""Mixed precision: torch.amp.GradScaler on every path, and bfloat16/float16 parameters."""

from __future__ import annotations

import pytest
import torch

from diffgrad import DiffGrad
from optim_info import DEVICES, EVERY_MODIFIER
from optim_info import EXPLICIT_PATHS as PATHS


def _loss(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x.to(w.dtype) @ w).float().pow(2).mean()


# Every path in float32 and float16, and with every diffGrad-family modifier (whose state, too,
# must stay put on a skipped step).
SCALER_CASES = [
    pytest.param(device, path, dtype, options, id=f"{device}-{path}-{str(dtype)[6:]}-{name}")
    for device in DEVICES
    for path in PATHS
    for dtype in (torch.float32, torch.float16)
    for name, options in (("plain", {}), ("modifiers", EVERY_MODIFIER))
]


@pytest.mark.parametrize(("device", "path", "dtype", "options"), SCALER_CASES)
def test_grad_scaler_unscales_and_skips_non_finite_steps(
    device: str, path: str, dtype: torch.dtype, options: dict
) -> None:
    """Finite steps equal unscaled ones; a step with an inf gradient changes nothing (params,
    every state tensor, the step count) and GradScaler backs off. float16 gradients need the
    optimizer-side unscaling (GradScaler refuses to unscale them itself)."""
    torch.manual_seed(0)
    w = torch.randn(8, 4).to(device, dtype).requires_grad_()
    w_plain = w.detach().clone().requires_grad_()
    opt = DiffGrad([w], lr=1e-2, amsgrad=True, **options, **PATHS[path])
    plain = DiffGrad([w_plain], lr=1e-2, amsgrad=True, **options, **PATHS[path])
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10)
    x = torch.randn(16, 8).to(device)
    for _ in range(3):
        opt.zero_grad()
        scaler.scale(_loss(w, x)).backward()
        scaler.step(opt)
        scaler.update()
        plain.zero_grad()
        _loss(w_plain, x).backward()
        plain.step()
    # Power-of-two scales unscale exactly.
    assert torch.equal(w, w_plain)
    for key, value in plain.state[w_plain].items():
        assert torch.equal(opt.state[w][key], value), key

    opt.zero_grad()
    scaler.scale(_loss(w, x)).backward()
    w.grad[0, 0] = float("inf")
    before = {key: value.clone() for key, value in opt.state[w].items()}
    assert set(before) >= {"previous_param", "exp_grad_norm"} or not options
    w_before = w.detach().clone()
    scale = scaler.get_scale()
    scaler.step(opt)
    scaler.update()
    assert torch.equal(w, w_before)
    for key, value in before.items():
        assert torch.equal(opt.state[w][key], value), key
    assert scaler.get_scale() == scale / 2


def test_unscale_before_step_for_gradient_clipping() -> None:
    """The clipping recipe (unscale_, clip, step): the optimizer then sees found_inf only."""
    torch.manual_seed(0)
    w = torch.randn(8, 4, requires_grad=True)
    w_plain = w.detach().clone().requires_grad_()
    opt, plain = DiffGrad([w]), DiffGrad([w_plain])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x = torch.randn(16, 8)
    scaler.scale(_loss(w, x)).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_([w], 0.1)
    scaler.step(opt)
    _loss(w_plain, x).backward()
    torch.nn.utils.clip_grad_norm_([w_plain], 0.1)
    plain.step()
    torch.testing.assert_close(w, w_plain)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_params_keep_float32_state_and_track_float32(dtype: torch.dtype) -> None:
    """State defaults to float32; the update is computed in float32 and rounded once, so the
    low-precision run stays within the parameter dtype's resolution of a float32 run."""
    torch.manual_seed(0)
    w32 = torch.randn(64, 32, requires_grad=True)
    w = w32.detach().to(dtype).requires_grad_()
    w32.data.copy_(w.detach())  # same starting point
    opt, opt32 = DiffGrad([w], lr=1e-3), DiffGrad([w32], lr=1e-3)
    for _ in range(20):
        grad = torch.randn(64, 32)
        w.grad, w32.grad = grad.to(dtype), grad.to(dtype).float()
        opt.step()
        opt32.step()
    assert all(v.dtype == torch.float32 for v in opt.state[w].values())
    assert w.dtype == dtype
    ulp = torch.finfo(dtype).eps * w32.detach().abs().clamp_min(1.0)
    assert ((w.float() - w32.detach()).abs() <= 20 * ulp).all()
