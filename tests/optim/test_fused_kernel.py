"""The fused CPU kernel (diffgrad/optim/fused.py, diffgrad/optim/csrc/fused_step.cpp) against the eager
per-tensor step and the plain-Python reference, its codecs against diffgrad.optim.state bit for
bit, and its handling of layouts, dtypes, AMP and the build."""

from __future__ import annotations

import ast
import copy
import ctypes
import math
import re
import subprocess
import sys

import pytest
import torch

from diffgrad.optim import fused
from diffgrad.optim.friction import resolve_friction
from diffgrad.optim.functional import diffgrad
from diffgrad.optim.modifiers import Modifiers
from diffgrad.optim.state import BLOCK, Blockwise8, StateBuffer, load, new_buffer, real_numel, store
from optim_info import HP, MODIFIER_SETS, OPTION_SETS, STATE_DTYPES
from reference import RefState, reference_kwargs, reference_step

KEYS = ("exp_avgs", "exp_avg_sqs", "previous_grads", "max_exp_avg_sqs", "previous_params")
SQRT_DOMAIN = {"exp_avg_sqs", "max_exp_avg_sqs"}
ALL_SETS = {**OPTION_SETS, **{f"modifiers_{name}": options for name, options in MODIFIER_SETS.items()}}


def _hyper(options: dict) -> dict:
    """The functional step's keyword arguments for ``DiffGrad(**HP, **options)``."""
    return dict(
        lr=HP["lr"],
        beta1=HP["betas"][0],
        beta2=HP["betas"][1],
        eps=HP["eps"],
        weight_decay=options.get("weight_decay", 0.0),
        decoupled_weight_decay=options.get("decoupled_weight_decay", False),
        amsgrad=options.get("amsgrad", False),
        maximize=options.get("maximize", False),
        friction=resolve_friction(options.get("friction", "dfc"), options.get("friction_slope")),
        modifiers=Modifiers(**{k: v for k, v in options.items() if k in Modifiers.__dataclass_fields__}),
    )


def _state(params: list[torch.Tensor], hyper: dict, state_dtype: object) -> dict[str, list]:
    """Lists as DiffGrad._init_group builds them."""
    amsgrad, modifiers = hyper["amsgrad"], hyper["modifiers"]
    return {
        "exp_avgs": [new_buffer(p, state_dtype) for p in params],
        "exp_avg_sqs": [new_buffer(p, state_dtype) for p in params],
        "previous_grads": [new_buffer(p, state_dtype) for p in params],
        "max_exp_avg_sqs": [new_buffer(p, state_dtype) for p in params] if amsgrad else [],
        "state_steps": [torch.tensor(0.0) for _ in params],
        "previous_params": [new_buffer(p, None).copy_(p) for p in params] if modifiers.adainject else [],
        "exp_grad_norms": [
            torch.zeros((), dtype=torch.float32 if p.dtype != torch.float64 else p.dtype) for p in params
        ]
        if modifiers.adanorm
        else [],
    }


def _step(fn, params: list[torch.Tensor], grads: list[torch.Tensor], state: dict, hyper: dict, **kwargs) -> None:
    fn(
        params, grads, state["exp_avgs"], state["exp_avg_sqs"], state["previous_grads"], state["max_exp_avg_sqs"],
        state["state_steps"], kwargs.pop("grad_scale", None), kwargs.pop("found_inf", None),
        previous_params=state["previous_params"], exp_grad_norms=state["exp_grad_norms"], **hyper, **kwargs,
    )  # fmt: skip


def _eager(*args, **kwargs) -> None:
    diffgrad(*args, foreach=False, **kwargs)


def _fused(*args, **kwargs) -> None:
    diffgrad(*args, fused=True, **kwargs)


def _decoded(buffer: StateBuffer, param: torch.Tensor, key: str) -> torch.Tensor:
    dtype = torch.float64 if param.dtype == torch.float64 else torch.float32
    values, _ = load(buffer, (0, real_numel(param)), dtype, copy=True, sqrt_domain=key in SQRT_DOMAIN)
    return values


