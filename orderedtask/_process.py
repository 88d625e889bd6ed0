"""The process backend: one worker process per engine worker thread, batches over a pipe.

The engine's worker thread sends a batch of ``(index, input)`` pairs, blocks (GIL released) on
the reply, and stores each ``(output, error)`` on its task. A process that dies fails the batch
it held with ``WorkerDied`` and is replaced; the other tasks are untouched.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
from multiprocessing.connection import Connection
from typing import Any

from ._backends import Retry, WorkerFn, WorkerInit, check_picklable, run_tasks
from ._errors import WorkerDied
from ._task import Task

_READY = "ready"
_INIT_FAILED = "init-failed"


def _context() -> Any:
    # forkserver: no fork of a threaded parent (unsafe, and deprecated from 3.12).
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _portable(error: BaseException | None) -> BaseException | None:
    """The error itself if it pickles, else a RuntimeError that describes it."""
    if error is None:
        return None
    try:
        pickle.dumps(error)
    except Exception:  # noqa: BLE001 - anything the pickler raises
        return RuntimeError(f"{type(error).__name__}: {error} (the exception could not be pickled)")
    return error


def _reply(results: list[tuple[Any, BaseException | None]], indices: list[int]) -> list[Any]:
    """Make every result picklable: one that is not becomes an error on its task."""
    portable: list[tuple[Any, BaseException | None]] = []
    for index, (output, error) in zip(indices, results):
        try:
            pickle.dumps(output)
        except Exception as exc:  # noqa: BLE001 - anything the pickler raises
            output, error = None, TypeError(
                f"the output of task {index} could not be pickled to return it from the "
                f"worker process: {exc}")
        portable.append((output, _portable(error)))
    return portable


def _child_main(conn: Connection, fn: WorkerFn, worker_init: WorkerInit | None,
                retry: Retry) -> None:
    # Ctrl-C belongs to the parent, which stops the pool; children end when told or orphaned.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    workerlocal: dict[str, Any] = {}
    if worker_init is not None:
        try:
            worker_init(workerlocal)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            conn.send((_INIT_FAILED, _portable(exc)))
            return
    conn.send((_READY, os.getpid()))
    while True:
        try:
            items = conn.recv()
        except (EOFError, OSError):
            return
        if items is None:
            return
        tasks = [Task(index, value) for index, value in items]
        run_tasks(fn, workerlocal, tasks, retry)
        results = [(task.output, task.error) for task in tasks]
        try:
            conn.send(results)
        except Exception:  # noqa: BLE001 - some result did not pickle: find and fail it
            conn.send(_reply(results, [task.index for task in tasks]))


class _Worker:
    """One child process and the parent's end of its pipe."""

    def __init__(self, backend: ProcessBackend) -> None:
        ctx = _context()
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(
            target=_child_main, args=(child_conn, backend.fn, backend.worker_init, backend.retry),
            name="orderedtask-process-worker", daemon=True)
        self.process.start()
        child_conn.close()
        try:
            kind, detail = self.conn.recv()
        except (EOFError, OSError) as exc:
            self.close()
            raise WorkerDied(
                f"worker process {self.process.pid} exited while starting "
                f"(exit code {self.process.exitcode})") from exc
        if kind == _INIT_FAILED:
            self.close()
            raise detail

    def run(self, batch: list[Task]) -> None:
        try:
            self.conn.send([(task.index, task.input) for task in batch])
        except (pickle.PicklingError, TypeError, AttributeError):
            self._run_picklable_part(batch)
            return
        results = self.conn.recv()  # EOFError/OSError: the process died
        for task, (output, error) in zip(batch, results):
            task.output = output
            task.error = error

    def _run_picklable_part(self, batch: list[Task]) -> None:
        sendable = []
        for task in batch:
            try:
                pickle.dumps(task.input)
            except Exception as exc:  # noqa: BLE001 - anything the pickler raises
                task.error = TypeError(
                    f"the input of task {task.index} could not be pickled to send it to a "
                    f"worker process: {exc}")
            else:
                sendable.append(task)
        if sendable:
            self.run(sendable)

    def close(self, kill: bool = False) -> None:
        if kill and self.process.is_alive():
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class ProcessBackend:
    """Runs ``fn`` in one worker process per worker; ``workerlocal`` is per process."""

    batch_seconds = 0.02  # a pipe round trip with pickling costs ~0.1-0.3 ms

    def __init__(self, fn: WorkerFn, worker_init: WorkerInit | None, retry: Retry) -> None:
        check_picklable("fn", fn)
        if worker_init is not None:
            check_picklable("worker_init", worker_init)
        self.fn = fn
        self.worker_init = worker_init
        self.retry = retry
        self.lock = threading.Lock()
        self.workers: set[_Worker] = set()
        self.stopped = False

    def start_worker(self) -> list[_Worker]:
        return [self._spawn()]

    def _spawn(self) -> _Worker:
        worker = _Worker(self)
        with self.lock:
            self.workers.add(worker)
            stopped = self.stopped
        if stopped:
            self._retire(worker, kill=True)
        return worker

    def run_batch(self, state: list[_Worker], batch: list[Task]) -> None:
        # state is a one-item list so that a replaced worker is seen by stop_worker.
        worker = state[0]
        try:
            worker.run(batch)
        except (EOFError, OSError) as exc:
            worker.process.join(5)
            died = WorkerDied(
                f"worker process {worker.process.pid} died (exit code "
                f"{worker.process.exitcode}) while running a batch of {len(batch)} tasks")
            died.__cause__ = exc
            for task in batch:
                task.error = died
            self._retire(worker, kill=True)
            if not self.stopped:
                state[0] = self._spawn()  # worker_init failing here fails the pool

    def stop_worker(self, state: list[_Worker]) -> None:
        self._retire(state[0], kill=self.stopped)

    def _retire(self, worker: _Worker, kill: bool) -> None:
        with self.lock:
            self.workers.discard(worker)
        worker.close(kill=kill)

    def shutdown(self) -> None:
        with self.lock:
            self.stopped = True
            workers = list(self.workers)
        for worker in workers:
            if worker.process.is_alive():
                worker.process.kill()
