"""``DiffGrad`` in timm's optimizer factory: ``create_optimizer_v2(model, opt="diffgrad")``.

timm (1.0.12 and later) looks optimizers up by name in a registry. :func:`register_timm` adds
``DiffGrad`` to it; timm's factory then builds its usual parameter groups (no weight decay for
biases and normalisation weights) and accepts ``lookahead_diffgrad`` as well::

    from diffgrad.integrations.timm import register_timm
    register_timm()
    optimizer = timm.optim.create_optimizer_v2(model, opt="diffgrad", lr=1e-3, weight_decay=0.05)
"""

from __future__ import annotations

from typing import Any

__all__ = ["register_timm"]


def register_timm(name: str = "diffgrad", **defaults: Any) -> None:
    """Register ``DiffGrad`` in timm's default optimizer registry under ``name``.

    ``defaults`` are keyword arguments bound to every optimizer created under that name (for
    example ``register_timm("diffgradw", decoupled_weight_decay=True)``); the factory's own
    arguments (``lr``, ``weight_decay``, ``betas``, ``eps``, ...) still override them. Registering
    a name twice replaces the entry (timm logs a warning). timm has no diffGrad of its own, so
    the default name shadows nothing. ``name`` must not contain ``_``: timm reads ``a_b`` as
    optimizer ``b`` with wrapper ``a`` (``lookahead_``).
    """
    if "_" in name:
        raise ValueError(f"timm optimizer names cannot contain '_' (it separates wrappers): {name!r}")
    try:
        from timm.optim._optim_factory import OptimInfo, default_registry
    except ImportError as error:
        raise ImportError("register_timm needs timm >= 1.0.12 (its optimizer registry)") from error

    from diffgrad import DiffGrad

    default_registry.register(
        OptimInfo(
            name=name,
            opt_class=DiffGrad,
            description="diffGrad: Adam with a friction from the change of each gradient element",
            has_eps=True,
            has_betas=True,
            defaults=defaults or None,
        )
    )
