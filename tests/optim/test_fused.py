"""The fused step (``fused=True``) through the optimizer class: state of skipped parameters,
no full-size temporaries in any state format, argument errors. Its arithmetic against the
reference is checked with every other path (test_reference.py, test_modifiers.py,
test_compact_state.py, test_amp.py) and kernel by kernel in test_fused_kernel.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from diffgrad import DiffGrad
from optim_info import HP, STATE_DTYPES

OPTIONS = {"weight_decay": 0.05, "amsgrad": True, "maximize": True}


def _params(dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """A 0-dim, a non-contiguous and a plain parameter."""
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn((), generator=g, dtype=dtype).requires_grad_(),
        torch.randn(4, 3, generator=g, dtype=dtype).t().requires_grad_(),
        torch.randn(2, 3, 2, generator=g, dtype=dtype).requires_grad_(),
    ]


def test_params_without_grad_keep_their_state() -> None:
    params = _params()
    opt = DiffGrad(params, **HP, **OPTIONS, fused=True)
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


@pytest.mark.parametrize("state_dtype", STATE_DTYPES, ids=str)
def test_fused_step_allocates_no_full_size_temporary(state_dtype) -> None:
    """Peak memory allocated during a step (profiler allocator events) stays under 5 % of the
    parameters' bytes in every state format: the kernel updates θ and the state in place and
    decodes compact state a block at a time."""
    p = torch.randn(1 << 20, requires_grad=True)
    p.grad = torch.randn_like(p)
    opt = DiffGrad([p], fused=True, state_dtype=state_dtype, **OPTIONS)
    opt.step()  # state, and the kernel's build or load
    peak = _benchmark().peak_extra_bytes(opt.step, p.device)
    assert peak <= 0.05 * p.numel() * p.element_size()


def test_fused_argument_errors() -> None:
    with pytest.raises(ValueError, match="fused"):
        DiffGrad(_params(), fused=True, foreach=True)
    with pytest.raises(ValueError, match="Invalid fused: 'yes'"):
        DiffGrad(_params(), fused="yes")
