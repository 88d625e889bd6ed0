"""Where a batch of tasks runs: worker threads, worker processes, or any Executor.

The engine owns one thread per worker; a backend tells that thread how to run a batch.
``start_worker`` runs once per worker thread (it raises if ``worker_init`` fails),
``run_batch`` sets ``output``/``error`` on every task of the batch and never raises for a
task's own failure, ``stop_worker`` ends the worker, ``shutdown`` stops everything now.
"""

from __future__ import annotations

import pickle
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol

from ._task import Task

WorkerFn = Callable[[dict[str, Any], Task], Any]
WorkerInit = Callable[[dict[str, Any]], Any]


class Backend(Protocol):
    # Work a batch should hold so that hand-off stays a small part of it (seconds).
    batch_seconds: float

    def start_worker(self) -> Any: ...
    def run_batch(self, state: Any, batch: list[Task]) -> None: ...
    def stop_worker(self, state: Any) -> None: ...
    def shutdown(self) -> None: ...


Retry = tuple[int, float]  # (retries, seconds of back-off between attempts)
NO_RETRY: Retry = (0, 0.0)


def check_retries(retries: object, backoff: object) -> Retry:
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError(f"retries must be an int, not {type(retries).__name__}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)):
        raise TypeError(f"retry_backoff must be a number of seconds, not {type(backoff).__name__}")
    if not backoff >= 0:
        raise ValueError(f"retry_backoff must be >= 0 seconds, got {backoff}")
    return retries, float(backoff)


def run_tasks(fn: WorkerFn, workerlocal: dict[str, Any], batch: list[Task],
              retry: Retry = NO_RETRY) -> None:
    """Run ``fn`` on each task, storing what it raises on the task; retry ``Exception``s."""
    retries, backoff = retry
    for task in batch:
        attempt = 0
        while True:
            try:
                fn(workerlocal, task)
            except Exception as exc:
                if attempt < retries:
                    attempt += 1
                    task.output = None
                    if backoff:
                        time.sleep(backoff)
                    continue
                task.error = exc
            except BaseException as exc:  # noqa: BLE001 - the consumer re-raises it in place
                task.error = exc
            break


class Retrying:
    """``fn(item)`` retried on ``Exception`` (for map); picklable for the process backend."""

    __slots__ = ("fn", "retries", "backoff")

    def __init__(self, fn: Callable[[Any], Any], retry: Retry) -> None:
        self.fn = fn
        self.retries, self.backoff = retry

    def __call__(self, item: Any) -> Any:
        attempt = 0
        while True:
            try:
                return self.fn(item)
            except Exception:
                if attempt >= self.retries:
                    raise
                attempt += 1
                if self.backoff:
                    time.sleep(self.backoff)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Retrying, (self.fn, (self.retries, self.backoff)))


class ThreadBackend:
    """Runs ``fn`` on the engine's own worker threads; ``workerlocal`` is per thread."""

    batch_seconds = 0.002

    def __init__(self, fn: WorkerFn, worker_init: WorkerInit | None, retry: Retry) -> None:
        self.fn = fn
        self.worker_init = worker_init
        self.retry = retry

    def start_worker(self) -> dict[str, Any]:
        workerlocal: dict[str, Any] = {}
        if self.worker_init is not None:
            self.worker_init(workerlocal)
        return workerlocal

    def run_batch(self, state: dict[str, Any], batch: list[Task]) -> None:
        run_tasks(self.fn, state, batch, self.retry)

    def stop_worker(self, state: dict[str, Any]) -> None:
        pass

    def shutdown(self) -> None:
        pass


# -- any concurrent.futures.Executor (ProcessPoolExecutor, dask.distributed's ClientExecutor) --

_local = threading.local()  # per executor-worker thread (and process): pool token -> workerlocal

# An executor outlives its pools and cannot be told that one ended, so each executor thread keeps
# the workerlocals of its most recently used pools only; a pool pushed out re-runs worker_init.
WORKERLOCALS_PER_THREAD = 32


def run_on_executor(
    token: str, fn: WorkerFn, worker_init: WorkerInit | None, retry: Retry,
    items: list[tuple[int, Any]],
) -> list[tuple[Any, BaseException | None]]:
    """Runs inside the executor: one batch, with a ``workerlocal`` kept per worker and pool."""
    workerlocals: OrderedDict[str, dict[str, Any]] | None = getattr(_local, "workerlocals", None)
    if workerlocals is None:
        workerlocals = _local.workerlocals = OrderedDict()
    workerlocal = workerlocals.get(token)
    if workerlocal is None:
        workerlocal = {}
        if worker_init is not None:
            worker_init(workerlocal)
        workerlocals[token] = workerlocal
        if len(workerlocals) > WORKERLOCALS_PER_THREAD:
            workerlocals.popitem(last=False)
    else:
        workerlocals.move_to_end(token)
    tasks = [Task(index, value) for index, value in items]
    run_tasks(fn, workerlocal, tasks, retry)
    return [(task.output, task.error) for task in tasks]


class ExecutorBackend:
    """Submits each batch to an Executor; ``workers`` batches are in flight at most."""

    batch_seconds = 0.05  # a submit round trip costs ~1 ms on dask

    def __init__(self, executor: Executor, fn: WorkerFn, worker_init: WorkerInit | None,
                 retry: Retry) -> None:
        self.executor = executor
        self.fn = fn
        self.worker_init = worker_init
        self.retry = retry
        # Unique across pools, processes and clients: an id() is reused once a pool is freed, and
        # a new pool must never find an old pool's workerlocal (its worker_init would not run).
        self.token = f"orderedtask-{uuid.uuid4().hex}"

    def start_worker(self) -> None:
        return None

    def run_batch(self, state: None, batch: list[Task]) -> None:
        items = [(task.index, task.input) for task in batch]
        try:
            future = self.executor.submit(run_on_executor, self.token, self.fn,
                                          self.worker_init, self.retry, items)
            results = future.result()
        except Exception as exc:  # noqa: BLE001 - the executor failed this batch: fail its tasks
            for task in batch:
                task.error = exc
            return
        for task, (output, error) in zip(batch, results):
            task.output = output
            task.error = error

    def stop_worker(self, state: None) -> None:
        pass

    def shutdown(self) -> None:
        pass


def check_picklable(what: str, obj: object) -> None:
    try:
        pickle.dumps(obj)
    except Exception as exc:
        raise TypeError(f"{what} cannot be pickled for the process backend: {exc}") from exc


def make_backend(
    backend: object, fn: WorkerFn, worker_init: WorkerInit | None, retry: Retry = NO_RETRY
) -> Backend:
    if backend == "thread":
        return ThreadBackend(fn, worker_init, retry)
    if backend == "process":
        from ._process import ProcessBackend

        return ProcessBackend(fn, worker_init, retry)
    if isinstance(backend, Executor):
        return ExecutorBackend(backend, fn, worker_init, retry)
    message = f"backend must be 'thread', 'process' or a concurrent.futures.Executor, not {backend!r}"
    raise (ValueError if isinstance(backend, str) else TypeError)(message)