def _assert_state_close(actual: dict, expected: dict, params: list[torch.Tensor]) -> None:
    assert [s.item() for s in actual["state_steps"]] == [s.item() for s in expected["state_steps"]]
    for key in KEYS:
        for a, e, p in zip(actual[key], expected[key], params):
            if isinstance(e, Blockwise8):
                # The kernel's values differ from the eager ones by round-off, which moves a value
                # across a code boundary now and then: one code step at most, rarely.
                assert (a.codes != e.codes).float().mean() < 0.01, key
                torch.testing.assert_close(a.absmax, e.absmax, rtol=1e-5, atol=0)
                torch.testing.assert_close(_decoded(a, p, key), _decoded(e, p, key), rtol=0.3, atol=1e-12)
            else:
                rtol = 2**-7 if e.dtype == torch.bfloat16 else 1e-5
                torch.testing.assert_close(_decoded(a, p, key), _decoded(e, p, key), rtol=rtol, atol=1e-7)
    for a, e in zip(actual["exp_grad_norms"], expected["exp_grad_norms"]):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=0)


def _params(dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """A matrix of whole 8-bit blocks, a non-contiguous one, a 0-dim one, a vector."""
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(16, BLOCK, generator=g, dtype=dtype),
        torch.randn(5, 3, generator=g, dtype=dtype).t(),
        torch.randn((), generator=g, dtype=dtype),
        torch.randn(7, generator=g, dtype=dtype),
    ]


def _grads(params: list[torch.Tensor], step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) * (1 + step % 3) for p in params]


@pytest.mark.parametrize("state_dtype", STATE_DTYPES, ids=str)
@pytest.mark.parametrize("option_set", ALL_SETS)
def test_matches_eager_step_on_every_state_key(option_set: str, state_dtype: object) -> None:
    """float32, every option and modifier set, every storage format: the kernel's step equals the
    eager per-tensor step's up to float32 round-off, step after step from the same state."""
    hyper = _hyper(ALL_SETS[option_set])
    params = _params()
    state = _state(params, hyper, state_dtype)
    for step in range(3):
        grads = _grads(params, step)
        grads_before = [g.clone() for g in grads]
        expected_params, expected_state = copy.deepcopy((params, state))
        _step(_eager, expected_params, grads, expected_state, hyper)
        _step(_fused, params, grads, state, hyper)
        for g, before in zip(grads, grads_before):
            assert torch.equal(g, before)  # the caller's .grad is only read
        for p, e in zip(params, expected_params):
            torch.testing.assert_close(p, e, rtol=1e-5, atol=1e-6)
        _assert_state_close(state, expected_state, params)
        params, state = expected_params, expected_state  # next step from identical inputs


