"""Every accepted option survives the ways users keep an optimizer: ``torch.save`` of its state
dict loaded in a fresh process (``torch.load``'s default ``weights_only=True``), ``copy.deepcopy``
and ``pickle``; a resumed optimizer's state dict equals the original's and it steps identically."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from diffgrad import FRICTIONS, DiffGrad, Friction
from optim_info import EXPLICIT_PATHS, HP, MODIFIER_SETS, STATE_DTYPES

FRICTION_OPTIONS = {
    **{name: name for name in FRICTIONS},
    **{f"{name}_object": friction for name, friction in FRICTIONS.items()},
    "custom_object": Friction("custom", slope=2.0, scale=0.5, shift=0.25, range="[0.5, 0.75)"),
}
# Every option, each modifier set, every state format and a tensor lr.
OPTION_SETS = {
    **{f"friction_{name}": {"friction": friction} for name, friction in FRICTION_OPTIONS.items()},
    **{f"modifiers_{name}": options for name, options in MODIFIER_SETS.items()},
    **{f"state_{dtype}": {"state_dtype": dtype, "amsgrad": True} for dtype in STATE_DTYPES},
    "tensor_lr_decoupled": {"lr": torch.tensor(0.01), "weight_decay": 0.1, "decoupled_weight_decay": True},
    **{f"path_{name}": path for name, path in EXPLICIT_PATHS.items()},
}


def _trained(options: dict) -> tuple[list[torch.Tensor], DiffGrad]:
    g = torch.Generator().manual_seed(0)
    # Large enough for 8-bit state (4096 elements, whole 256-element blocks), plus a small one.
    params = [torch.randn(16, 256, generator=g).requires_grad_(), torch.randn(3, generator=g).requires_grad_()]
    opt = DiffGrad(params, **{**HP, **options})
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return params, opt


def _assert_same_state_dict(actual: dict, expected: dict) -> None:
    assert actual["param_groups"] == expected["param_groups"]
    assert actual["state"].keys() == expected["state"].keys()
    for key, state in expected["state"].items():
        assert actual["state"][key].keys() == state.keys()
        for name, value in state.items():
            assert torch.equal(actual["state"][key][name], value), (key, name)


def _assert_steps_alike(
    params_a: list[torch.Tensor], opt_a: DiffGrad, params_b: list[torch.Tensor], opt_b: DiffGrad
) -> None:
    """One more step of both, from the same gradients, gives the same parameters."""
    g = torch.Generator().manual_seed(9)
    for p, q in zip(params_a, params_b):
        p.grad = torch.randn(p.shape, generator=g)
        q.grad = p.grad.clone()
    opt_a.step()
    opt_b.step()
    for p, q in zip(params_a, params_b):
        assert torch.equal(p, q)


@pytest.mark.parametrize("option_set", OPTION_SETS)
def test_deepcopy_and_pickle(option_set: str) -> None:
    params, opt = _trained(OPTION_SETS[option_set])
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        _assert_same_state_dict(clone.state_dict(), opt.state_dict())
    clone = copy.deepcopy({"params": params, "opt": opt})  # params and optimizer copied together
    _assert_steps_alike(params, opt, clone["params"], clone["opt"])


@pytest.mark.parametrize("option_set", OPTION_SETS)
def test_load_state_dict_gives_back_the_same_state_dict(option_set: str) -> None:
    options = OPTION_SETS[option_set]
    params, opt = _trained(options)
    saved = opt.state_dict()
    clones = [p.detach().clone().requires_grad_() for p in params]
    resumed = DiffGrad(clones, **{**HP, **options})
    resumed.load_state_dict(copy.deepcopy(saved))
    _assert_same_state_dict(resumed.state_dict(), saved)
    _assert_steps_alike(params, opt, clones, resumed)


def test_torch_save_loads_in_a_fresh_process(tmp_path: Path) -> None:
    """Every option set's state dict, saved here, loads with ``torch.load``'s defaults in a new
    interpreter (which has imported diffgrad, as any process that builds a DiffGrad has) and
    equals the original there."""
    saved = {}
    for name, options in OPTION_SETS.items():
        params, opt = _trained(options)
        saved[name] = {"params": [p.detach() for p in params], "optim": opt.state_dict()}
    torch.save(saved, tmp_path / "all.pt")
    torch.save({name: dict(options) for name, options in OPTION_SETS.items()}, tmp_path / "options.pt")
    script = textwrap.dedent(
        f"""
        import copy, sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from diffgrad import DiffGrad
        from test_round_trip import _assert_same_state_dict
        from optim_info import HP
        saved = torch.load({str(tmp_path / "all.pt")!r})
        options = torch.load({str(tmp_path / "options.pt")!r})
        for name, entry in saved.items():
            params = [p.clone().requires_grad_() for p in entry["params"]]
            opt = DiffGrad(params, **{{**HP, **options[name]}})
            opt.load_state_dict(copy.deepcopy(entry["optim"]))
            _assert_same_state_dict(opt.state_dict(), entry["optim"])
        print("loaded", len(saved))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"loaded {len(OPTION_SETS)}" in result.stdout
