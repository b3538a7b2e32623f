"""DDP with 2 gloo ranks equals one process on the concatenated batch, for every implementation,
every option, with and without ``gradient_as_bucket_view`` (docs/paper.md §2: with bucket views the
published code's aliased previous gradient made ξ = 0.5)."""

from __future__ import annotations

import pytest

from dist_cases import (
    IMPLEMENTATIONS,
    STEPS,
    assert_same_run,
    ddp_task,
    option_sets_for,
    published_optimizer,
    reference_run,
    single_process_run,
    timeout_for,
)

# Float64, 12 steps: the only difference is the order of the gradient sums (all-reduce of the
# two half-batch means vs the mean of the whole batch), round-off of a few ulps.
RTOL, ATOL = 1e-10, 1e-12

CASES = [(impl, options) for impl in IMPLEMENTATIONS for options in option_sets_for(impl)]


@pytest.fixture(scope="module")
def ddp_results(pool, per_impl):
    """Every case of one implementation in one pool task, run when its first test asks."""

    def get(impl: str) -> list[dict]:
        cases = [(impl, options, bv) for options in option_sets_for(impl) for bv in (False, True)]
        return per_impl(impl, lambda: pool.run(ddp_task, cases, [], timeout=timeout_for(impl)))

    return get


@pytest.mark.parametrize("bucket_view", [False, True], ids=["copy_grads", "bucket_view"])
@pytest.mark.parametrize("impl, options", CASES)
def test_two_rank_ddp_equals_one_process_on_the_whole_batch(ddp_results, impl, options, bucket_view) -> None:
    per_rank = [r[(impl, options, bucket_view)] for r in ddp_results(impl)]
    for rank, result in enumerate(per_rank):
        assert not isinstance(result, str), f"rank {rank}: {result}"
    expected = reference_run(impl, options)
    for result in per_rank:
        assert_same_run(result, expected, kind="DDP 2 ranks vs 1 process", rtol=RTOL, atol=ATOL)
        assert not result["previous_grad_aliases_grad"], "previous_grad shares storage with .grad"
        # The scenario is real: with bucket views the gradients of step t are written into the
        # storage of step t−1's (from step 3 on at least: DDP rebuilds its bucket once); without, never.
        reused = result["steps_reusing_grad_storage"]
        assert (reused >= STEPS - 2) if bucket_view else (reused == 0), reused


def test_published_aliasing_bug_is_caught_with_bucket_views(pool) -> None:
    """The control: the published code (previous_grad = .grad, an alias) matches the 1-process
    run only while DDP hands out fresh gradient tensors; with bucket views Δg = 0 from step 2 on
    and the run departs, so the bucket-view test above has the power to see the bug."""
    expected = single_process_run("", "", optimizer=published_optimizer)
    results = pool.run(ddp_task, [], [False, True])[0]
    fresh, bucket = results[("published", False)], results[("published", True)]
    assert not isinstance(fresh, str) and not isinstance(bucket, str), (fresh, bucket)
    fresh_run, expected_run = {"params": fresh["params"], "state": {}}, {"params": expected["params"], "state": {}}
    assert_same_run(fresh_run, expected_run, kind="published code, DDP without bucket views", rtol=RTOL, atol=ATOL)
    worst = max((bucket["params"][n] - p).abs().max().item() for n, p in expected["params"].items())
    assert worst > 1e-4, f"the aliasing bug went unnoticed under bucket views (max diff {worst:.2e})"
