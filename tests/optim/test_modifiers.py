"""The diffGrad family's modifiers (rectification, AdaNorm, AdaInject, cautious masking, gradient
centralisation) against the independent float64 reference, alone and combined, on every
implementation path and every state key; their state in state dicts; their argument checks."""

from __future__ import annotations

import copy

import pytest
import torch

from diffgrad import DiffGrad
from optim_info import DEVICES, EVERY_MODIFIER, EXPLICIT_PATHS, HP, MODIFIER_SETS
from reference import RefState, reference_kwargs, reference_step

IMPLEMENTATIONS = EXPLICIT_PATHS
CASES = [(device, impl, name) for device in DEVICES for impl in IMPLEMENTATIONS for name in MODIFIER_SETS]


def _params(device: str = "cpu") -> list[torch.Tensor]:
    """A 0-dim, a non-contiguous matrix and a plain 3-dim parameter (float64)."""
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn((), generator=g, dtype=torch.float64).to(device).requires_grad_(),
        torch.randn(4, 3, generator=g, dtype=torch.float64).to(device).t().requires_grad_(),
        torch.randn(2, 3, 2, generator=g, dtype=torch.float64).to(device).requires_grad_(),
    ]


def _gradient(shape: torch.Size, step: int, g: torch.Generator) -> torch.Tensor:
    # Scales that change from step to step, so AdaNorm's e_t is sometimes above ‖g‖ and
    # sometimes below, and cautious masks change.
    return torch.randn(shape, generator=g, dtype=torch.float64) * (1 + step % 5)


@pytest.mark.parametrize(("device", "impl", "name"), CASES)
def test_matches_reference_on_every_state_key(device: str, impl: str, name: str) -> None:
    options = MODIFIER_SETS[name]
    params = _params(device)
    opt = DiffGrad(params, **HP, **options, **IMPLEMENTATIONS[impl])
    ref_theta = [p.detach().flatten().tolist() for p in params]
    ref_states = [RefState() for _ in params]
    g = torch.Generator().manual_seed(1)
    for step in range(1, 61):
        for i, p in enumerate(params):
            # The last parameter skips every third step: its modifier state must not move either.
            if i == 2 and step % 3 == 0:
                p.grad = None
                continue
            grad = _gradient(p.shape, step, g)
            p.grad = grad.to(device)
            kwargs = reference_kwargs(options, HP, p.shape)
            ref_theta[i] = reference_step(ref_theta[i], grad.flatten().tolist(), ref_states[i], **kwargs)
        opt.step()

    for p, theta, st in zip(params, ref_theta, ref_states):
        state = opt.state[p]
        expected = {"step": float(st.step), "exp_avg": st.m, "exp_avg_sq": st.v, "previous_grad": st.g_prev}
        if options.get("amsgrad"):
            expected["max_exp_avg_sq"] = st.v_max
        if options.get("adanorm"):
            expected["exp_grad_norm"] = st.norm
        if options.get("adainject"):
            expected["previous_param"] = st.theta_prev
        assert set(state) == set(expected)
        torch.testing.assert_close(
            p.detach().cpu().flatten(), torch.tensor(theta, dtype=torch.float64), rtol=1e-10, atol=1e-12
        )
        for key, value in expected.items():
            actual = state[key].cpu().flatten()
            torch.testing.assert_close(
                actual, torch.as_tensor(value, dtype=actual.dtype).flatten(), rtol=1e-10, atol=1e-12
            )


