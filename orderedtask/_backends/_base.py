"""The backend family's base: worker threads that reach their backend only by weak reference.

A worker thread holds the engine (mechanism only: no user function) and a weak reference to
its backend, which holds the user's ``fn``. So a pool whose ``fn`` refers back to the pool (a
bound method of the pool's owner, a closure) is still collected once unreachable: its
finalizer terminates the engine and the threads exit.
"""

from __future__ import annotations

import pickle
import threading
import weakref
from collections.abc import Callable
from time import perf_counter
from typing import Any

from .._errors import WorkerDied

WorkerInit = Callable[[dict[str, Any]], Any]


def check_picklable(what: str, obj: object, where: str = "the process backend") -> None:
    """``TypeError`` now, rather than an error per task later."""
    try:
        pickle.dumps(obj)
    except Exception as exc:  # noqa: BLE001 - anything the pickler raises
        raise TypeError(f"{what} cannot be pickled for {where}: {exc}") from exc


class Backend:
    """Where a batch runs. One per pool; ``start`` launches the engine's worker threads.

    ``runner`` (a ``_core.Runner``) runs each item; ``worker_init(workerlocal)`` runs once
    per worker before its first item. ``batch_seconds``: how much work a batch should hold so
    that the hand-off stays a small part of it.
    """

    batch_seconds = 0.002

    #: The fewest workers an adaptive pool runs: 0 where the consumer can run a batch itself.
    min_level = 1
    #: Where an adaptive pool starts: at its ceiling (a process or an interpreter is slow to
    #: start and is worth a CPU: climbing to them one by one costs more than stepping down).
    start_at_ceiling = True

    def __init__(self, runner: Any, worker_init: WorkerInit | None) -> None:
        self.runner = runner
        self.worker_init = worker_init
        self._started = 0

    @staticmethod
    def worker_main(engine: Any, backend_ref: Callable[[], Backend | None]) -> None:
        raise NotImplementedError

    def start(self, engine: Any, workers: int, name: str) -> list[threading.Thread]:
        """Start ``workers`` more worker threads (each ranks itself with ``worker_enter``)."""
        ref = weakref.ref(self)
        threads = [threading.Thread(target=type(self).worker_main, args=(engine, ref),
                                    name=f"{name}-worker-{self._started + i}", daemon=True)
                   for i in range(workers)]
        self._started += workers
        for thread in threads:
            thread.start()
        return threads

    def inline_context(self) -> tuple[Any, dict[str, Any]]:
        """The runner and workerlocal for the consumer running a batch itself (level 0)."""
        raise RuntimeError(f"{type(self).__name__} runs no batch in the consumer")

    def stopper(self) -> Callable[[], None] | None:
        """What stops this backend's workers now (terminate, finalizer), or None.

        It must not reach the user's function: the finalizer that holds it must not keep the
        pool alive.
        """
        return None


#: ``restart_worker``'s answer when the backend is stopping: the worker thread ends.
STOP: Any = object()


class Undelivered(Exception):
    """``run_batch``: the batch never reached the worker (it had already exited).

    The worker is restarted and the batch sent again, once.
    """


class TransportBackend(Backend):
    """A backend that carries each batch somewhere else: a process, an Executor, an interpreter.

    ``start_worker(worker)`` prepares a worker (raises if that fails: the pool then closes);
    ``run_batch(state, batch)`` returns one ``(output, error)`` per item and raises only when
    the batch failed as a whole (``WorkerDied`` and ``Undelivered`` ask for
    ``restart_worker``); ``stop_worker(state)`` ends a worker.
    """

    def start_worker(self, worker: int) -> Any:
        return None

    def run_batch(self, state: Any, batch: Any) -> list[tuple[Any, BaseException | None]]:
        raise NotImplementedError

    def restart_worker(self, state: Any) -> Any:
        """A fresh worker after one died; ``STOP`` when the backend is stopping."""
        return state

    def stop_worker(self, state: Any) -> None:
        pass

    @staticmethod
    def worker_main(engine: Any, backend_ref: Callable[[], Backend | None]) -> None:
        worker = engine.worker_enter()
        state = STOP
        try:
            backend = backend_ref()
            if not isinstance(backend, TransportBackend):
                return
            try:
                state = backend.start_worker(worker)
            except BaseException as exc:  # noqa: BLE001 - fails every task no worker took
                engine.fail_init(exc)
                return
            del backend
            while state is not STOP:
                batch = engine.take(worker)
                if batch is None:
                    return
                backend = backend_ref()
                if not isinstance(backend, TransportBackend):
                    engine.terminate()  # the pool was garbage-collected: nobody will consume
                    engine.fail(batch, RuntimeError("the pool was garbage-collected"))
                    return
                state = _run_batch(engine, backend, state, batch)
                del backend
        finally:
            try:
                backend = backend_ref()
                if state is not STOP and isinstance(backend, TransportBackend):
                    backend.stop_worker(state)
            finally:
                engine.worker_exit()


def _run_batch(engine: Any, backend: TransportBackend, state: Any, batch: Any) -> Any:
    """Run one batch; every path finishes it. Returns the worker's state (``STOP``: end)."""
    resent = False
    while True:
        started = perf_counter()
        failure: BaseException | None
        try:
            outcomes = backend.run_batch(state, batch)
        except Undelivered as exc:  # it never ran: send it once more, to a fresh worker
            failure = WorkerDied(f"the batch could not reach a worker: {exc}") if resent else None
        except WorkerDied as exc:
            failure = exc
        except BaseException as exc:  # noqa: BLE001 - the batch failed as a whole
            engine.fail(batch, exc)
            return state
        else:
            engine.finish(batch, outcomes, perf_counter() - started)
            return state
        if failure is not None:
            engine.fail(batch, failure)
        try:
            state = backend.restart_worker(state)
        except BaseException as error:  # noqa: BLE001 - the replacement failed to start
            if failure is None:
                engine.fail(batch, WorkerDied(f"no worker could start to run the batch: {error!r}"))
            engine.fail_init(error)
            return STOP
        if failure is not None:
            return state
        if state is STOP:
            engine.fail(batch, WorkerDied("the pool stopped before the batch reached a worker"))
            return STOP
        resent = True
