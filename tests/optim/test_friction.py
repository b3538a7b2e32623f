"""The scale-free friction dfc-rms (docs/paper.md §10) and ``friction_slope``; the friction probe
``record_friction`` against the independent float64 reference, on every path."""

from __future__ import annotations

import warnings

import pytest
import torch

from diffgrad import FRICTIONS, DiffGrad, record_friction
from diffgrad.optim import DFC_RMS_SLOPE
from optim_info import HP, OPTION_SETS, PATHS
from reference import RefState, reference_kwargs, reference_step

SCALES = (1e-2, 1.0, 1e2)


def _trajectory(make_opt, scale: float) -> torch.Tensor:
    """θ after each of 40 steps on ``scale``·f, f a smooth non-quadratic function (float64)."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(3, 4, generator=g, dtype=torch.float64).requires_grad_()
    target = torch.randn(3, 4, generator=g, dtype=torch.float64)
    opt = make_opt([theta])
    steps = []
    for _ in range(40):
        opt.zero_grad()
        (scale * ((theta - target).pow(2).sum() + torch.sin(3 * theta).sum())).backward()
        opt.step()
        steps.append(theta.detach().clone())
    return torch.stack(steps)


def _spread(make_opt) -> float:
    """The largest difference between the trajectories under the loss scales, relative to θ's."""
    base = _trajectory(make_opt, 1.0)
    return max((_trajectory(make_opt, s) - base).abs().max().item() for s in SCALES) / base.abs().max().item()


@pytest.mark.parametrize("path", PATHS)
def test_dfc_rms_trajectory_does_not_depend_on_the_loss_scale(path: str) -> None:
    """With ε negligible, multiplying the loss by s ∈ {1e-2, 1, 1e2} leaves dfc-rms's trajectory
    unchanged up to round-off, as Adam's; the paper's DFC moves visibly (ξ → 0.5 or 1)."""
    hp = {"lr": 0.05, "betas": (0.9, 0.999), "eps": 1e-30}

    def diffgrad(friction: str):
        return lambda params: DiffGrad(params, **hp, friction=friction, **PATHS[path])

    assert _spread(lambda params: torch.optim.Adam(params, **hp)) < 1e-12
    assert _spread(diffgrad("dfc-rms")) < 1e-12
    assert _spread(diffgrad("dfc")) > 0.1


def test_dfc_rms_first_step_is_sigmoid_kappa() -> None:
    """g_0 = 0 and v̂_1 = g_1²: |Δg_1|/sqrt(v̂_1) = 1, so with β1 = 0 the first step is
    −α·sigmoid(κ)·sign(g_1), whatever the gradient's size."""
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    p.grad = torch.tensor([1e-6, -3.0, 2e3, -0.5], dtype=torch.float64)
    DiffGrad([p], lr=1.0, betas=(0.0, 0.999), eps=1e-30, friction="dfc-rms", friction_slope=2.0).step()
    expected = -torch.sigmoid(torch.tensor(2.0, dtype=torch.float64)) * p.grad.sign()
    torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=0)


def test_friction_slope_defaults_and_is_a_group_option() -> None:
    assert FRICTIONS["dfc-rms"].slope == DFC_RMS_SLOPE
    a, b = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    opt = DiffGrad([{"params": [a]}, {"params": [b], "friction_slope": 4.0}], friction="dfc-rms")
    assert [group["friction_slope"] for group in opt.param_groups] == [None, 4.0]
    assert opt.state_dict()["param_groups"][1]["friction_slope"] == 4.0


def test_checkpoint_without_friction_slope_loads() -> None:
    """A state dict saved before ``friction_slope`` existed loads; the missing option takes the
    loading optimizer's value, as every option a checkpoint lacks."""
    p = torch.randn(4, requires_grad=True)
    opt = DiffGrad([p])
    p.grad = torch.randn(4)
    opt.step()
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        del group["friction_slope"]
    resumed = DiffGrad([p], friction_slope=3.0)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["friction_slope"] == 3.0
    p.grad = torch.randn(4)
    resumed.step()


# ---------------------------------------------------------------------------------------------
# The probe


def _probe_params() -> list[torch.Tensor]:
    """A non-contiguous matrix, a 0-dim and a plain parameter (float64)."""
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(4, 3, generator=g, dtype=torch.float64).t().requires_grad_(),
        torch.randn((), generator=g, dtype=torch.float64).requires_grad_(),
        torch.randn(2, 5, generator=g, dtype=torch.float64).requires_grad_(),
    ]