@pytest.mark.parametrize("option_set", ALL_SETS)
def test_matches_reference_in_float64(option_set: str) -> None:
    options = ALL_SETS[option_set]
    hyper = _hyper(options)
    params = [*_params(torch.float64)[1:], torch.randn(3, 4, dtype=torch.float64)]
    state = _state(params, hyper, None)
    reference = [(p.flatten().tolist(), RefState()) for p in params]
    for step in range(12):
        grads = _grads(params, step)
        for i, (p, g) in enumerate(zip(params, grads)):
            theta, st = reference[i]
            kwargs = reference_kwargs(options, HP, tuple(p.shape))
            reference[i] = (reference_step(theta, g.flatten().tolist(), st, **kwargs), st)
        _step(_fused, params, grads, state, hyper)
    for i, (p, (theta, st)) in enumerate(zip(params, reference)):
        expected = {"exp_avgs": st.m, "exp_avg_sqs": st.v, "previous_grads": st.g_prev}
        if hyper["amsgrad"]:
            expected["max_exp_avg_sqs"] = st.v_max
        if hyper["modifiers"].adainject:
            expected["previous_params"] = st.theta_prev
        assert state["state_steps"][i].item() == st.step
        close = dict(rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(p.flatten(), torch.tensor(theta, dtype=torch.float64), **close)
        for key, values in expected.items():
            torch.testing.assert_close(state[key][i].flatten(), torch.tensor(values, dtype=torch.float64), **close)
        if hyper["modifiers"].adanorm:
            assert state["exp_grad_norms"][i].item() == pytest.approx(st.norm, rel=1e-12)


def _special_floats(n: int) -> torch.Tensor:
    """Random float32 bit patterns (every exponent, subnormals, NaN, ±inf), then random values."""
    g = torch.Generator().manual_seed(7)
    bits = torch.randint(-(2**31), 2**31 - 1, (n,), generator=g, dtype=torch.int64).to(torch.int32)
    return bits.view(torch.float32)


def _pointer(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def test_bfloat16_encoding_is_torchs() -> None:
    lib = fused.library()
    values = torch.cat([_special_floats(1 << 16), torch.randn(1 << 12), torch.tensor([0.0, -0.0, 1e-40, 3.3961e38])])
    out = torch.empty(values.numel(), dtype=torch.int16)
    lib.dg_encode_bfloat16(_pointer(values), ctypes.c_int64(values.numel()), _pointer(out))
    expected = values.to(torch.bfloat16).view(torch.int16)
    finite = ~values.isnan()
    assert torch.equal(out[finite], expected[finite])
    assert out[~finite].view(torch.bfloat16).isnan().all()


@pytest.mark.parametrize("sqrt_domain", [False, True])
def test_blockwise8_codec_is_states(sqrt_domain: bool) -> None:
    """Encoding and decoding equal state.store/state.load bit for bit, over blocks of random
    magnitudes, all-zero blocks and blocks with subnormal and huge values."""
    g = torch.Generator().manual_seed(3)
    blocks = 64
    x = torch.randn(blocks, BLOCK, generator=g) * 10 ** torch.empty(blocks, BLOCK).uniform_(-8, 3, generator=g)
    x[0] = 0.0
    x[1, :7] = torch.tensor([1e-42, -1e-39, 3e38, -2.5e38, 1e-45, 0.0, -0.0])
    x[2] = torch.linspace(-1, 1, BLOCK) * 2.0**-20
    if sqrt_domain:
        x = x.abs()
    x = x.flatten()
    expected = Blockwise8(torch.empty(x.numel(), dtype=torch.uint8), torch.empty(blocks))
    store(expected, x, (0, x.numel()), sqrt_domain=sqrt_domain)
    codes, absmax = torch.empty_like(expected.codes), torch.empty_like(expected.absmax)
    lib = fused.library()
    lib.dg_encode_blockwise8(
        _pointer(x), ctypes.c_int64(x.numel()), ctypes.c_int32(sqrt_domain), _pointer(codes), _pointer(absmax)
    )
    assert torch.equal(codes, expected.codes)
    assert torch.equal(absmax, expected.absmax)
    # Decoding every code under a few scales, zero included.
    every = torch.arange(256, dtype=torch.uint8).repeat(4)
    scales = torch.tensor([1.0, 3.5e-3, 0.0, 7e37])
    decoded = torch.empty(every.numel())
    lib.dg_decode_blockwise8(
        _pointer(every), _pointer(scales), ctypes.c_int64(every.numel()), ctypes.c_int32(sqrt_domain), _pointer(decoded)
    )
    reference, _ = load(
        Blockwise8(every, scales), (0, every.numel()), torch.float32, copy=True, sqrt_domain=sqrt_domain
    )
    torch.testing.assert_close(decoded, reference, rtol=0, atol=0, equal_nan=True)


def test_found_inf_skips_everything() -> None:
    hyper = _hyper({"amsgrad": True, "adanorm": True, "adainject": True})
    params = _params()
    state = _state(params, hyper, "8bit")
    _step(_fused, params, _grads(params, 0), state, hyper)
    before = copy.deepcopy((params, state))
    _step(
        _fused,
        params,
        _grads(params, 1),
        state,
        hyper,
        grad_scale=torch.tensor(8.0),
        found_inf=torch.tensor(1.0),
    )
    for a, b in zip(params, before[0]):
        assert torch.equal(a, b)
    for key, values in state.items():
        for a, b in zip(values, before[1][key]):
            for x, y in zip(a if isinstance(a, Blockwise8) else [a], b if isinstance(b, Blockwise8) else [b]):
                assert torch.equal(x, y), key


def test_grad_scale_unscales() -> None:
    hyper = _hyper({"weight_decay": 0.1})
    params = _params()
    state = _state(params, hyper, None)
    expected_params, expected_state = copy.deepcopy((params, state))
    grads = _grads(params, 0)
    _step(_eager, expected_params, grads, expected_state, hyper)
    scaled = [g * 1024.0 for g in grads]
    _step(_fused, params, scaled, state, hyper, grad_scale=torch.tensor(1024.0), found_inf=torch.tensor(0.0))
    for p, e in zip(params, expected_params):
        torch.testing.assert_close(p, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.complex64])
@pytest.mark.parametrize("state_dtype", STATE_DTYPES, ids=str)
def test_other_parameter_dtypes_and_layouts(dtype: torch.dtype, state_dtype: object) -> None:
    """Low-precision and complex parameters, contiguous or not, empty: as the eager step."""
    hyper = _hyper({"amsgrad": True, "weight_decay": 0.1})
    g = torch.Generator().manual_seed(1)
    params = [
        torch.randn(16, BLOCK, generator=g, dtype=dtype),
        torch.randn(BLOCK, 16, generator=g, dtype=dtype).t(),
        torch.randn(0, 3, generator=g, dtype=dtype),
        torch.randn((), generator=g, dtype=dtype),
    ]
    state = _state(params, hyper, state_dtype)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=g, dtype=dtype) for p in params]
        grads[0] = grads[0].t().contiguous().t() if grads[0].dim() == 2 else grads[0]  # another layout than θ
        expected_params, expected_state = copy.deepcopy((params, state))
        _step(_eager, expected_params, grads, expected_state, hyper)
        _step(_fused, params, grads, state, hyper)
        for p, e in zip(params, expected_params):
            assert p.dtype == e.dtype and p.stride() == e.stride()
            rtol = 1e-5 if dtype == torch.complex64 else 2.0 ** -(8 if dtype == torch.bfloat16 else 11)
            torch.testing.assert_close(p, e, rtol=rtol, atol=1e-5)
        _assert_state_close(state, expected_state, params)
        params, state = expected_params, expected_state


