"""Golden values from the paper's 1-D functions (Sec. V, Eq. 24–26, docs/paper.md §5).

The package's run (DiffGrad on the lab's autograd functions) is checked against the independent
plain-Python reference with hand-written derivatives, and against the paper's findings.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffgrad import DiffGrad
from diffgrad.lab.workloads.analytic import FUNCTIONS, trajectory
from reference import RefState, adam_step, reference_step

SETTINGS = {"lr": 0.1, "beta1": 0.95, "beta2": 0.999, "eps": 1e-8}  # the paper's, for both optimizers


def d_f1(x: float) -> float:
    return 2 * (x + 0.3) if x <= 0 else 2 * (x - 0.2)


def d_f2(x: float) -> float:
    # The published notebook used x·cos(8x) here; the derivative of x·sin(8x) has 8x·cos(8x).
    return -40.0 if x <= -0.9 else 3 * x * x + math.sin(8 * x) + 8 * x * math.cos(8 * x)


def d_f3(x: float) -> float:
    if x <= -0.5 or x > 0.5:
        return 2 * x
    if x <= -0.4:
        return 1.0
    if x <= 0:
        return -7 / 8
    return 7 / 8 if x <= 0.4 else -1.0


DERIVATIVES = {"F1": d_f1, "F2": d_f2, "F3": d_f3}


def _reference_final(name: str, step_fn) -> float:
    x, st = [-1.0], RefState()
    for _ in range(300):
        x = step_fn(x, [DERIVATIVES[name](x[0])], st)
    return x[0]


def _package_final(name: str, make) -> float:
    return float(trajectory(FUNCTIONS[name], make, 300).xs[-1, 0])


@pytest.mark.parametrize("name", ["F1", "F2", "F3"])
def test_package_matches_independent_reference(name: str) -> None:
    kw = dict(lr=SETTINGS["lr"], betas=(SETTINGS["beta1"], SETTINGS["beta2"]), eps=SETTINGS["eps"])
    ours = _package_final(name, lambda ps: DiffGrad(ps, **kw))
    ref = _reference_final(name, lambda x, g, st: reference_step(x, g, st, **SETTINGS))
    assert ours == pytest.approx(ref, abs=1e-9)
    adam = _package_final(name, lambda ps: torch.optim.Adam(ps, **kw))
    adam_ref = _reference_final(name, lambda x, g, st: adam_step(x, g, st, **SETTINGS))
    assert adam == pytest.approx(adam_ref, abs=1e-9)


def test_paper_finding_on_f1_and_f2() -> None:
    """diffGrad ends at the global minimum, Adam overshoots into the local one (paper Fig. 4)."""
    final = {
        (name, opt): _reference_final(name, lambda x, g, st, f=f: f(x, g, st, **SETTINGS))
        for name in ("F1", "F2")
        for opt, f in (("diffgrad", reference_step), ("adam", adam_step))
    }
    assert final[("F1", "diffgrad")] == pytest.approx(-0.3, abs=1e-3)
    assert final[("F1", "adam")] == pytest.approx(0.2, abs=1e-3)
    assert final[("F2", "diffgrad")] == pytest.approx(-0.6429, abs=2e-3)  # global minimum of F2
    assert final[("F2", "adam")] == pytest.approx(0.0, abs=2e-3)  # the local minimum at 0


def test_both_reach_f3_minimum() -> None:
    for step_fn in (reference_step, adam_step):
        assert abs(_reference_final("F3", lambda x, g, st: step_fn(x, g, st, **SETTINGS))) < 0.02  # noqa: B023 (called at once)
