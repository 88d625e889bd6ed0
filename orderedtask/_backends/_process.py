"""The process backend: one worker process per engine worker thread, batches over a pipe.

The worker thread sends a batch (one pickle per input), blocks with the GIL released on the
reply (one pickle per outcome) and hands it to the engine. A process that dies fails the batch
it held with ``WorkerDied`` and is replaced; one that had already died before the batch reached
it is replaced and the batch sent again. ``terminate`` kills every child, starting ones
included.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .._errors import WorkerDied
from ._base import STOP, TransportBackend, Undelivered, WorkerInit, check_picklable
from ._wire import PROTOCOL, Outcome, pack_inputs, portable_error, run_packed, unpack_outcomes

WHERE = "the worker process"
_READY = "ready"
_INIT_FAILED = "init-failed"


def _context() -> Any:
    # forkserver: no fork of a threaded parent (unsafe, and deprecated from 3.12).
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _child_main(conn: Connection, runner: Any, worker_init: WorkerInit | None) -> None:
    # Ctrl-C belongs to the parent, which stops the pool; children end when told or orphaned.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    workerlocal: dict[str, Any] = {}
    if worker_init is not None:
        try:
            worker_init(workerlocal)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            conn.send_bytes(pickle.dumps((_INIT_FAILED, portable_error(exc)), PROTOCOL))
            return
    conn.send_bytes(pickle.dumps((_READY, os.getpid()), PROTOCOL))
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not message:
            return  # the parent's "stop"
        indices, blobs = pickle.loads(message)  # ints and bytes: always unpickles
        conn.send_bytes(pickle.dumps(run_packed(runner, workerlocal, indices, blobs, WHERE),
                                     PROTOCOL))


class Children:
    """Every live child process of one backend, so that ``kill_all`` reaches them all.

    Holds no user object: the pool's finalizer keeps it.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.processes: set[Any] = set()
        self.stopped = False

    def add(self, process: Any) -> None:
        with self.lock:
            self.processes.add(process)
            stopped = self.stopped
        if stopped:
            process.kill()

    def discard(self, process: Any) -> None:
        with self.lock:
            self.processes.discard(process)

    def kill_all(self) -> None:
        with self.lock:
            self.stopped = True
            processes = list(self.processes)
        for process in processes:
            if process.is_alive():
                process.kill()


class _Child:
    """One child process and the parent's end of its pipe."""

    def __init__(self, backend: ProcessBackend) -> None:
        ctx = _context()
        self.children = backend.children
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(
            target=_child_main, args=(child_conn, backend.runner, backend.worker_init),
            name="orderedtask-process-worker", daemon=True)
        self.process.start()
        child_conn.close()
        self.children.add(self.process)  # from now on, terminate() reaches it
        try:
            kind, detail = pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError) as exc:
            self.close(kill=True)
            raise WorkerDied(f"worker process {self.process.pid} exited while starting (exit "
                             f"code {self.process.exitcode})") from exc
        if kind == _INIT_FAILED:
            self.close(kill=True)
            raise detail

    def call(self, indices: list[int], blobs: list[bytes | None]) -> list[bytes | None]:
        try:
            self.conn.send_bytes(pickle.dumps((indices, blobs), PROTOCOL))
        except (BrokenPipeError, ConnectionResetError, OSError) as exc:
            raise Undelivered(f"worker process {self.process.pid} had exited") from exc
        try:
            packed: list[bytes | None] = pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError) as exc:
            self.process.join(5)
            raise WorkerDied(
                f"worker process {self.process.pid} died (exit code {self.process.exitcode}) "
                f"while running a batch of {len(indices)} tasks") from exc
        return packed

    def close(self, kill: bool = False) -> None:
        if kill:
            if self.process.is_alive():
                self.process.kill()
        else:
            try:
                self.conn.send_bytes(b"")
            except (OSError, ValueError):
                pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.children.discard(self.process)
        self.conn.close()


class ProcessBackend(TransportBackend):
    """Runs ``fn`` in one worker process per worker; ``workerlocal`` is per process."""

    batch_seconds = 0.02  # a pipe round trip with pickling costs ~0.1-0.3 ms

    def __init__(self, runner: Any, worker_init: WorkerInit | None) -> None:
        check_picklable("fn", runner.fn)
        if worker_init is not None:
            check_picklable("worker_init", worker_init)
        super().__init__(runner, worker_init)
        self.children = Children()

    def stopper(self) -> Callable[[], None]:
        return self.children.kill_all

    def start_worker(self, worker: int) -> _Child:
        return _Child(self)

    def run_batch(self, state: _Child, batch: Any) -> list[Outcome]:
        indices = batch.indices
        blobs, failed = pack_inputs(indices, batch.inputs, WHERE)
        packed = state.call(indices, blobs) if len(failed) < len(blobs) else []
        return unpack_outcomes(indices, packed, failed, WHERE)

    def restart_worker(self, state: _Child) -> Any:
        state.close(kill=True)
        if self.children.stopped:
            return STOP
        return _Child(self)

    def stop_worker(self, state: _Child) -> None:
        state.close(kill=self.children.stopped)