def test_rectification_golden_values() -> None:
    """RAdam's schedule for β2 = 0.999: ρ∞ = 1999, warm-up through t = 5 (ρ_5 ≈ 4.990), then
    ρ_6 ≈ 5.985 and r_6 = sqrt(1.985·3.985·1999 / (1995·1997·5.985)) ≈ 0.0258, rising towards 1."""
    from diffgrad.optim.modifiers import rectification

    assert [rectification(float(t), 0.999, 5.0, "sgd") for t in range(1, 6)] == [(0.0, 1.0)] * 5
    assert rectification(5.0, 0.999, 5.0, "skip") == (0.0, 0.0)
    r6, warm6 = rectification(6.0, 0.999, 5.0, "sgd")
    assert warm6 == 0.0 and r6 == pytest.approx(0.0258, abs=2e-4)
    ratios = [rectification(float(t), 0.999, 5.0, "sgd")[0] for t in (10, 100, 1000, 100000)]
    assert ratios == sorted(ratios) and ratios[-1] == pytest.approx(1.0, abs=1e-3)
    # The compiled path's tensor form agrees with the float form.
    steps = torch.arange(1.0, 50.0, dtype=torch.float64)
    ratio_t, warm_t = rectification(steps, 0.999, 5.0, "sgd")
    expected = [rectification(float(t), 0.999, 5.0, "sgd") for t in steps.tolist()]
    torch.testing.assert_close(ratio_t, torch.tensor([r for r, _ in expected], dtype=torch.float64))
    torch.testing.assert_close(warm_t, torch.tensor([w for _, w in expected], dtype=torch.float64))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_state_dict_round_trip_with_every_modifier(impl: str) -> None:
    """Saved after 7 steps and loaded into a fresh optimizer, the run continues bit for bit."""
    options = {**EVERY_MODIFIER, "amsgrad": True, "weight_decay": 0.05}
    params = _params()
    opt = DiffGrad(params, **HP, **options, **IMPLEMENTATIONS[impl])
    g = torch.Generator().manual_seed(3)
    grads = [[_gradient(p.shape, step, g) for p in params] for step in range(14)]

    def steps(opt: DiffGrad, params: list[torch.Tensor], span: range) -> None:
        for step in span:
            for p, grad in zip(params, grads[step]):
                p.grad = grad.clone()
            opt.step()

    steps(opt, params, range(7))
    saved = copy.deepcopy(opt.state_dict())
    assert {"previous_param", "exp_grad_norm"} <= set(saved["state"][0])
    clones = [p.detach().clone().requires_grad_() for p in params]
    resumed = DiffGrad(clones, **HP, **options, **IMPLEMENTATIONS[impl])
    resumed.load_state_dict(saved)
    steps(opt, params, range(7, 14))
    steps(resumed, clones, range(7, 14))
    for p, q in zip(params, clones):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(value, resumed.state[q][key]), key


def test_state_from_before_the_modifiers_starts_them() -> None:
    """AdaInject and AdaNorm turned on at a checkpoint of plain DiffGrad (as for any torch
    optimizer, the loaded groups carry the checkpoint's options, so they are set after loading):
    θ_{t−1} starts at θ (Δθ = 0 on the first step) and e at 0."""
    p = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    plain = DiffGrad([p], **HP)
    p.grad = torch.randn_like(p)
    plain.step()
    family = DiffGrad([p], **HP)
    family.load_state_dict(plain.state_dict())
    family.param_groups[0].update(adainject=True, adanorm=True)
    before = p.detach().clone()
    p.grad = torch.randn_like(p)
    family.step()
    state = family.state[p]
    assert torch.equal(state["previous_param"], before)
    assert state["step"].item() == 2.0 and state["exp_grad_norm"].item() > 0.0


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_adanorm_and_cautious_keep_a_zero_gradient_finite(impl: str) -> None:
    p = torch.randn(8, 3, requires_grad=True)
    opt = DiffGrad([p], adanorm=True, cautious=True, centralize=True, **IMPLEMENTATIONS[impl])
    for grad in (torch.randn(8, 3), torch.zeros(8, 3), torch.zeros(8, 3)):
        p.grad = grad
        opt.step()
    assert torch.isfinite(p).all() and torch.isfinite(opt.state[p]["exp_grad_norm"])


def test_compact_state_keeps_previous_param_in_the_compute_dtype() -> None:
    """With 8-bit moments, AdaInject's θ_{t−1} stays float32: Δθ is a difference of nearly
    equal values, which a compact format would erase."""
    p = torch.randn(64, 128, requires_grad=True)
    opt = DiffGrad([p], adainject=True, adanorm=True, state_dtype="8bit")
    for _ in range(3):
        p.grad = torch.randn_like(p)
        opt.step()
    state = opt.state[p]
    assert state["exp_avg"].dtype == torch.uint8 and state["previous_param"].dtype == torch.float32
    assert torch.isfinite(p).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rectify": 1}, "Invalid rectify"),
        ({"rectify_threshold": 3.0}, "Invalid rectify_threshold"),
        ({"rectify_warmup": "linear"}, "Invalid rectify_warmup"),
        ({"adanorm_gamma": 1.0}, "Invalid adanorm_gamma"),
        ({"adainject_k": 0.0}, "Invalid adainject_k"),
        ({"cautious": "yes"}, "Invalid cautious"),
        ({"centralize": None}, "Invalid centralize"),
    ],
)
def test_bad_modifier_arguments_name_the_argument(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DiffGrad([torch.zeros(2, requires_grad=True)], **kwargs)