def test_lr_as_a_tensor() -> None:
    hyper = _hyper({})
    params = _params()
    state = _state(params, hyper, None)
    expected_params, expected_state = copy.deepcopy((params, state))
    grads = _grads(params, 0)
    _step(_eager, expected_params, grads, expected_state, hyper)
    _step(_fused, params, grads, state, {**hyper, "lr": torch.tensor(HP["lr"])})
    for p, e in zip(params, expected_params):
        torch.testing.assert_close(p, e, rtol=1e-5, atol=1e-6)


def test_one_openmp_runtime_in_the_process() -> None:
    """The kernel uses torch's OpenMP runtime: loading it maps no other libgomp. (In a new
    process: other libraries, scikit-learn's among them, bring runtimes of their own.)"""
    script = (
        "import pathlib, torch\n"
        "from diffgrad.optim import fused\n"
        "fused.library()\n"
        "maps = pathlib.Path('/proc/self/maps').read_text().splitlines()\n"
        "print(sorted({line.split()[-1] for line in maps if 'libgomp' in line}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    runtimes = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    # torch/lib/libgomp.so.1, or a name with a hash in older wheels (libgomp-a34b3233.so.1).
    assert len(runtimes) == 1 and re.fullmatch(r".*/torch/lib/libgomp(-[0-9a-f]+)?\.so\.1", runtimes[0]), runtimes


def test_build_is_cached_per_machine_and_reports_a_missing_compiler(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DIFFGRAD_CACHE_DIR", str(tmp_path))
    fused.library.cache_clear()
    try:
        fused.library()
        built = list(tmp_path.glob("*/fused_step.so"))
        assert len(built) == 1 and not list(tmp_path.glob("*/*.partial"))
    finally:
        fused.library.cache_clear()
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setattr(fused.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="C\\+\\+17 compiler"):
        fused._compiler()


def test_many_small_tensors_take_one_call() -> None:
    """A plan per parameter list: a second step reuses it; replacing a buffer makes a new one."""
    hyper = _hyper({})
    params = [torch.randn(3) for _ in range(50)]
    state = _state(params, hyper, None)
    _step(_fused, params, _grads(params, 0), state, hyper)
    plans = len(fused._PLANS)
    _step(_fused, params, _grads(params, 1), state, hyper)
    assert len(fused._PLANS) == plans
    state["exp_avgs"][0] = state["exp_avgs"][0].clone()
    _step(_fused, params, _grads(params, 2), state, hyper)
    assert math.isfinite(params[0].sum().item())
