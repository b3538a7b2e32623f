"""A small pool of gloo worker processes on the loopback interface, started once per test session.

Importing torch takes seconds here, so the ranks are spawned once and then run one task after
another. Each task gets the environment a ``torchrun`` worker sees (MASTER_ADDR, MASTER_PORT, RANK,
WORLD_SIZE, LOCAL_RANK, and TORCHELASTIC_USE_AGENT_STORE): as under torchrun, the rendezvous store
(a TCPStore on a free port, new for every task) lives in the launching process, not in rank 0, so
a rank that finishes and tears its process group down early cannot strand the others. A task may
therefore also be a script that calls ``dist.init_process_group()`` itself (the docs snippets). A task is a
module-level function (it is pickled by reference); what it returns travels back through
``torch.save``. Errors come back with every rank's traceback; a task that hangs (for example one
rank died inside a collective) is killed after ``timeout`` seconds and the pool restarts for the
next task.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.multiprocessing as mp

__all__ = ["WorkerError", "WorkerPool"]

STARTUP_TIMEOUT_S = 120.0
TASK_TIMEOUT_S = 90.0
COLLECTIVE_TIMEOUT_S = 60.0
ERROR_GRACE_S = 10.0


class WorkerError(RuntimeError):
    """A task failed on one or more ranks; ``tracebacks`` maps rank to its formatted traceback."""

    def __init__(self, message: str, tracebacks: dict[int, str] | None = None) -> None:
        self.tracebacks = tracebacks or {}
        details = "".join(f"\n--- rank {rank} ---\n{tb}" for rank, tb in sorted(self.tracebacks.items()))
        super().__init__(message + details)


def _dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _loads(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=False)


def _worker_main(rank: int, tasks: Any, results: Any, threads: int) -> None:
    import torch.distributed as dist

    torch.set_num_threads(threads)
    results.put((None, rank, "ready", None))
    while True:
        task = tasks.get()
        if task is None:
            return
        task_id, fn, args, port, world_size, init_process_group, cwd = task
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(world_size),
            TORCHELASTIC_USE_AGENT_STORE="True",  # the store is the launcher's, as with torchrun
            TORCHELASTIC_RESTART_COUNT="0",
        )
        old_cwd = os.getcwd()
        try:
            if cwd is not None:
                os.chdir(cwd)
            if init_process_group:
                dist.init_process_group(
                    "gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S)
                )
            out = fn(*args)
            results.put((task_id, rank, "ok", _dumps(out)))
        except BaseException:  # noqa: BLE001 - everything goes back to the parent
            results.put((task_id, rank, "error", traceback.format_exc()))
        finally:
            os.chdir(old_cwd)
            if dist.is_available() and dist.is_initialized():
                with contextlib.suppress(Exception):
                    dist.destroy_process_group()


class WorkerPool:
    """``world_size`` long-lived worker processes; :meth:`run` executes a task on the first ranks."""

    def __init__(self, world_size: int = 2, threads_per_rank: int = 1) -> None:
        self.world_size = world_size
        self.threads_per_rank = threads_per_rank
        self._procs: list[Any] = []
        self._task_id = 0

    # -- life cycle ---------------------------------------------------------------------------
    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self._results = ctx.Queue()
        self._tasks = [ctx.Queue() for _ in range(self.world_size)]
        self._procs = [
            ctx.Process(
                target=_worker_main,
                args=(rank, self._tasks[rank], self._results, self.threads_per_rank),
                name=f"diffgrad-test-rank{rank}",
                daemon=True,
            )
            for rank in range(self.world_size)
        ]
        for p in self._procs:
            p.start()
        ready: set[int] = set()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while len(ready) < self.world_size:
            self._check_alive("while starting up")
            try:
                _, rank, kind, _ = self._results.get(timeout=0.5)
            except queue.Empty:
                if time.monotonic() > deadline:
                    self.close()
                    raise WorkerError(
                        f"worker processes did not start within {STARTUP_TIMEOUT_S:.0f} s "
                        f"(ready: {sorted(ready)} of {self.world_size})"
                    ) from None
                continue
            if kind == "ready":
                ready.add(rank)

    def _check_alive(self, when: str) -> None:
        dead = [(i, p.exitcode) for i, p in enumerate(self._procs) if not p.is_alive()]
        if dead:
            self.close()
            raise WorkerError(
                f"worker process(es) died {when}: "
                + ", ".join(f"rank {rank} exit code {code}" for rank, code in dead)
                + " (a crash in torch/gloo, or killed for memory)"
            )

    def close(self) -> None:
        for i, p in enumerate(self._procs):
            if p.is_alive():
                with contextlib.suppress(Exception):
                    self._tasks[i].put(None)
        for p in self._procs:
            p.join(timeout=1)  # a worker's interpreter shutdown can take seconds: no need to wait
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        self._procs = []

    # -- tasks --------------------------------------------------------------------------------
    def run(
        self,
        fn: Callable[..., Any],
        *args: Any,
        world_size: int | None = None,
        init_process_group: bool = True,
        cwd: str | None = None,
        timeout: float = TASK_TIMEOUT_S,
    ) -> list[Any]:
        """Run ``fn(*args)`` on ranks 0 … world_size−1 together; return their results by rank.

        With ``init_process_group`` the default gloo group exists while ``fn`` runs; without it the
        environment is still set, for code that initialises the group itself.
        """
        world_size = self.world_size if world_size is None else world_size
        if not 1 <= world_size <= self.world_size:
            raise ValueError(f"world_size {world_size} not in 1..{self.world_size}")
        return self._submit(fn, [args] * world_size, init_process_group, cwd, timeout, collective=True)

    def map(self, fn: Callable[..., Any], args_per_rank: list[tuple], timeout: float = TASK_TIMEOUT_S) -> list[Any]:
        """Independent single-process jobs in parallel: rank i runs ``fn(*args_per_rank[i])``
        with no process group."""
        if not 1 <= len(args_per_rank) <= self.world_size:
            raise ValueError(f"{len(args_per_rank)} jobs for {self.world_size} ranks")
        return self._submit(fn, args_per_rank, False, None, timeout, collective=False)

    def _submit(
        self,
        fn: Callable[..., Any],
        args_per_rank: list[tuple],
        init_process_group: bool,
        cwd: str | None,
        timeout: float,
        *,
        collective: bool,
    ) -> list[Any]:
        world_size = len(args_per_rank)
        if not self._procs:
            self._start()
        self._check_alive("between tasks")
        self._task_id += 1
        task_id = self._task_id
        from torch.distributed import TCPStore

        # The rendezvous store of this task, held here until every rank has answered.
        store = TCPStore(
            "127.0.0.1",
            0,
            world_size,
            is_master=True,
            wait_for_workers=False,
            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S),
        )
        try:
            for rank, args in enumerate(args_per_rank):
                self._tasks[rank].put((task_id, fn, args, store.port, world_size, init_process_group, cwd))
            return self._collect(task_id, fn, world_size, timeout, collective)
        finally:
            del store

    def _collect(
        self, task_id: int, fn: Callable[..., Any], world_size: int, timeout: float, collective: bool
    ) -> list[Any]:
        outputs: dict[int, Any] = {}
        errors: dict[int, str] = {}
        deadline = time.monotonic() + timeout
        while len(outputs) + len(errors) < world_size:
            try:
                got_id, rank, kind, payload = self._results.get(timeout=0.5)
            except queue.Empty:
                self._check_alive(f"during {fn.__name__}")
                if time.monotonic() > deadline:
                    self.close()
                    raise WorkerError(
                        f"{fn.__name__} did not finish on rank(s) "
                        f"{sorted(set(range(world_size)) - set(outputs) - set(errors))} within {timeout:.0f} s"
                        + (f", or {ERROR_GRACE_S:.0f} s after rank(s) {sorted(errors)} failed" if errors else "")
                        + " (a hang, typically in a collective whose peer is gone); the pool was restarted",
                        errors,
                    ) from None
                continue
            if got_id != task_id:
                continue  # a late message from a task that timed out before the restart
            if kind == "ok":
                outputs[rank] = _loads(payload)
            else:
                errors[rank] = payload
                if collective:
                    # The other ranks may now wait in a collective forever: give them a short grace.
                    deadline = min(deadline, time.monotonic() + ERROR_GRACE_S)
        if errors:
            raise WorkerError(f"{fn.__name__} failed on rank(s) {sorted(errors)}", errors)
        return [outputs[rank] for rank in range(world_size)]
