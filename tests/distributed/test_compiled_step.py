"""``torch.compile`` of a whole training step (zero_grad, forward, backward, ``optimizer.step()``)
works with every implementation and matches the eager run.

Inductor (the default backend, which generates and compiles C++ here) costs many seconds per case,
so it runs the default CPU path (per-tensor) and the fused one on one worker process, while the
other checks every implementation with the ``aot_eager`` backend (Dynamo's capture, AOT autograd
and functionalization; no code generation) in parallel.
"""

from __future__ import annotations

import pytest
import torch

from dist_cases import IMPLEMENTATIONS, STEPS, assert_same_run, compile_task

OPTIONS = ["plain", "dfc3_wd_amsgrad_maximize"]
INDUCTOR_CASES = [("per_tensor", "plain")] + [
    (impl, "plain") for impl in IMPLEMENTATIONS if impl not in ("per_tensor", "foreach")
]
AOT_EAGER_CASES = [(impl, options) for impl in IMPLEMENTATIONS for options in OPTIONS]
# Float64; inductor may fuse and reorder the arithmetic (observed: a few 1e-17).
RTOL, ATOL = 1e-10, 1e-12


@pytest.fixture(scope="module")
def compiled_runs(pool):
    inductor, aot_eager = pool.map(
        compile_task, [(INDUCTOR_CASES, "inductor"), (AOT_EAGER_CASES, "aot_eager")], timeout=300
    )
    return {"inductor": inductor, "aot_eager": aot_eager}


@pytest.mark.parametrize(
    "backend, impl, options",
    [("inductor", *c) for c in INDUCTOR_CASES] + [("aot_eager", *c) for c in AOT_EAGER_CASES],
)
def test_compiled_training_step_matches_eager(compiled_runs, backend: str, impl: str, options: str) -> None:
    result = compiled_runs[backend][(impl, options)]
    assert not isinstance(result, str), result
    kind = f"torch.compile ({backend}) vs eager"
    assert_same_run(result["compiled"], result["eager"], kind=kind, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(result["compiled"]["losses"], result["eager"]["losses"], rtol=RTOL, atol=ATOL)
    # Compiled in the first step, then reused: no recompilation as the step count grows. (Dynamo
    # would otherwise recompile up to its limit of 8 and then run the frame eagerly, silently.)
    assert not result["recompile_limit_hit"], "Dynamo hit its recompile limit"
    graphs = result["unique_graphs_per_step"]
    assert len(graphs) == STEPS and graphs[-1] == graphs[0], f"graphs after each step: {graphs}"
