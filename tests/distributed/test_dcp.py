"""Distributed checkpointing (``torch.distributed.checkpoint`` with ``get_state_dict`` /
``set_state_dict``): model + DiffGrad saved by 2 FSDP2 ranks load on 2 ranks and on 1 process (no
process group, plain tensors), and a 1-process checkpoint loads on 2 ranks; training then goes on
exactly as the uninterrupted run."""

from __future__ import annotations

import pytest
import torch

from dist_cases import (
    IMPLEMENTATIONS,
    STEPS,
    assert_same_run,
    dcp_resume_task,
    dcp_save_task,
    reference_run,
    second_job_task,
    single_process_checkpoint_task,
    timeout_for,
    unwrap,
)

SAVE_AT = 5
# The second has every core state key (max_exp_avg_sq); the third adds the family modifiers' keys.
OPTIONS = ["plain", "dfc3_wd_amsgrad_maximize", "family"]
# Same world size: the same operations in the same order, so bit for bit. Across world sizes:
# the gradient sums differ in order (see test_fsdp2.py).
RTOL, ATOL = 1e-10, 1e-12


@pytest.fixture(scope="module")
def runs(pool, per_impl, tmp_path_factory):
    """All checkpoint round trips of one implementation, run when its first test asks."""

    def run_all(impl: str) -> dict:
        root = tmp_path_factory.mktemp(f"dcp-{impl}")
        two = {(impl, o): str(root / f"2ranks-{o}") for o in OPTIONS}
        one = {(impl, o): str(root / f"1process-{o}") for o in OPTIONS}
        timeout = timeout_for(impl)
        on_2_ranks = [(*c, p) for c, p in two.items()]
        out = {"saved_by_2": pool.run(dcp_save_task, on_2_ranks, SAVE_AT, STEPS, timeout=timeout)[0]}
        out["resumed_on_2"] = pool.run(dcp_resume_task, on_2_ranks, SAVE_AT, STEPS, timeout=timeout)[0]
        in_1_process = dict(world_size=1, init_process_group=False, timeout=timeout)
        out["saved_by_1"] = pool.run(
            single_process_checkpoint_task, [(*c, p) for c, p in one.items()], SAVE_AT, STEPS, "save", **in_1_process
        )[0]
        out["resumed_from_2_on_1"] = pool.run(
            single_process_checkpoint_task, on_2_ranks, SAVE_AT, STEPS, "resume", **in_1_process
        )[0]
        out["resumed_from_1_on_2"] = pool.run(
            dcp_resume_task, [(*c, p) for c, p in one.items()], SAVE_AT, STEPS, timeout=timeout
        )[0]
        return out

    return lambda impl: per_impl(impl, lambda: run_all(impl))


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_saved_by_2_ranks_resumed_on_2_ranks_is_bit_exact(runs, impl: str, options: str) -> None:
    saved = unwrap(runs(impl)["saved_by_2"][(impl, options)], "save on 2 ranks")
    resumed = unwrap(runs(impl)["resumed_on_2"][(impl, options)], "resume on 2 ranks")
    assert_same_run(resumed["loaded"], saved["at_save"], kind="DCP 2 -> 2 ranks: loaded state", rtol=0, atol=0)
    assert_same_run(resumed["final"], saved["final"], kind="DCP 2 -> 2 ranks: after training on", rtol=0, atol=0)
    assert resumed["final"]["state"]["0.weight"]["step"].item() == STEPS


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_saved_by_2_ranks_resumed_on_1_process(runs, impl: str, options: str) -> None:
    saved = unwrap(runs(impl)["saved_by_2"][(impl, options)], "save on 2 ranks")
    resumed = unwrap(runs(impl)["resumed_from_2_on_1"][(impl, options)], "resume in 1 process")
    # The loaded state is the saved one exactly; DCP reassembled every shard.
    assert_same_run(resumed["loaded"], saved["at_save"], kind="DCP 2 ranks -> 1 process: loaded state", rtol=0, atol=0)
    kind = "DCP 2 ranks -> 1 process: after training on"
    assert_same_run(resumed["final"], saved["final"], kind=kind, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_saved_by_1_process_resumed_on_2_ranks(runs, impl: str, options: str) -> None:
    saved = unwrap(runs(impl)["saved_by_1"][(impl, options)], "save in 1 process")
    resumed = unwrap(runs(impl)["resumed_from_1_on_2"][(impl, options)], "resume on 2 ranks")
    assert_same_run(resumed["loaded"], saved["at_save"], kind="DCP 1 process -> 2 ranks: loaded state", rtol=0, atol=0)
    kind = "DCP 1 process -> 2 ranks: after training on"
    assert_same_run(resumed["final"], saved["final"], kind=kind, rtol=RTOL, atol=ATOL)
    assert torch.is_tensor(resumed["final"]["state"]["0.weight"]["step"])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_second_job_on_the_same_machine(pool, impl: str) -> None:
    """A job that starts from get_state_dict (every DCP save or resume does), after another one
    on the same machine: with ``fused``, the second loads the compiled step from the rank's
    Inductor cache folder (each rank has its own: see dist_launcher), AOTAutograd's cache included."""
    steps = 3
    results = pool.run(second_job_task, impl, "plain", steps, timeout=timeout_for(impl))
    # get_state_dict's step on zero gradients (at lr 0) counts in the step count: so in the reference.
    expected = reference_run(impl, "plain", steps=steps, state_dict_first=True)
    for result in results:
        assert_same_run(result, expected, kind="DCP, second job on the same machine", rtol=RTOL, atol=ATOL)
