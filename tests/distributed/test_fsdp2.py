"""FSDP2 (``fully_shard``, DTensor parameters) on 2 gloo ranks equals one unsharded process, for
every implementation and option; DFC3–DFC5 use the statistics of the whole tensor, not the shard.

Every parameter of the test model is sharded unevenly over the 2 ranks (dim 0 of 5 → 3 + 2, of 3 →
2 + 1, of 1 → 1 + 0: rank 1 holds an empty shard). For two option sets the model also has two
weights larger than the slices in which the per-tensor step works: W×3 with W odd (uneven shards)
and 4×W (even shards).
"""

from __future__ import annotations

import pytest
import torch

from diffgrad.optim.friction import abs_grad_stats, friction_, get_friction
from dist_cases import (
    FRICTION_MODES,
    IMPLEMENTATIONS,
    assert_same_run,
    friction_inputs,
    friction_on_shards_task,
    fsdp_setup,
    fsdp_task,
    option_sets_for,
    reference_run,
    timeout_for,
    unwrap,
)
from reference import friction as reference_friction

# Float64: the reduce-scatter sums the two half-batch gradients in another order than the single
# process's backward does; nothing else differs.
RTOL, ATOL = 1e-10, 1e-12

FRICTION_SHAPES = [(5, 3), (7,), (1, 3), (3, 5), (1,)]
FRICTION_NAMES = ["dfc", "dfc1", "dfc2", "dfc3", "dfc4", "dfc5"]

CASES = [(impl, options) for impl in IMPLEMENTATIONS for options in option_sets_for(impl)]


@pytest.fixture(scope="module")
def fsdp_results(pool, per_impl):
    """Every case of one implementation in one pool task, run when its first test asks."""

    def get(impl: str) -> list[dict]:
        cases = [(impl, options) for options in option_sets_for(impl)]
        return per_impl(impl, lambda: pool.run(fsdp_task, cases, timeout=timeout_for(impl)))

    return get


@pytest.fixture(scope="module")
def friction_results(pool):
    return pool.run(friction_on_shards_task, FRICTION_SHAPES, FRICTION_NAMES)


@pytest.mark.parametrize("impl, options", CASES)
def test_fsdp2_equals_one_unsharded_process(fsdp_results, impl: str, options: str) -> None:
    results = [r[(impl, options)] for r in fsdp_results(impl)]
    for rank, result in enumerate(results):
        unwrap(result, f"rank {rank}")
    wide, steps = fsdp_setup(options)
    expected = reference_run(impl, options, wide, steps)
    # The shards really are uneven, with an empty one.
    shapes = [r["local_shapes"] for r in results]
    last_bias = list(shapes[0])[-1]
    assert shapes[0]["0.weight"] == (3, 3) and shapes[1]["0.weight"] == (2, 3)
    assert shapes[0][last_bias] == (1,) and shapes[1][last_bias] == (0,)
    for result in results:
        assert result["state_is_dtensor"], "optimizer state should be sharded like the parameters"
        assert_same_run(result, expected, kind="FSDP2 2 ranks vs 1 process", rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("mode", FRICTION_MODES)
def test_statistics_of_uneven_shards_are_those_of_the_whole_tensor(friction_results, mode: str) -> None:
    """μ, ν of |g| (DFC3–DFC5) from a DTensor: DTensor's std_mean (or std and mean) reduces over all shards."""
    assert friction_results[0]["local_shapes"] == [(3, 3), (4,), (1, 3), (2, 5), (1,)]
    assert friction_results[1]["local_shapes"] == [(2, 3), (3,), (0, 3), (1, 5), (0,)]
    grads, _ = friction_inputs(FRICTION_SHAPES)
    for result in friction_results:
        stats = unwrap(result[mode]["stats"], "abs_grad_stats")
        for (mu, nu), g in zip(stats, grads):
            want_mu, want_nu = (s.item() for s in abs_grad_stats(g))
            assert mu == pytest.approx(want_mu, rel=1e-13, abs=1e-15)
            assert nu == pytest.approx(want_nu, rel=1e-12, abs=1e-14)
            # … and they differ from the statistics of rank 0's shard (the test can tell).
    shard_mu, _shard_nu = abs_grad_stats(grads[0][:3])
    assert abs(shard_mu.item() - friction_results[0][mode]["stats"][0][0]) > 1e-3


@pytest.mark.parametrize("mode", FRICTION_MODES)
@pytest.mark.parametrize("path", ["per_tensor", "foreach"])
@pytest.mark.parametrize("name", FRICTION_NAMES)
def test_friction_on_uneven_shards_equals_the_unsharded_value(
    friction_results, name: str, path: str, mode: str
) -> None:
    grads, prevs = friction_inputs(FRICTION_SHAPES)
    for result in friction_results:
        xis = unwrap(result[mode][(name, path)], f"{path} friction {name} ({mode})")
        for xi, g, prev in zip(xis, grads, prevs):
            (unsharded,) = friction_(get_friction(name), [prev - g], [g])
            torch.testing.assert_close(xi, unsharded, rtol=1e-13, atol=1e-15)
            # and the independent reference, element by element, with whole-tensor μ, ν
            a = g.abs()
            mu, nu = a.mean().item(), a.sub(a.mean()).pow(2).mean().sqrt().item()
            ref = [reference_friction(name, d, mu, nu) for d in (prev - g).flatten().tolist()]
            torch.testing.assert_close(xi.flatten(), torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=1e-14)
