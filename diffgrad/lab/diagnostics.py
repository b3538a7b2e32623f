"""Friction diagnostics: the distribution of ξ_t that diffGrad's steps apply, per parameter tensor
and per layer kind, summarised for the results database and drawn by the report.

The training loop reads ξ with :func:`diffgrad.optim.record_friction` around the optimizer steps it
evaluates after, and stores :func:`friction_summary` of it in the run's record. ξ within 0.01 of
0.5 is counted separately: there diffGrad takes half of Adam's step (Eq. 20 with ξ = ½), which is
what it does whenever |g_{t−1} − g_t| is small next to 1.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "NEAR_HALF",
    "QUANTILES",
    "friction_curves",
    "friction_summary",
    "layer_kinds",
    "run_average",
]

QUANTILES = {"q05": 0.05, "q50": 0.5, "q95": 0.95}
NEAR_HALF = 0.01  # |ξ − 0.5| at most this counts as "at one half"
# torch.quantile takes at most 2^24 elements; larger sets are thinned to an even stride first.
_QUANTILE_NUMEL = 1 << 20
ALL = "all"

_KINDS: tuple[tuple[type[nn.Module] | tuple[type[nn.Module], ...], str], ...] = (
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), "conv"),
    (nn.Linear, "linear"),
    (nn.Embedding, "embedding"),
    ((nn.RNNBase,), "recurrent"),
    ((nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm), "norm"),
)


def layer_kinds(model: nn.Module) -> dict[str, str]:
    """The kind of each named parameter: ``bias`` for biases, else the kind of the layer that owns it
    (``conv``, ``linear``, ``embedding``, ``recurrent``, ``norm`` or ``other``)."""
    kinds = {}
    for module_name, module in model.named_modules():
        kind = next((k for types, k in _KINDS if isinstance(module, types)), "other")
        for name, _ in module.named_parameters(recurse=False):
            kinds[f"{module_name}.{name}" if module_name else name] = "bias" if name.startswith("bias") else kind
    return kinds


def _stats(values: Tensor) -> dict[str, float]:
    values = values.detach().reshape(-1).float()
    thinned = values[:: -(-values.numel() // _QUANTILE_NUMEL)] if values.numel() > _QUANTILE_NUMEL else values
    quantiles = torch.quantile(thinned, torch.tensor(list(QUANTILES.values())))
    return {
        "numel": values.numel(),
        "mean": values.mean().item(),
        **{key: q.item() for key, q in zip(QUANTILES, quantiles)},
        "near_half": (values - 0.5).abs().le(NEAR_HALF).float().mean().item(),
    }


def friction_summary(model: nn.Module, xi: Mapping[Tensor, Tensor]) -> dict[str, Any]:
    """ξ of one step, summarised: per named parameter tensor (its kind, size, mean, 5/50/95 %
    quantiles and the share within :data:`NEAR_HALF` of 0.5), and the same over all tensors of each
    kind and over all of them (``"all"``)."""
    kinds = layer_kinds(model)
    tensors: dict[str, Any] = {}
    by_kind: dict[str, list[Tensor]] = defaultdict(list)
    for name, param in model.named_parameters():
        if param in xi:
            values = xi[param].reshape(-1)
            tensors[name] = {"kind": kinds[name], **_stats(values)}
            by_kind[kinds[name]].append(values)
            by_kind[ALL].append(values)
    return {"tensors": tensors, "groups": {kind: _stats(torch.cat(parts)) for kind, parts in by_kind.items()}}


def friction_curves(runs: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, list[float]]]:
    """ξ over training for each group, averaged over runs (e.g. seeds) at the steps they share:
    ``{group: {"steps", "mean", "q05", "q50", "q95", "near_half"}}``. ``runs`` holds each run's
    recorded friction (a list of ``{"step", "tensors", "groups"}``)."""
    by_group: dict[str, dict[int, list[Mapping[str, float]]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for entry in run:
            for group, stats in entry["groups"].items():
                by_group[group][entry["step"]].append(stats)
    curves = {}
    keys = ("mean", *QUANTILES, "near_half")
    for group, by_step in by_group.items():
        steps = sorted(s for s, stats in by_step.items() if len(stats) == len(runs))
        curves[group] = {
            "steps": [float(s) for s in steps],
            **{k: [sum(st[k] for st in by_step[s]) / len(by_step[s]) for s in steps] for k in keys},
        }
    return dict(sorted(curves.items(), key=lambda item: (item[0] != ALL, item[0])))


def run_average(run: Sequence[Mapping[str, Any]], key: str) -> float | None:
    """One statistic of ξ over all tensors (``"mean"``, ``"near_half"``, a quantile key), averaged
    over a run's evaluations; None when the run recorded no ξ."""
    values = [entry["groups"][ALL][key] for entry in run if ALL in entry["groups"]]
    return sum(values) / len(values) if values else None
