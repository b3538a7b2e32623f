"""The optimizer registry: every name builds and steps; the controls are what they claim to be."""

from __future__ import annotations

import copy
import dataclasses
import io
import re

import pytest
import torch

from diffgrad.lab import registry
from diffgrad.lab.registry import OPTIMIZERS, PublishedDiffGrad, create_optimizer, list_optimizers
from diffgrad.optim import DiffGrad

PEERS = {"adabelief", "adan", "adamp", "lion", "radam"}
SCALE_FREE = {"diffgrad-rms", "diffgrad-rms-slope"}  # docs/paper.md §10
PAPER_NAMES = {
    "diffgrad",
    *(f"diffgrad-dfc{k}" for k in range(1, 6)),
    "diffgrad-amsgrad",
    "diffgradw",
    "diffgrad-published",
    "sgdm",
    "adagrad",
    "adadelta",
    "rmsprop",
    "amsgrad",
    "adam",
    "adamw",
    "adam-half-lr",
}
# The diffGrad family (docs/paper.md §8): each name switches on one DiffGrad option.
FAMILY = {
    "diffgrad-rect": "rectify",
    "diffgrad-norm": "adanorm",
    "diffgrad-inject": "adainject",
    "diffgrad-cautious": "cautious",
    "diffgrad-gc": "centralize",
}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 5, generator=g), torch.randn(8, 1, generator=g)) for _ in range(n)]


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches) -> list[torch.Tensor]:
    """Parameters (flattened) after each step."""
    trajectory = []
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        trajectory.append(torch.cat([p.detach().flatten().clone() for p in model.parameters()]))
    return trajectory


def test_the_registry_has_every_name_of_the_brief():
    assert PAPER_NAMES | set(FAMILY) | PEERS | SCALE_FREE == set(OPTIMIZERS)
    assert {spec.name for spec in list_optimizers()} >= PAPER_NAMES | set(FAMILY)


def test_the_scale_free_friction_is_registered_with_its_slope_searched():
    for name in SCALE_FREE:
        optimizer = create_optimizer(name, [torch.zeros(1, requires_grad=True)])
        assert isinstance(optimizer, DiffGrad) and optimizer.param_groups[0]["friction"] == "dfc-rms"
    assert set(OPTIMIZERS["diffgrad-rms"].search_space) == {"lr"}
    assert set(OPTIMIZERS["diffgrad-rms-slope"].search_space) == {"lr", "friction_slope"}
    tuned = create_optimizer("diffgrad-rms-slope", [torch.zeros(1, requires_grad=True)], friction_slope=3.0)
    assert tuned.param_groups[0]["friction_slope"] == 3.0


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_builds_steps_and_declares_a_search_space(name):
    spec = OPTIMIZERS[name]
    if not spec.available:
        pytest.skip(f"{spec.requires} not installed")
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    # 8 steps: rectified methods (radam) skip their first few updates
    trajectory = _train(model, create_optimizer(name, model.parameters()), _batches(8))
    assert all(torch.isfinite(t).all() for t in trajectory)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert spec.description and "lr" in spec.search_space
    lr = spec.search_space["lr"]
    assert 0 < lr.low < lr.high and lr.to_attr()["log"] is True
    assert set(spec.defaults) <= set(spec.hparam_names())


def test_peers_are_listed_only_when_their_package_is_installed(monkeypatch):
    assert registry.unavailable_note() is None  # pytorch_optimizer is installed in the dev venv
    assert {s.name for s in list_optimizers()} >= PEERS
    missing = dataclasses.replace(OPTIMIZERS["lion"], requires="no_such_package_for_diffgrad")
    monkeypatch.setitem(OPTIMIZERS, "lion", missing)
    assert "lion" not in {s.name for s in list_optimizers()}
    assert "lion" in {s.name for s in list_optimizers(include_unavailable=True)}
    assert "lion need no_such_package_for_diffgrad: pip install 'diffgrad[lab]'" in registry.unavailable_note()
    with pytest.raises(ValueError, match=r"needs the no_such_package_for_diffgrad package: pip install"):
        create_optimizer("lion", _model().parameters())


def test_unknown_names_and_hyper_parameters_raise_listing_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamm'; valid names: diffgrad, .*adam, "):
        create_optimizer("adamm", _model().parameters())
    with pytest.raises(ValueError, match=r"'lion' has no hyper-parameter 'momentum'; valid: lr, betas"):
        create_optimizer("lion", _model().parameters(), momentum=0.9)


