"""The optimizer tests' matrices, defined once (as torch's ``OptimizerInfo``): implementation
paths, devices, hyper-parameters and option sets. Test modules import these instead of
spelling their own."""

from __future__ import annotations

import torch

# Every implementation path, as DiffGrad keyword arguments. "default" (foreach=None) lets the
# dispatcher choose per tensor.
PATHS: dict[str, dict] = {
    "single_tensor": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
    "default": {},
}
# The paths a user selects explicitly (the default path is a mix of them).
EXPLICIT_PATHS = {name: PATHS[name] for name in ("single_tensor", "foreach", "fused")}
EAGER_PATHS = {name: PATHS[name] for name in ("single_tensor", "foreach")}

# Every device this machine has: the optimizer tests run on each.
DEVICES: list[str] = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

HP = {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}

# Each option alone and in the combinations that interact (decay with AMSGrad and maximize).
OPTION_SETS: dict[str, dict] = {
    "plain": {},
    "coupled_wd": {"weight_decay": 0.1},
    "decoupled_wd": {"weight_decay": 0.1, "decoupled_weight_decay": True},
    "amsgrad": {"amsgrad": True},
    "maximize": {"maximize": True},
    "all": {"weight_decay": 0.05, "amsgrad": True, "maximize": True},
    **{f: {"friction": f} for f in ("dfc1", "dfc2", "dfc3", "dfc4", "dfc5")},
    "dfc3_wd_amsgrad": {"friction": "dfc3", "weight_decay": 0.1, "amsgrad": True},
    "dfc-rms": {"friction": "dfc-rms"},
    "dfc-rms_slope3_wd_amsgrad_maximize": {
        "friction": "dfc-rms",
        "friction_slope": 3.0,
        "weight_decay": 0.1,
        "amsgrad": True,
        "maximize": True,
    },
    "dfc2_slope2": {"friction": "dfc2", "friction_slope": 2.0},
}

EVERY_MODIFIER = {"rectify": True, "adanorm": True, "adainject": True, "cautious": True, "centralize": True}
MODIFIER_SETS: dict[str, dict] = {
    "rectify": {"rectify": True},
    "rectify_skip_threshold6": {"rectify": True, "rectify_warmup": "skip", "rectify_threshold": 6.0},
    "adanorm": {"adanorm": True},
    "adanorm_gamma05_amsgrad": {"adanorm": True, "adanorm_gamma": 0.5, "amsgrad": True},
    "adainject": {"adainject": True},
    "adainject_k3_decoupled": {
        "adainject": True,
        "adainject_k": 3.0,
        "weight_decay": 0.1,
        "decoupled_weight_decay": True,
    },
    "cautious": {"cautious": True},
    "cautious_maximize_dfc2": {"cautious": True, "maximize": True, "friction": "dfc2"},
    "centralize": {"centralize": True},
    "centralize_coupled_wd": {"centralize": True, "weight_decay": 0.1},
    "all": {**EVERY_MODIFIER, "amsgrad": True, "weight_decay": 0.05, "maximize": True, "friction": "dfc3"},
    "all_decoupled": {**EVERY_MODIFIER, "weight_decay": 0.1, "decoupled_weight_decay": True},
    "all_dfc_rms": {**EVERY_MODIFIER, "amsgrad": True, "maximize": True, "friction": "dfc-rms", "friction_slope": 0.5},
}

STATE_DTYPES = [None, torch.bfloat16, "8bit"]

# State buffers that hold second moments (stored as sqrt(v) when 8-bit).
SQRT_DOMAIN_KEYS = ("exp_avg_sq", "max_exp_avg_sq")


def decoded_state(state: dict, key: str, param: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The buffer ``key`` of a parameter's ``state`` decoded to ``dtype``, flat in element order,
    whatever its format (plain, bfloat16, or 8-bit codes with ``key + "_absmax"``)."""
    from diffgrad.optim.state import get_buffer, load, real_numel

    values, _ = load(
        get_buffer(state, key), (0, real_numel(param)), dtype, copy=True, sqrt_domain=key in SQRT_DOMAIN_KEYS
    )
    return values
