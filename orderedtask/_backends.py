"""Where a batch of tasks runs: worker threads, worker processes, or any Executor.

The engine owns one thread per worker; a backend tells that thread how to run a batch.
``start_worker`` runs once per worker thread (it raises if ``worker_init`` fails),
``run_batch`` sets ``output``/``error`` on every task of the batch and never raises for a
task's own failure, ``stop_worker`` ends the worker, ``shutdown`` stops everything now.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol

from ._task import Task

WorkerFn = Callable[[dict[str, Any], Task], Any]
WorkerInit = Callable[[dict[str, Any]], Any]


class Backend(Protocol):
    def start_worker(self) -> Any: ...
    def run_batch(self, state: Any, batch: list[Task]) -> None: ...
    def stop_worker(self, state: Any) -> None: ...
    def shutdown(self) -> None: ...


def run_tasks(fn: WorkerFn, workerlocal: dict[str, Any], batch: list[Task]) -> None:
    """Run ``fn`` on each task, storing what it raises on the task."""
    for task in batch:
        try:
            fn(workerlocal, task)
        except BaseException as exc:  # noqa: BLE001 - the consumer re-raises non-Exceptions
            task.error = exc


class ThreadBackend:
    """Runs ``fn`` on the engine's own worker threads; ``workerlocal`` is per thread."""

    def __init__(self, fn: WorkerFn, worker_init: WorkerInit | None) -> None:
        self.fn = fn
        self.worker_init = worker_init

    def start_worker(self) -> dict[str, Any]:
        workerlocal: dict[str, Any] = {}
        if self.worker_init is not None:
            self.worker_init(workerlocal)
        return workerlocal

    def run_batch(self, state: dict[str, Any], batch: list[Task]) -> None:
        run_tasks(self.fn, state, batch)

    def stop_worker(self, state: dict[str, Any]) -> None:
        pass

    def shutdown(self) -> None:
        pass


# -- any concurrent.futures.Executor (ProcessPoolExecutor, dask.distributed's ClientExecutor) --

_local = threading.local()  # per executor-worker thread (and process): pool token -> workerlocal


def run_on_executor(
    token: str, fn: WorkerFn, worker_init: WorkerInit | None, items: list[tuple[int, Any]]
) -> list[tuple[Any, BaseException | None]]:
    """Runs inside the executor: one batch, with a ``workerlocal`` kept per worker and pool."""
    workerlocals = getattr(_local, "workerlocals", None)
    if workerlocals is None:
        workerlocals = _local.workerlocals = {}
    workerlocal = workerlocals.get(token)
    if workerlocal is None:
        workerlocal = {}
        if worker_init is not None:
            worker_init(workerlocal)
        workerlocals[token] = workerlocal
    tasks = [Task(index, value) for index, value in items]
    run_tasks(fn, workerlocal, tasks)
    return [(task.output, task.error) for task in tasks]


class ExecutorBackend:
    """Submits each batch to an Executor; ``workers`` batches are in flight at most."""

    def __init__(self, executor: Executor, fn: WorkerFn, worker_init: WorkerInit | None) -> None:
        self.executor = executor
        self.fn = fn
        self.worker_init = worker_init
        self.token = f"orderedtask-{id(self):x}-{threading.get_ident():x}"

    def start_worker(self) -> None:
        return None

    def run_batch(self, state: None, batch: list[Task]) -> None:
        items = [(task.index, task.input) for task in batch]
        try:
            future = self.executor.submit(run_on_executor, self.token, self.fn,
                                          self.worker_init, items)
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
    backend: object, fn: WorkerFn, worker_init: WorkerInit | None, workers: int
) -> Backend:
    if backend == "thread":
        return ThreadBackend(fn, worker_init)
    if backend == "process":
        from ._process import ProcessBackend

        return ProcessBackend(fn, worker_init)
    if isinstance(backend, Executor):
        return ExecutorBackend(backend, fn, worker_init)
    message = f"backend must be 'thread', 'process' or a concurrent.futures.Executor, not {backend!r}"
    raise (ValueError if isinstance(backend, str) else TypeError)(message)
