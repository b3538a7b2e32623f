"""Fixtures for the multi-process tests: one pool of 2 gloo ranks (loopback) for the whole session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# The worker processes import the task functions from these modules by name.
sys.path.insert(0, str(Path(__file__).parent))

from dist_launcher import WorkerPool


@pytest.fixture(scope="session")
def pool():
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("this torch build has no torch.distributed with the gloo backend")
    workers = WorkerPool(world_size=2)
    yield workers
    workers.close()


def pytest_terminal_summary(terminalreporter) -> None:
    import dist_cases

    if not dist_cases.MAX_DIFFS:
        return
    terminalreporter.section("distributed: largest absolute differences observed")
    for kind, (worst, rtol, atol) in sorted(dist_cases.MAX_DIFFS.items()):
        terminalreporter.write_line(f"{kind:<58} max |diff| {worst:9.2e}   (rtol {rtol:.0e}, atol {atol:.0e})")


@pytest.fixture(scope="module")
def per_impl():
    """``get(key, run)``: ``run()`` once per key and module (a pool task), its result or its
    error cached, so a slow or failing implementation costs one task, not one per test."""
    cache: dict = {}

    def get(key, run):
        if key not in cache:
            try:
                cache[key] = (True, run())
            except Exception as error:  # noqa: BLE001 - re-raised in every test that needs it
                cache[key] = (False, error)
        ok, value = cache[key]
        if not ok:
            raise value
        return value

    return get
