"""The compiled single-pass step (``fused=True``): the reference, no recompiles, no temporaries.

Compiling dominates these tests' time, so they share parameter shapes and option sets: a graph
compiled by one test serves the next from Dynamo's cache.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch._dynamo.utils import counters

from diffgrad import DiffGrad
from reference import RefState, reference_kwargs, reference_step

HP = {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}

# Together these cover coupled and decoupled decay, AMSGrad, maximize, a scaled/shifted friction
# (DFC2) and one from gradient statistics (DFC4); the friction kernels are shared with the eager
# paths, which test_reference.py checks variant by variant.
OPTION_SETS = {
    "coupled_amsgrad_maximize": {"weight_decay": 0.05, "amsgrad": True, "maximize": True},
    "decoupled_dfc2": {"weight_decay": 0.1, "decoupled_weight_decay": True, "friction": "dfc2"},
    "dfc4": {"friction": "dfc4"},
}


def _params(dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """A 0-dim, a non-contiguous and a plain parameter."""
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn((), generator=g, dtype=dtype).requires_grad_(),
        torch.randn(4, 3, generator=g, dtype=dtype).t().requires_grad_(),
        torch.randn(2, 3, 2, generator=g, dtype=dtype).requires_grad_(),
    ]


def _compiles() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("option_set", OPTION_SETS)
def test_fused_matches_reference_on_every_state_key(option_set: str) -> None:
    """float64 through Inductor: equal to the plain-Python reference up to float64 round-off."""
    options = OPTION_SETS[option_set]
    params = _params()
    opt = DiffGrad(params, **HP, **options, fused=True)
    ref = [(p.detach().flatten().tolist(), RefState()) for p in params]
    g = torch.Generator().manual_seed(1)
    for step in range(1, 31):
        for i, p in enumerate(params):
            grad = torch.randn(p.shape, generator=g, dtype=torch.float64) * (1 + step % 5)
            p.grad = grad
            theta, st = ref[i]
            ref[i] = (reference_step(theta, grad.flatten().tolist(), st, **reference_kwargs(options, HP)), st)
        opt.step()
    for p, (theta, st) in zip(params, ref):
        state = opt.state[p]
        expected = {"step": float(st.step), "exp_avg": st.m, "exp_avg_sq": st.v, "previous_grad": st.g_prev}
        if options.get("amsgrad"):
            expected["max_exp_avg_sq"] = st.v_max
        assert set(state) == set(expected)
        assert state["step"].device == p.device
        torch.testing.assert_close(p.detach().flatten(), torch.tensor(theta, dtype=torch.float64), rtol=1e-12, atol=1e-14)
        for key, value in expected.items():
            actual = state[key].flatten()
            torch.testing.assert_close(actual, torch.tensor(value, dtype=actual.dtype).flatten(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
        # cycle_momentum: OneCycleLR also rewrites betas every step.
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=10),
    ],
    ids=["StepLR", "OneCycleLR"],
)
def test_schedulers_and_step_count_do_not_recompile(make_scheduler) -> None:
    options = OPTION_SETS["coupled_amsgrad_maximize"]
    params = _params()
    opt = DiffGrad(params, **HP, **options, fused=True)
    sched = make_scheduler(opt)
    ref = [(p.detach().flatten().tolist(), RefState()) for p in params]
    g = torch.Generator().manual_seed(2)
    before = _compiles()
    for _ in range(6):
        group = opt.param_groups[0]
        kw = {**reference_kwargs(options, HP), "lr": float(group["lr"]), "beta1": group["betas"][0], "beta2": group["betas"][1]}
        for i, p in enumerate(params):
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
            theta, st = ref[i]
            ref[i] = (reference_step(theta, p.grad.flatten().tolist(), st, **kw), st)
        opt.step()
        sched.step()
    # At most the first step compiles (none if an earlier test compiled the same graph).
    assert _compiles() - before <= 1
    for p, (theta, _) in zip(params, ref):
        torch.testing.assert_close(p.detach().flatten(), torch.tensor(theta, dtype=torch.float64), rtol=1e-12, atol=1e-14)


def test_params_without_grad_keep_their_state() -> None:
    params = _params()
    opt = DiffGrad(params, **HP, **OPTION_SETS["coupled_amsgrad_maximize"], fused=True)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    frozen = params[1]
    snapshot = {k: v.clone() for k, v in opt.state[frozen].items()}
    value = frozen.detach().clone()
    frozen.grad = None
    for p in params[::2]:
        p.grad = torch.randn_like(p)
    opt.step()
    assert torch.equal(frozen, value)
    for key, before in snapshot.items():
        assert torch.equal(opt.state[frozen][key], before)
    assert opt.state[params[0]]["step"].item() == 2.0


def _benchmark() -> ModuleType:
    """benchmarks/step.py, whose peak-memory measurement the test shares."""
    path = Path(__file__).parents[2] / "benchmarks" / "step.py"
    spec = importlib.util.spec_from_file_location("benchmark_step", path)
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("state_dtype", "limit"), [(None, 0.05), ("8bit", 1.05)], ids=["float32", "8bit"])
def test_fused_step_allocates_no_full_size_temporary(state_dtype: str | None, limit: float) -> None:
    """Peak memory allocated during a step (profiler allocator events), as a fraction of the
    parameters' bytes: under 5 % with float32 state (Inductor writes p, m, v and g_{t−1} in
    place from one loop); with 8-bit state, where the loop is split at the block-wise absmax
    reductions, one float32 buffer between the pieces."""
    p = torch.randn(1 << 20, requires_grad=True)
    p.grad = torch.randn_like(p)
    opt = DiffGrad([p], fused=True, state_dtype=state_dtype)
    opt.step()  # state, compilation
    peak = _benchmark().peak_extra_bytes(opt.step, p.device)
    assert peak <= limit * p.numel() * p.element_size()


def test_fused_argument_errors() -> None:
    with pytest.raises(ValueError, match="fused"):
        DiffGrad(_params(), fused=True, foreach=True)
    with pytest.raises(ValueError, match="Invalid fused: 'yes'"):
        DiffGrad(_params(), fused="yes")
    z = torch.randn(3, dtype=torch.complex64, requires_grad=True)
    z.grad = torch.randn_like(z)
    with pytest.raises(RuntimeError, match="floating-point"):
        DiffGrad([z], fused=True).step()
