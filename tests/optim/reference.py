"""An independent reference of the paper's equations: plain Python floats, one element at a time.

It shares no code with the package, so agreement with it is evidence, not tautology.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def friction(
    name: str, delta: float, mu: float, nu: float, denom: float | None = None, slope: float | None = None
) -> float:
    """ξ for Δg = g_{t-1} − g_t (paper Eq. 19 and Table II; dfc-rms: docs/paper.md §10, with
    ``denom`` = sqrt(v̂_t) + ε). ``slope`` replaces the constant slope of dfc, dfc1, dfc2 and is κ
    of dfc-rms."""
    if name == "dfc":
        return _sigmoid((1.0 if slope is None else slope) * abs(delta))
    if name == "dfc1":
        return _sigmoid((1.0 if slope is None else slope) * delta)
    if name == "dfc2":
        return 9.0 / (1.0 + math.exp(-(0.5 if slope is None else slope) * abs(delta))) - 4.0
    if name == "dfc-rms":
        assert slope is not None and denom is not None, "dfc-rms needs κ and sqrt(v̂_t) + ε"
        return _sigmoid(slope * abs(delta) / denom)
    if name == "dfc3":
        return _sigmoid(nu * abs(delta) - mu)
    if name == "dfc4":
        return _sigmoid(nu**2 * abs(delta) - mu)
    if name == "dfc5":
        return _sigmoid(math.sqrt(nu) * abs(delta) - mu)
    raise ValueError(name)


@dataclass
class RefState:
    step: int = 0
    m: list[float] = field(default_factory=list)
    v: list[float] = field(default_factory=list)
    g_prev: list[float] = field(default_factory=list)
    v_max: list[float] = field(default_factory=list)
    norm: float = 0.0  # AdaNorm's e_t
    theta_prev: list[float] = field(default_factory=list)  # AdaInject's θ_{t−1}
    xi: list[float] = field(default_factory=list)  # the last step's ξ_t


def reference_step(
    theta: list[float],
    grad: list[float],
    st: RefState,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float = 0.0,
    decoupled: bool = False,
    amsgrad: bool = False,
    maximize: bool = False,
    friction_name: str = "dfc",
    friction_slope: float | None = None,
    rectify: bool = False,
    rectify_threshold: float = 5.0,
    rectify_warmup: str = "sgd",
    adanorm_gamma: float | None = None,
    adainject_k: float | None = None,
    cautious: bool = False,
    centralize_rows: int | None = None,
) -> list[float]:
    """One diffGrad step (Eq. 11–20) on a flat list of parameter values; returns the new values.

    The family's modifiers (docs/paper.md §8) when asked: ``centralize_rows`` is the size of the first
    dim of a tensor with ≥ 2 dims (the list is its row-major flattening)."""
    n = len(theta)
    if st.step == 0:
        st.m, st.v, st.g_prev, st.v_max = [0.0] * n, [0.0] * n, [0.0] * n, [0.0] * n
    st.step += 1
    t = st.step
    g = [-x for x in grad] if maximize else list(grad)
    if centralize_rows:
        width = n // centralize_rows
        for r in range(centralize_rows):
            row_mean = sum(g[r * width : (r + 1) * width]) / width
            for i in range(r * width, (r + 1) * width):
                g[i] -= row_mean
    theta_start = list(theta)
    theta = list(theta)
    if weight_decay:
        if decoupled:
            theta = [p * (1.0 - lr * weight_decay) for p in theta]
        else:
            g = [gi + weight_decay * p for gi, p in zip(g, theta)]
    first = list(g)
    if adanorm_gamma is not None:
        norm = math.sqrt(sum(x * x for x in g))
        st.norm = adanorm_gamma * st.norm + (1 - adanorm_gamma) * norm
        if st.norm > norm > 0:  # a zero gradient stays zero
            first = [st.norm / norm * x for x in g]
    if adainject_k is not None:
        if t > 1:
            first = [
                (s + (prev - cur) * s * s) / adainject_k for s, prev, cur in zip(first, st.theta_prev, theta_start)
            ]
        st.theta_prev = theta_start
    mu = sum(abs(x) for x in g) / n
    nu = math.sqrt(sum((abs(x) - mu) ** 2 for x in g) / n)
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * beta2**t / (1 - beta2**t)
    u = []
    st.xi = []
    for i in range(n):
        st.m[i] = beta1 * st.m[i] + (1 - beta1) * first[i]
        st.v[i] = beta2 * st.v[i] + (1 - beta2) * g[i] * g[i]
        st.v_max[i] = max(st.v_max[i], st.v[i])
        m_hat = st.m[i] / (1 - beta1**t)
        v_hat = (st.v_max[i] if amsgrad else st.v[i]) / (1 - beta2**t)
        denom = math.sqrt(v_hat) + eps
        xi = friction(friction_name, st.g_prev[i] - g[i], mu, nu, denom, friction_slope)
        st.xi.append(xi)
        st.g_prev[i] = g[i]
        u_i = xi * m_hat / denom
        if rectify:
            if rho_t >= rectify_threshold:
                u_i *= math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            else:
                u_i = m_hat if rectify_warmup == "sgd" else 0.0
        u.append(u_i)
    if cautious:
        mask = [1.0 if u_i * g_i > 0 else 0.0 for u_i, g_i in zip(u, g)]
        scale = n / (sum(mask) + 1)
        u = [u_i * k * scale for u_i, k in zip(u, mask)]
    return [p - lr * u_i for p, u_i in zip(theta, u)]


def adam_step(theta: list[float], grad: list[float], st: RefState, *, lr, beta1, beta2, eps) -> list[float]:
    """Plain Adam, for the paper's comparison on the 1-D functions."""
    n = len(theta)
    if st.step == 0:
        st.m, st.v = [0.0] * n, [0.0] * n
    st.step += 1
    t = st.step
    out = []
    for i in range(n):
        st.m[i] = beta1 * st.m[i] + (1 - beta1) * grad[i]
        st.v[i] = beta2 * st.v[i] + (1 - beta2) * grad[i] ** 2
        out.append(theta[i] - lr * (st.m[i] / (1 - beta1**t)) / (math.sqrt(st.v[i] / (1 - beta2**t)) + eps))
    return out