PROBE_OPTIONS = {
    **{name: {"friction": name} for name in FRICTIONS},
    "dfc-rms_slope3_wd_amsgrad_maximize": OPTION_SETS["dfc-rms_slope3_wd_amsgrad_maximize"],
    "dfc3_centralize_decoupled": {"friction": "dfc3", "centralize": True, "weight_decay": 0.1,
                                  "decoupled_weight_decay": True},
}  # fmt: skip


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("option_set", PROBE_OPTIONS)
def test_probe_reads_the_reference_friction(path: str, option_set: str) -> None:
    """ξ_t of every step equals the float64 reference's, on every path; a parameter without a
    gradient is absent."""
    options = PROBE_OPTIONS[option_set]
    params = _probe_params()
    opt = DiffGrad(params, **HP, **options, **PATHS[path])
    reference = [(p.detach().flatten().tolist(), RefState()) for p in params]
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        skipped = params[2] if step == 3 else None
        for i, p in enumerate(params):
            if p is skipped:
                p.grad = None
                continue
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64) * (1 + step % 3)
            theta, st = reference[i]
            kwargs = reference_kwargs(options, HP, tuple(p.shape))
            reference[i] = (reference_step(theta, p.grad.flatten().tolist(), st, **kwargs), st)
        with record_friction(opt) as xi:
            opt.step()
        assert set(xi) == {p for p in params if p is not skipped}
        for p, (_, st) in zip(params, reference):
            if p is not skipped:
                assert xi[p].dtype == torch.float32 and xi[p].shape == p.shape
                expected = torch.tensor(st.xi, dtype=torch.float64).view(p.shape)
                torch.testing.assert_close(xi[p].double(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("path", ["single_tensor", "fused"])
@pytest.mark.parametrize("state_dtype", [torch.bfloat16, "8bit"], ids=str)
@pytest.mark.parametrize("friction", ["dfc", "dfc-rms"])
def test_probe_with_compact_state(path: str, state_dtype: object, friction: str) -> None:
    """With compact state the probe reads the stored g_t and v_t: the reference's ξ_t up to the
    format's precision."""
    g = torch.Generator().manual_seed(0)
    p = torch.randn(16, 256, generator=g).requires_grad_()  # large enough for 8-bit state
    opt = DiffGrad([p], **HP, friction=friction, state_dtype=state_dtype, **PATHS[path])
    st = RefState()
    theta = p.detach().flatten().tolist()
    for _ in range(3):
        p.grad = torch.randn(p.shape, generator=g)
        theta = reference_step(theta, p.grad.flatten().tolist(), st, **reference_kwargs({"friction": friction}, HP))
        with record_friction(opt) as xi:
            opt.step()
        error = (xi[p].double().flatten() - torch.tensor(st.xi, dtype=torch.float64)).abs()
        assert error.max().item() < (0.01 if state_dtype == torch.bfloat16 else 0.05)
    assert ("exp_avg_sq_absmax" in opt.state[p]) == (state_dtype == "8bit")


@pytest.mark.parametrize("path", PATHS)
def test_probe_under_grad_scaler(path: str) -> None:
    """A scaled step records the unscaled ξ; a step that GradScaler skips records nothing."""
    torch.manual_seed(0)
    w = torch.randn(8, 4, requires_grad=True)
    w_plain = w.detach().clone().requires_grad_()
    opt = DiffGrad([w], friction="dfc-rms", **PATHS[path])
    plain = DiffGrad([w_plain], friction="dfc-rms", **PATHS[path])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x = torch.randn(16, 8)
    for _ in range(2):
        opt.zero_grad()
        scaler.scale((x @ w).pow(2).mean()).backward()
        with record_friction(opt) as xi:
            scaler.step(opt)
        scaler.update()
        plain.zero_grad()
        (x @ w_plain).pow(2).mean().backward()
        with record_friction(plain) as expected:
            plain.step()
        assert torch.equal(xi[w], expected[w_plain])
    opt.zero_grad()
    scaler.scale((x @ w).pow(2).mean()).backward()
    w.grad[0, 0] = float("inf")
    with record_friction(opt) as xi:
        scaler.step(opt)
    assert xi == {}


def test_probe_refuses_other_optimizers_and_several_steps() -> None:
    p = torch.randn(3, requires_grad=True)
    with pytest.raises(TypeError, match="record_friction: expected a DiffGrad optimizer, got Adam"):
        record_friction(torch.optim.Adam([p])).__enter__()
    opt = DiffGrad([p])
    p.grad = torch.randn(3)
    with pytest.raises(RuntimeError, match="2 steps"), record_friction(opt):
        opt.step()
        opt.step()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("friction", ["dfc3", "dfc4", "dfc5"])
def test_an_empty_parameter_has_no_statistics_and_no_warning(path: str, friction: str) -> None:
    empty, trained = torch.nn.Parameter(torch.zeros(0, 3)), torch.nn.Parameter(torch.ones(3))
    opt = DiffGrad([empty, trained], **HP, friction=friction, **PATHS[path])
    for _ in range(2):
        empty.grad, trained.grad = torch.zeros(0, 3), torch.ones(3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            opt.step()
    assert empty.shape == (0, 3) and torch.isfinite(trained).all() and not torch.equal(trained, torch.ones(3))
