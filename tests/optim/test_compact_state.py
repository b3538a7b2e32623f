"""Compact state (``state_dtype``): bytes per parameter, codec accuracy, agreement of the paths,
state_dict round trips and conversions, and training parity on a small model."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from diffgrad import DiffGrad
from diffgrad.optim.state import BLOCK, Blockwise8, load, new_buffer, store
from optim_info import DEVICES
from optim_info import EXPLICIT_PATHS as PATHS


def _state_bytes_per_param(opt: DiffGrad) -> float:
    nbytes = sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items() if k != "step")
    return nbytes / sum(p.numel() for p in opt.state)


@pytest.mark.parametrize(
    "state_dtype, amsgrad, expected",
    [
        (None, False, 12.0),
        (None, True, 16.0),
        (torch.bfloat16, False, 6.0),
        (torch.bfloat16, True, 8.0),
        ("8bit", False, 3 * (1 + 4 / BLOCK)),
        ("8bit", True, 4 * (1 + 4 / BLOCK)),
    ],
)
def test_bytes_per_parameter(state_dtype, amsgrad: bool, expected: float) -> None:
    p = torch.randn(64, 256, requires_grad=True)
    p.grad = torch.randn_like(p)
    opt = DiffGrad([p], state_dtype=state_dtype, amsgrad=amsgrad)
    opt.step()
    assert _state_bytes_per_param(opt) == pytest.approx(expected)


def test_small_and_unblocked_tensors_stay_in_the_compute_dtype() -> None:
    assert isinstance(new_buffer(torch.zeros(4096), "8bit"), Blockwise8)
    for shape in [(4095,), (17, 257)]:  # too small; not a whole number of blocks
        buffer = new_buffer(torch.zeros(shape), "8bit")
        assert isinstance(buffer, torch.Tensor) and buffer.dtype == torch.float32


def test_codec_relative_error_and_no_zero_denominators() -> None:
    g = torch.Generator().manual_seed(0)
    # Values spread over six decades within each block.
    x = torch.randn(8 * BLOCK, generator=g) * 10 ** torch.empty(8 * BLOCK).uniform_(-6, 0, generator=g)
    buffer = new_buffer(x, "8bit")
    span = (0, x.numel())
    store(buffer, x, span)
    decoded, _ = load(buffer, span, torch.float32, copy=True)
    absmax = x.view(-1, BLOCK).abs().amax(1).repeat_interleave(BLOCK)
    # e4m3 keeps 3 mantissa bits down to 2^-6 of the block maximum, then absolute steps of 2^-9/448.
    assert ((decoded - x).abs() <= x.abs() / 16 + absmax * 2.0**-9 / 448).all()

    v = x.square()
    store(buffer, v, span, sqrt_domain=True)
    decoded_v, _ = load(buffer, span, torch.float32, copy=True, sqrt_domain=True)
    assert (decoded_v > 0).all(), "a positive second moment decoded to zero"
    big = v > v.view(-1, BLOCK).amax(1).repeat_interleave(BLOCK) * 1e-3
    assert ((decoded_v[big].sqrt() - v[big].sqrt()).abs() <= v[big].sqrt() / 16).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("state_dtype", [torch.bfloat16, "8bit"])
def test_paths_agree_with_compact_state(state_dtype, device: str) -> None:
    runs = {}
    for name, path in PATHS.items():
        g = torch.Generator().manual_seed(0)
        params = [torch.randn(32, 256, generator=g).to(device).requires_grad_(),
                  torch.randn(10, generator=g).to(device).requires_grad_()]  # fmt: skip
        opt = DiffGrad(params, lr=1e-2, amsgrad=True, state_dtype=state_dtype, **path)
        for _ in range(10):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g).to(device)
            opt.step()
        runs[name] = (params, opt)
    (base, base_opt) = runs["single_tensor"]
    for name, (params, opt) in runs.items():
        for p, q in zip(base, params):
            # float32 round-off may flip a stored code (bf16 ulp or 8-bit step) now and then.
            torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-4, msg=name)
            for key, value in base_opt.state[p].items():
                assert opt.state[q][key].dtype == value.dtype
                if value.dtype != torch.uint8:
                    torch.testing.assert_close(opt.state[q][key].float(), value.float(), rtol=2e-2, atol=1e-5)


def _model_and_opt(state_dtype, device: str = "cpu", **options) -> tuple[nn.Module, DiffGrad]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 2)).to(device)  # 8192 and 256 weights
    return model, DiffGrad(model.parameters(), lr=1e-2, state_dtype=state_dtype, **options)


def _train(model: nn.Module, opt: DiffGrad, steps: range) -> None:
    device = next(model.parameters()).device
    for i in steps:
        g = torch.Generator().manual_seed(i)
        x, y = torch.randn(16, 64, generator=g).to(device), torch.randn(16, 2, generator=g).to(device)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("state_dtype", [torch.bfloat16, "8bit"])
def test_state_dict_round_trip_is_bit_exact(state_dtype, path: str, device: str) -> None:
    model, opt = _model_and_opt(state_dtype, device, **PATHS[path])
    _train(model, opt, range(12))
    expected = [p.detach().clone() for p in model.parameters()]

    model, opt = _model_and_opt(state_dtype, device, **PATHS[path])
    _train(model, opt, range(5))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model, opt = _model_and_opt(state_dtype, device, **PATHS[path])
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    first = opt.state[next(model.parameters())]
    assert first["exp_avg"].dtype == (torch.uint8 if state_dtype == "8bit" else torch.bfloat16)
    _train(model, opt, range(5, 12))
    for actual, want in zip(model.parameters(), expected):
        assert torch.equal(actual, want)


def test_loading_converts_to_the_configured_state_dtype() -> None:
    model, opt = _model_and_opt(None)
    _train(model, opt, range(5))
    weight = next(model.parameters())
    full = {k: v.clone() for k, v in opt.state[weight].items()}

    compact = DiffGrad(model.parameters(), lr=1e-2, state_dtype="8bit")
    compact.load_state_dict(opt.state_dict())
    assert compact.state[weight]["exp_avg"].dtype == torch.uint8
    back = DiffGrad(model.parameters(), lr=1e-2)
    back.load_state_dict(compact.state_dict())
    for key in ("exp_avg", "previous_grad"):
        restored = back.state[weight][key]
        assert restored.dtype == torch.float32 and restored.shape == weight.shape
        torch.testing.assert_close(restored, full[key], rtol=1 / 16, atol=full[key].abs().max().item() * 2.0**-9 / 448)


def test_float32_state_of_bfloat16_params_survives_a_round_trip() -> None:
    """torch.optim casts loaded state to the parameter's dtype; DiffGrad keeps float32."""
    p = torch.randn(100, dtype=torch.bfloat16, requires_grad=True)
    p.grad = torch.randn_like(p)
    opt = DiffGrad([p])
    opt.step()
    state = {k: v.clone() for k, v in opt.state[p].items()}
    fresh = DiffGrad([p])
    fresh.load_state_dict(opt.state_dict())
    for key, value in state.items():
        assert fresh.state[p][key].dtype == value.dtype and torch.equal(fresh.state[p][key], value)


def test_compact_state_trains_like_float32() -> None:
    """A small classifier reaches the float32 run's loss within noise (seed-to-seed spread)."""

    def final_loss(state_dtype, seed: int) -> float:
        torch.manual_seed(seed)
        x = torch.randn(256, 32)
        y = (x[:, :8].sum(1) > 0).long()
        model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 2))
        opt = DiffGrad(model.parameters(), lr=3e-3, state_dtype=state_dtype)
        for _ in range(40):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        return loss.item()

    seeds = range(3)
    full = torch.tensor([final_loss(None, s) for s in seeds])
    for state_dtype in (torch.bfloat16, "8bit"):
        compact = torch.tensor([final_loss(state_dtype, s) for s in seeds])
        spread = max(full.std().item(), 0.05 * full.mean().item())
        assert abs(compact.mean().item() - full.mean().item()) <= 2 * spread, (state_dtype, full, compact)


def test_invalid_state_dtype_is_named() -> None:
    for bad in (torch.float16, "int8", 8):
        with pytest.raises(ValueError, match="Invalid state_dtype"):
            DiffGrad([torch.randn(3, requires_grad=True)], state_dtype=bad)
