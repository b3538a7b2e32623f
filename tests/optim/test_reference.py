"""DiffGrad against the independent plain-Python reference (paper Eq. 11–20), every state key."""

from __future__ import annotations

import itertools

import pytest
import torch

from diffgrad import DiffGrad
from optim_info import DEVICES, HP, OPTION_SETS, PATHS
from reference import RefState, reference_kwargs, reference_step

IMPLEMENTATIONS = PATHS


def _make_params(seed: int, device: str = "cpu") -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Trained params: a 0-dim, a non-contiguous one, a plain one; plus a frozen one."""
    g = torch.Generator().manual_seed(seed)
    scalar = torch.randn((), generator=g, dtype=torch.float64).to(device)
    non_contiguous = torch.randn(4, 3, generator=g, dtype=torch.float64).to(device).t()
    plain = torch.randn(2, 3, 2, generator=g, dtype=torch.float64).to(device)
    frozen = torch.randn(3, generator=g, dtype=torch.float64).to(device)
    trained = [p.requires_grad_() for p in (scalar, non_contiguous, plain)]
    assert not trained[1].is_contiguous()
    return trained, [frozen]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("option_set", OPTION_SETS)
def test_matches_reference_on_every_state_key(device: str, impl: str, option_set: str) -> None:
    options = OPTION_SETS[option_set]
    trained, frozen = _make_params(0, device)
    opt = DiffGrad(trained + frozen, **HP, **options, **IMPLEMENTATIONS[impl])
    ref_theta = [p.detach().flatten().tolist() for p in trained]
    ref_states = [RefState() for _ in trained]
    frozen_before = frozen[0].clone()
    g = torch.Generator().manual_seed(1)
    for step in range(1, 151):
        for i, p in enumerate(trained):
            # The last param gets no gradient every third step: it and its state must not move.
            if i == 2 and step % 3 == 0:
                p.grad = None
                continue
            grad = (torch.randn(p.shape, generator=g, dtype=torch.float64) * (1 + step % 5)).to(device)
            # Written into the same .grad storage each step, the lifecycle that broke the published code.
            if p.grad is None:
                p.grad = grad.clone()
            else:
                p.grad.copy_(grad)
            ref_theta[i] = reference_step(
                ref_theta[i], grad.cpu().flatten().tolist(), ref_states[i], **reference_kwargs(options, HP)
            )
        opt.step()

    assert torch.equal(frozen[0], frozen_before) and frozen[0] not in opt.state
    for p, theta, st in zip(trained, ref_theta, ref_states):
        state = opt.state[p]
        expected = {
            "step": torch.tensor(float(st.step)),
            "exp_avg": st.m,
            "exp_avg_sq": st.v,
            "previous_grad": st.g_prev,
        }
        if options.get("amsgrad"):
            expected["max_exp_avg_sq"] = st.v_max
        assert set(state) == set(expected)
        torch.testing.assert_close(
            p.detach().cpu().flatten(), torch.tensor(theta, dtype=torch.float64), rtol=1e-12, atol=1e-14
        )
        for key, value in expected.items():
            actual = state[key].cpu() if key == "step" else state[key].cpu().flatten()
            torch.testing.assert_close(actual, torch.as_tensor(value, dtype=actual.dtype), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("option_set", ["plain", "all", "dfc4"])
def test_implementations_agree_with_each_other(option_set: str) -> None:
    """Every path agrees with the per-tensor one on params and every state key, with mixed dtypes."""
    runs = []
    for impl in IMPLEMENTATIONS.values():
        torch.manual_seed(0)
        params = [torch.randn(5, 4, dtype=dt, requires_grad=True) for dt in (torch.float32, torch.float64)]
        params.append(torch.randn(3, dtype=torch.float32, requires_grad=True))
        opt = DiffGrad(params, **HP, **OPTION_SETS[option_set], **impl)
        g = torch.Generator().manual_seed(2)
        for _ in range(50):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
            opt.step()
        runs.append((params, opt))
    (params_a, opt_a), *others = runs
    for params_b, opt_b in others:
        for pa, pb in zip(params_a, params_b):
            torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)
            for key in opt_a.state[pa]:
                torch.testing.assert_close(opt_a.state[pa][key], opt_b.state[pb][key], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_complex_params_step_as_real_pairs(impl: str) -> None:
    """A complex parameter moves exactly like its real view (as torch.optim.Adam treats complex)."""
    torch.manual_seed(0)
    z = torch.randn(3, 2, dtype=torch.complex128, requires_grad=True)
    r = torch.view_as_real(z.detach()).clone().requires_grad_()
    opt_z = DiffGrad([z], **HP, weight_decay=0.1, amsgrad=True, **IMPLEMENTATIONS[impl])
    opt_r = DiffGrad([r], **HP, weight_decay=0.1, amsgrad=True, **IMPLEMENTATIONS[impl])
    for _ in range(20):
        grad = torch.randn(3, 2, dtype=torch.complex128)
        z.grad, r.grad = grad, torch.view_as_real(grad).clone()
        opt_z.step()
        opt_r.step()
    torch.testing.assert_close(torch.view_as_real(z.detach()), r.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.view_as_real(opt_z.state[z]["previous_grad"]), opt_r.state[r]["previous_grad"])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("options", [{"weight_decay": 0.1}, {"maximize": True}])
def test_callers_grad_is_never_modified(impl: str, options: dict) -> None:
    p = torch.randn(4, 3, requires_grad=True)
    p.grad = torch.randn(4, 3)
    before = p.grad.clone()
    DiffGrad([p], **options, **IMPLEMENTATIONS[impl]).step()
    assert torch.equal(p.grad, before)


def test_tensor_lr_and_per_group_options_match_reference() -> None:
    a = torch.randn(6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    opt = DiffGrad(
        [{"params": [a]}, {"params": [b], "friction": "dfc2", "weight_decay": 0.2, "lr": 0.05}],
        lr=torch.tensor(0.02),  # float32: the reference must use the same rounded value
        betas=HP["betas"],
        eps=HP["eps"],
    )
    ref = {"a": (a.detach().tolist(), RefState()), "b": (b.detach().tolist(), RefState())}
    g = torch.Generator().manual_seed(3)
    for _ in range(30):
        for p in (a, b):
            p.grad = torch.randn(6, generator=g, dtype=torch.float64)
        opt.step()
        ref["a"] = (
            reference_step(
                ref["a"][0],
                a.grad.tolist(),
                ref["a"][1],
                **{**reference_kwargs({}, HP), "lr": float(torch.tensor(0.02))},
            ),
            ref["a"][1],
        )
        kw = {**reference_kwargs({"friction": "dfc2", "weight_decay": 0.2}, HP), "lr": 0.05}
        ref["b"] = (reference_step(ref["b"][0], b.grad.tolist(), ref["b"][1], **kw), ref["b"][1])
    torch.testing.assert_close(a.detach(), torch.tensor(ref["a"][0], dtype=torch.float64), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(b.detach(), torch.tensor(ref["b"][0], dtype=torch.float64), rtol=1e-12, atol=1e-14)


SCHEDULERS = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.5),
    "MultiStepLR": lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[10, 20], gamma=0.1),
    "ExponentialLR": lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.95),
    "CosineAnnealingLR": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=30),
    "CosineAnnealingWarmRestarts": lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=8),
    "LinearLR": lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=10),
    "ConstantLR": lambda o: torch.optim.lr_scheduler.ConstantLR(o, factor=0.5, total_iters=5),
    "LambdaLR": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1 / (1 + e)),
    "MultiplicativeLR": lambda o: torch.optim.lr_scheduler.MultiplicativeLR(o, lambda e: 0.97),
    "PolynomialLR": lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=30, power=2.0),
    "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=40),
    "CyclicLR": lambda o: torch.optim.lr_scheduler.CyclicLR(o, base_lr=0.001, max_lr=0.05, step_size_up=5),
    "SequentialLR": lambda o: torch.optim.lr_scheduler.SequentialLR(
        o,
        [torch.optim.lr_scheduler.LinearLR(o, 0.1, total_iters=5), torch.optim.lr_scheduler.ExponentialLR(o, 0.9)],
        milestones=[5],
    ),
    "ReduceLROnPlateau": lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=1),
}


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("lr_type", ["float", "tensor"])
def test_every_lr_scheduler_drives_the_step_size(impl: str, name: str, lr_type: str) -> None:
    """Each step uses the lr the scheduler set (checked against the reference), and betas survive."""
    p = torch.randn(5, dtype=torch.float64, requires_grad=True)
    lr = 0.01 if lr_type == "float" else torch.tensor(0.01)
    opt = DiffGrad([p], lr=lr, betas=HP["betas"], eps=HP["eps"], **IMPLEMENTATIONS[impl])
    sched = SCHEDULERS[name](opt)
    theta, st = p.detach().tolist(), RefState()
    g = torch.Generator().manual_seed(4)
    lrs = set()
    for epoch in range(30):
        p.grad = torch.randn(5, generator=g, dtype=torch.float64)
        group = opt.param_groups[0]
        kw = {
            **reference_kwargs({}, HP),
            "lr": float(group["lr"]),
            "beta1": group["betas"][0],
            "beta2": group["betas"][1],
        }
        lrs.add(round(float(group["lr"]), 12))
        theta = reference_step(theta, p.grad.tolist(), st, **kw)
        opt.step()
        sched.step(float(epoch % 3)) if name == "ReduceLROnPlateau" else sched.step()
    assert len(lrs) > 1, "the scheduler never changed lr"
    torch.testing.assert_close(p.detach(), torch.tensor(theta, dtype=torch.float64), rtol=1e-12, atol=1e-14)


def test_friction_stats_reading_for_dfc3() -> None:
    """DFC3 uses μ, ν = mean and population std of |g_t| over the whole tensor (documented reading)."""
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    grad = torch.tensor([1.0, -2.0, 3.0, -4.0], dtype=torch.float64)
    p.grad = grad
    opt = DiffGrad([p], lr=1.0, betas=(0.0, 0.0), eps=0.0, friction="dfc3")
    opt.step()
    a = grad.abs()
    mu, nu = a.mean(), a.std(unbiased=False)
    xi = torch.sigmoid(nu * a - mu)  # g_0 = 0, so |Δg| = |g_1|
    # With β1 = β2 = 0 the Adam direction is sign(g): the step is −ξ·sign(g).
    torch.testing.assert_close(p.detach(), -xi * grad.sign())


def test_first_step_friction_uses_g0_zero() -> None:
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    p.grad = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    DiffGrad([p], lr=1.0, betas=(0.0, 0.0), eps=0.0).step()
    torch.testing.assert_close(p.detach(), -torch.sigmoid(p.grad.abs()) * p.grad.sign())


def test_options_grid_is_exhaustive_over_booleans() -> None:
    """Every combination of the boolean options steps and stays finite, on both paths."""
    for amsgrad, maximize, decoupled, foreach in itertools.product([False, True], repeat=4):
        p = torch.randn(7, requires_grad=True)
        opt = DiffGrad(
            [p],
            weight_decay=0.01,
            decoupled_weight_decay=decoupled,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
        )
        for _ in range(3):
            p.grad = torch.randn(7)
            opt.step()
        assert torch.isfinite(p).all()
