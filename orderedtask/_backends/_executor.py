"""Any ``concurrent.futures.Executor`` (ProcessPoolExecutor, dask.distributed's ClientExecutor).

Each batch is one ``submit``; at most ``workers`` batches are in flight. For executors that
run elsewhere, items and outcomes cross one pickle each (``_wire``), so one that cannot cross
fails alone; a plain ``ThreadPoolExecutor`` gets them as they are.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from ._base import TransportBackend, WorkerInit
from ._wire import Outcome, pack_inputs, run_packed, unpack_outcomes

_local = threading.local()  # per executor-worker thread (and process): pool token -> workerlocal

# An executor outlives its pools and cannot be told that one ended, so each executor thread keeps
# the workerlocals of its most recently used pools only; a pool pushed out re-runs worker_init.
WORKERLOCALS_PER_THREAD = 32
WHERE = "the executor's worker"


def _workerlocal(token: str, worker_init: WorkerInit | None) -> dict[str, Any]:
    workerlocals: OrderedDict[str, dict[str, Any]] | None = getattr(_local, "workerlocals", None)
    if workerlocals is None:
        workerlocals = _local.workerlocals = OrderedDict()
    workerlocal = workerlocals.get(token)
    if workerlocal is None:
        workerlocal = {}
        if worker_init is not None:
            worker_init(workerlocal)  # raises: the whole batch fails with that error
        workerlocals[token] = workerlocal
        if len(workerlocals) > WORKERLOCALS_PER_THREAD:
            workerlocals.popitem(last=False)
    else:
        workerlocals.move_to_end(token)
    return workerlocal


def run_on_executor(token: str, runner: Any, worker_init: WorkerInit | None,
                    indices: list[int], inputs: list[Any]) -> list[Outcome]:
    """Runs inside an in-process executor: one batch, with a workerlocal per thread and pool."""
    outcomes: list[Outcome] = runner.run(_workerlocal(token, worker_init), indices, inputs)
    return outcomes


def run_packed_on_executor(token: str, runner: Any, worker_init: WorkerInit | None,
                           indices: list[int], blobs: list[bytes | None]) -> list[bytes | None]:
    """Runs inside an executor elsewhere: items and outcomes one pickle each."""
    return run_packed(runner, _workerlocal(token, worker_init), indices, blobs, WHERE)


class ExecutorBackend(TransportBackend):
    """Submits each batch to an Executor; its workers run them."""

    batch_seconds = 0.05  # a submit round trip costs ~1 ms on dask

    def __init__(self, executor: Executor, runner: Any, worker_init: WorkerInit | None) -> None:
        super().__init__(runner, worker_init)
        self.executor = executor
        self.in_process = type(executor) is ThreadPoolExecutor
        # Unique across pools, processes and clients: an id() is reused once a pool is freed, and
        # a new pool must never find an old pool's workerlocal (its worker_init would not run).
        self.token = f"orderedtask-{uuid.uuid4().hex}"

    def run_batch(self, state: None, batch: Any) -> list[Outcome]:
        indices, inputs = batch.indices, batch.inputs
        if self.in_process:
            outcomes: list[Outcome] = self.executor.submit(
                run_on_executor, self.token, self.runner, self.worker_init, indices,
                inputs).result()
            return outcomes
        blobs, failed = pack_inputs(indices, inputs, WHERE)
        packed = self.executor.submit(run_packed_on_executor, self.token, self.runner,
                                      self.worker_init, indices, blobs).result()
        return unpack_outcomes(indices, packed, failed, WHERE)