def reference_kwargs(options: dict, hp: dict, shape: tuple[int, ...] | None = None) -> dict:
    """:func:`reference_step`'s keyword arguments for ``DiffGrad(**hp, **options)`` on a parameter
    of ``shape`` (needed for gradient centralisation only). dfc-rms's κ defaults to the package's
    value (a hyper-parameter's value, not code)."""
    from diffgrad.optim.friction import DFC_RMS_SLOPE

    friction_name = options.get("friction", "dfc")
    slope = options.get("friction_slope")
    return dict(
        lr=hp["lr"],
        beta1=hp["betas"][0],
        beta2=hp["betas"][1],
        eps=hp["eps"],
        weight_decay=options.get("weight_decay", 0.0),
        decoupled=options.get("decoupled_weight_decay", False),
        amsgrad=options.get("amsgrad", False),
        maximize=options.get("maximize", False),
        friction_name=friction_name,
        friction_slope=DFC_RMS_SLOPE if slope is None and friction_name == "dfc-rms" else slope,
        rectify=options.get("rectify", False),
        rectify_threshold=options.get("rectify_threshold", 5.0),
        rectify_warmup=options.get("rectify_warmup", "sgd"),
        adanorm_gamma=options.get("adanorm_gamma", 0.95) if options.get("adanorm") else None,
        adainject_k=options.get("adainject_k", 2.0) if options.get("adainject") else None,
        cautious=options.get("cautious", False),
        centralize_rows=shape[0] if options.get("centralize") and shape is not None and len(shape) >= 2 else None,
    )