def test_defaults_make_the_names_mean_what_they_say():
    params = list(_model().parameters())
    assert create_optimizer("sgdm", params).defaults["momentum"] == 0.9
    assert create_optimizer("amsgrad", params).defaults["amsgrad"] is True
    assert create_optimizer("diffgrad-dfc3", params).defaults["friction"] == "dfc3"
    diffgradw = create_optimizer("diffgradw", params).defaults
    assert diffgradw["decoupled_weight_decay"] is True and diffgradw["weight_decay"] > 0
    assert create_optimizer("adadelta", params).defaults["lr"] == 1.0  # torch's default; the paper protocol sets 1e-3
    assert create_optimizer("adam", params, lr=0.5, betas=(0.8, 0.9)).defaults["betas"] == (0.8, 0.9)


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_each_family_member_is_diffgrad_with_its_one_modifier_on(name):
    spec = OPTIMIZERS[name]
    assert spec.optimizer_class() is DiffGrad and spec.search_space == OPTIMIZERS["diffgrad"].search_space
    assert re.search(r"\b20\d\d\)$", spec.description)  # cites its source: "(Authors, venue year)"
    model = _model()
    optimizer = create_optimizer(name, model.parameters(), lr=1e-2)
    for option in FAMILY.values():
        assert optimizer.param_groups[0][option] is (option == FAMILY[name]), option
    before = [p.detach().clone() for p in model.parameters()]
    (after,) = _train(model, optimizer, _batches(1))
    assert torch.isfinite(after).all() and not torch.equal(after, torch.cat([p.flatten() for p in before]))


def test_adam_half_lr_is_adam_at_half_the_learning_rate():
    batches = _batches(6)
    model_a, model_b = _model(), _model()
    half = _train(model_a, create_optimizer("adam-half-lr", model_a.parameters(), lr=1e-2), batches)
    adam = _train(model_b, torch.optim.Adam(model_b.parameters(), lr=5e-3), batches)
    for a, b in zip(half, adam):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_published_diffgrad_step_one_uses_sigmoid_of_the_first_gradient():
    lr, eps = 1e-2, 1e-8
    model = _model()
    theta0 = [p.detach().clone() for p in model.parameters()]
    optimizer = create_optimizer("diffgrad-published", model.parameters(), lr=lr)
    x, y = _batches(1)[0]
    torch.nn.functional.mse_loss(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    optimizer.step()
    for p, p0, g in zip(model.parameters(), theta0, grads):
        # m̂_1 = g_1, v̂_1 = g_1², ξ_1 = sigmoid(|g_1 − 0|)
        expected = p0 - lr * torch.sigmoid(g.abs()) * g / (g.abs() + eps)
        torch.testing.assert_close(p.detach(), expected)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_published_diffgrad_is_adam_at_half_lr_after_the_first_step(set_to_none):
    lr, batches = 1e-2, _batches(8)
    model = _model()
    published = PublishedDiffGrad(model.parameters(), lr=lr)
    _train(model, published, batches[:1])
    # Adam at lr/2 started from the same parameters and moments as diffgrad-published after step 1.
    twin = copy.deepcopy(model)
    adam = torch.optim.Adam(twin.parameters(), lr=lr / 2)
    for p, q in zip(model.parameters(), twin.parameters()):
        state = published.state[p]
        adam.state[q] = {
            "step": state["step"].clone(),
            "exp_avg": state["exp_avg"].clone(),
            "exp_avg_sq": state["exp_avg_sq"].clone(),
        }
    for x, y in batches[1:]:
        for m, opt in ((model, published), (twin, adam)):
            opt.zero_grad(set_to_none=set_to_none)
            torch.nn.functional.mse_loss(m(x), y).backward()
            opt.step()
        for p, q in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert published.param_groups[0]["friction"] == "dfc"  # the switch never leaks into the groups


def test_published_diffgrad_differs_from_diffgrad_and_survives_state_dict_round_trip():
    batches = _batches(6)
    model = _model()
    published = PublishedDiffGrad(model.parameters(), lr=1e-2)
    _train(model, published, batches[:3])
    buffer = io.BytesIO()
    torch.save(published.state_dict(), buffer)  # only tensors and plain values: loads with weights_only
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    twin = copy.deepcopy(model)
    restored = PublishedDiffGrad(twin.parameters(), lr=1e-2)
    restored.load_state_dict(saved)
    original = _train(model, published, batches[3:])
    continued = _train(twin, restored, batches[3:])
    for a, b in zip(original, continued):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    plain = _model()
    reference = _model()
    diffgrad_path = _train(plain, create_optimizer("diffgrad", plain.parameters(), lr=1e-2), batches)
    published_path = _train(reference, PublishedDiffGrad(reference.parameters(), lr=1e-2), batches)
    assert not torch.allclose(diffgrad_path[-1], published_path[-1])
