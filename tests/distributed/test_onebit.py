"""1-bit diffGrad on gloo ranks: the warm-up is DDP diffGrad, the ranks stay bit-identical after
the freeze (with and without DDP, every ξ reading and the Adam control), a checkpoint taken while
compressing resumes exactly, the bytes sent, and clear errors for bad settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from diffgrad.distributed.compression import ChunkLayout
from dist_cases import make_model
from wire_cases import ddp_diffgrad_task, no_all_to_all_task, onebit_error_task, onebit_task, pool4, script_task

STEPS = 12
FREEZE = 4
VARIANTS = {
    "xi_momentum": {"freeze_step": FREEZE, "xi_source": "momentum"},
    "xi_frozen": {"freeze_step": FREEZE, "xi_source": "frozen"},
    "adam": {"freeze_step": FREEZE, "friction": None},
    "dfc3_wd": {"freeze_step": FREEZE, "friction": "dfc3", "weight_decay": 0.05},
    # relative to the step's denominator: ξ needs sqrt(v̂) + ε in both readings
    "dfc_rms_momentum": {"freeze_step": FREEZE, "friction": "dfc-rms"},
    "dfc_rms_frozen": {"freeze_step": FREEZE, "friction": "dfc-rms", "xi_source": "frozen"},
    "slope_maximize": {"freeze_step": FREEZE, "friction_slope": 3.0, "maximize": True},
}


@pytest.mark.parametrize("options", [{}, {"maximize": True, "friction_slope": 3.0}], ids=["defaults", "slope_maximize"])
@pytest.mark.parametrize("ddp", [False, True], ids=["no_ddp", "ddp"])
def test_warmup_equals_ddp_diffgrad_bitwise(ddp, options) -> None:
    pool = pool4()
    expected = pool.run(ddp_diffgrad_task, STEPS, options, world_size=2)[0]
    got = pool.run(onebit_task, {"freeze_step": STEPS, **options}, ddp, STEPS, world_size=2)
    for result in got:
        for name, p in expected.items():
            assert torch.equal(result["params"][name], p), name


@pytest.fixture(scope="module")
def compressed_runs():
    """Every variant, with and without DDP, on 3 ranks (uneven chunks), uninterrupted and resumed."""
    pool, runs = pool4(), {}
    for name, options in VARIANTS.items():
        for ddp in (False, True):
            runs[name, ddp, None] = pool.run(onebit_task, options, ddp, STEPS, world_size=3)
            runs[name, ddp, 7] = pool.run(onebit_task, options, ddp, STEPS, 7, world_size=3)
    return runs


@pytest.mark.parametrize("ddp", [False, True], ids=["no_ddp", "ddp"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ranks_stay_bit_identical_after_the_freeze(compressed_runs, variant, ddp) -> None:
    ranks = compressed_runs[variant, ddp, None]
    for rank in ranks[1:]:
        for name, p in ranks[0]["params"].items():
            assert torch.equal(rank["params"][name], p), (rank, name)
    # the control: the ranks' local momenta differed before the exchange, so the worker errors do
    worker = [r["state"][0]["worker_error"] for r in ranks]
    assert not torch.equal(worker[0], worker[1])
    # and the run moved away from the warm-up's end (the compressed steps did something)
    assert all(int(s["step"]) == STEPS for s in ranks[0]["state"].values())


@pytest.mark.parametrize("ddp", [False, True], ids=["no_ddp", "ddp"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resume_mid_compression_reproduces_the_uninterrupted_run(compressed_runs, variant, ddp) -> None:
    whole, resumed = compressed_runs[variant, ddp, None], compressed_runs[variant, ddp, 7]
    for a, b in zip(whole, resumed):
        for name, p in a["params"].items():
            assert torch.equal(b["params"][name], p), name
        for index, state in a["state"].items():
            for key, value in state.items():
                assert torch.equal(b["state"][index][key], value), (index, key)


def test_xi_readings_differ() -> None:
    pool = pool4()
    momentum = pool.run(onebit_task, VARIANTS["xi_momentum"], False, STEPS, world_size=2)[0]
    frozen = pool.run(onebit_task, VARIANTS["xi_frozen"], False, STEPS, world_size=2)[0]
    assert "frozen_friction" in frozen["state"][0] and "frozen_friction" not in momentum["state"][0]
    assert not torch.equal(momentum["params"]["0.weight"], frozen["params"]["0.weight"])


def test_bytes_sent_per_step(compressed_runs) -> None:
    """Warm-up: one fp32 all-reduce per step; compressed: the 1-bit payload of the layout."""
    n = 3
    numels = [p.numel() for p in make_model().parameters()]
    layout = ChunkLayout(numels, n)
    for ddp in (False, True):
        sent = compressed_runs["xi_momentum", ddp, None][0]["bytes"]
        assert sent["all_to_all"] == (STEPS - FREEZE) * (n - 1) * layout.row_bytes
        assert sent["all_gather"] == (STEPS - FREEZE) * (n - 1) * layout.row_bytes
        assert sent["all_reduce"] == FREEZE * 2 * (n - 1) * sum(numels) * 8 // n


@pytest.mark.parametrize(
    "options, message",
    [
        ({"freeze_step": 0}, "Invalid freeze_step: 0"),
        ({"freeze_step": 2.5}, "Invalid freeze_step: 2.5"),
        ({"freeze_step": 3, "xi_source": "local"}, "Invalid xi_source: 'local'"),
        ({"freeze_step": 3, "friction": "dfc9"}, "Invalid friction: 'dfc9'"),
        ({"freeze_step": 3, "betas": (0.9, 1.0)}, "Invalid beta parameter at index 1: 1.0"),
        ({"freeze_step": 3, "maximize": 1}, "Invalid maximize: 1"),
        ({"freeze_step": 3, "groups": [{"freeze_step": 5}]}, "Invalid freeze_step: 5; every parameter group"),
        ({"freeze_step": 3, "friction": None, "friction_slope": 2.0}, "Invalid friction_slope: 2.0 (friction=None"),
        ({"freeze_step": 3, "friction": "dfc3", "friction_slope": 2.0}, "takes its slope from ν"),
        ({"freeze_step": 3, "friction_slope": -1.0}, "Invalid friction_slope: -1.0"),
    ],
)
def test_bad_settings_raise_clear_errors(options, message) -> None:
    assert all(message in got for got in pool4().run(onebit_error_task, options, world_size=2))


def test_backend_without_all_to_all_is_refused() -> None:
    for got in pool4().run(no_all_to_all_task, world_size=2):
        assert "needs all_to_all, which backend 'gloo' does not run" in got, got


PAGE = Path(__file__).resolve().parents[2] / "docs" / "communication.md"
BLOCK = re.compile(r"^```python\n(# torchrun --nproc-per-node=(\d+) (\S+\.py)\n.*?)^```", re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("code, ranks, name", BLOCK.findall(PAGE.read_text()), ids=lambda v: str(v)[:12])
def test_docs_examples_run(tmp_path, code, ranks, name) -> None:
    """docs/communication.md cannot rot: each example runs on the ranks its first line names."""
    (tmp_path / name).write_text(code)
    pool4().run(script_task, str(tmp_path / name), world_size=int(ranks), init_process_group=False, cwd=str(tmp_path))


def test_lab_refuses_a_batch_that_does_not_divide_into_the_ranks(capsys) -> None:
    from diffgrad.cli import main
    from diffgrad.lab.wire import WireSettings

    with pytest.raises(ValueError, match="the global batch of 64 does not divide into 3 equal rank slices"):
        WireSettings(world_size=3).check()
    assert main(["wire", "--ranks", "3", "--out", "unused"]) == 2
    assert "does not divide into 3" in capsys.readouterr().err
