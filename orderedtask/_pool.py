"""``Pool``: the ordered task pool, with backpressure, errors in place and a watermark."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Hashable, Iterable
from concurrent.futures import Executor
from time import monotonic
from types import TracebackType
from typing import Any

from . import _core
from ._adaptive import Tuner
from ._backends import make_backend
from ._options import (POOL_WINDOW, check_callable, check_max_workers, check_retries,
                       check_window, check_workers_or_adaptive, default_window)
from ._results import Results
from ._core import Task

WorkerFn = Callable[[dict[str, Any], Task], Any]


class Pool:
    """Runs ``fn(workerlocal, task)`` on ``workers`` threads; yields tasks in index order.

    ``fn`` writes ``task.output``; an ``Exception`` it raises is stored on ``task.error`` and
    the task is still yielded in its place. ``workerlocal`` is a dict private to one worker;
    ``worker_init(workerlocal)`` runs once per worker before its first task.
    At most ``window`` tasks are accepted and not yet consumed; ``enqueue`` blocks beyond that.
    ``window=None`` means 1,024, or with the GIL off and the GC on a window sized from the
    first GC threshold (README, "Choosing the window"). ``workers=None`` is adaptive: it
    starts with one thread (processes and others: ``max_workers`` of them) and, while
    ``results()`` is consumed, follows the measured throughput between 0 (the consumer runs
    tasks itself) and ``max_workers`` (default 64 threads, one per CPU for other backends).
    """

    def __init__(
        self,
        workers: int | None,
        fn: WorkerFn,
        *,
        window: int | None = None,
        worker_init: Callable[[dict[str, Any]], Any] | None = None,
        backend: str | Executor = "thread",
        key: Callable[[Task], Hashable] | None = None,
        retries: int = 0,
        retry_backoff: float = 0.0,
        max_workers: int | None = None,
    ) -> None:
        fixed = check_workers_or_adaptive(workers)
        check_callable("fn", fn)
        check_callable("worker_init", worker_init, optional=True)
        check_callable("key", key, optional=True)
        ceiling = check_max_workers(max_workers, backend, fixed)
        sizing = fixed if fixed is not None else (os.cpu_count() or 1)
        window = check_window(window, default_window(POOL_WINDOW, sizing))
        retries, retry_backoff = check_retries(retries, retry_backoff)
        runner = _core.Runner(_core.POOL, fn, retries, retry_backoff)
        self._backend = make_backend(backend, runner, worker_init, fixed or 1)
        self._engine = _core.Engine(window, _core.POOL, key=key,
                                    batch_seconds=self._backend.batch_seconds,
                                    on_terminate=self._backend.stopper())
        self._workers = fixed
        if type(self).enqueue is Pool.enqueue:
            # The engine's own method, one C call: the wrapper below would add a Python frame
            # per task to the hand-off (same arguments, same errors, same docstring's rules).
            self.enqueue = self._engine.put_task  # type: ignore[method-assign]
        # The finalizer reaches the engine only (and through it the backend's stopper), never
        # fn: a pool that fn refers to is still collected, and that terminates it.
        self._finalizer = weakref.finalize(self, self._engine.terminate_soon)
        self._tuner: Tuner | None = None
        self._fixed_threads: list[threading.Thread] = []
        if fixed is not None:
            self._fixed_threads = self._backend.start(self._engine, fixed, "orderedtask")
        else:  # at least one worker until someone consumes: tasks run before that too
            start = None if self._backend.start_at_ceiling else 1
            self._tuner = Tuner(self._engine, self._backend, "orderedtask", ceiling, start=start,
                                provisional=start is not None)
            self._tuner.start()

    @property
    def _threads(self) -> list[threading.Thread]:
        return self._fixed_threads if self._tuner is None else self._tuner.threads

    @property
    def workers(self) -> int | None:
        """The fixed number of workers, or None when adaptive (``stats()["level"]``)."""
        return self._workers

    @property
    def window(self) -> int:
        return int(self._engine.window)

    @property
    def watermark(self) -> int | None:
        """Highest index such that every accepted task at or below it has been yielded.

        ``None`` before the first task is yielded. A Kafka consumer commits ``watermark + 1``
        once it has handled the tasks ``results()`` gave it.
        """
        watermark: int | None = self._engine.watermark
        return watermark

    def enqueue(self, task: Task, timeout: float | None = None) -> None:
        """Accept ``task``; block while ``window`` tasks are accepted and not yet consumed.

        Raises ``TypeError``/``ValueError``/``OverflowError`` for a bad task or index (the
        pool is unchanged), ``TimeoutError`` when ``timeout`` seconds pass with the window
        full, ``PoolClosed`` after ``close()``, ``RuntimeError`` from a thread the wait would
        deadlock (the consumer's, or a worker's). Safe to call from several threads.
        """
        self._engine.put_task(task, timeout)

    def enqueue_many(self, tasks: Iterable[Task], timeout: float | None = None) -> int:
        """Enqueue each task in turn; return how many were accepted.

        A list or tuple is checked whole first (a task of the wrong type, or a bad index,
        raises before any is accepted), then accepted a window's room at a time under one
        lock round (much cheaper per task than ``enqueue``); pass lists of a few hundred
        tasks, since the list keeps every task (and its output) alive until this returns.
        Other iterables are consumed one task at a time, so a slow iterable never holds tasks
        back. A task the pool's state refuses (a duplicate index, one not above the last
        released, a closed pool) raises after the tasks before it were accepted.
        """
        if isinstance(tasks, (list, tuple)):
            accepted: int = self._engine.put_tasks(tasks, timeout)
            return accepted
        _core.as_timeout(timeout)  # a bad timeout raises even for an empty iterable
        put, count = self._engine.put_task, 0
        for task in tasks:
            put(task, timeout)
            count += 1
        return count

    def results(self) -> Results[Task]:
        """Yield finished tasks in ascending index order; one consumer at a time.

        Ends after ``close()`` once every accepted task has been yielded. Leaving the
        iteration early (``break``, ``close()``, an exception) terminates the pool. If ``fn``
        raised a ``BaseException`` that is not an ``Exception`` (``SystemExit``,
        ``KeyboardInterrupt``...), the tasks before it are yielded, then it is raised here and
        the pool is terminated. If the pool is terminated from elsewhere, ``PoolTerminated``
        is raised at the first task it can no longer yield.
        """
        cursor: Results[Task] = _core.Cursor(self._engine, _core.Cursor.POOL, helper=self._tuner)
        return cursor

    def aresults(self) -> AsyncIterator[Task]:
        """``results()`` for asyncio: ``async for task in pool.aresults()``.

        Never blocks the event loop. A cancelled ``__anext__`` (a timeout around it) loses
        nothing; ``aclose()`` or dropping the iterator before the end terminates the pool.
        """
        from ._aio import AsyncResults  # imports asyncio: only for those who use it

        if self._tuner is not None:
            self._tuner.forbid_inline()  # the loop's thread never runs fn
        return AsyncResults(_core.Cursor(self._engine, _core.Cursor.POOL, helper=self._tuner))

    def close(self) -> None:
        """Stop accepting tasks; those accepted still run and are yielded. Idempotent."""
        self._engine.close()

    def terminate(self) -> None:
        """Stop now: drop tasks not yet yielded and stop the workers, starting ones too.

        A consumer iterating ``results()`` gets ``PoolTerminated`` at the first dropped task.
        Idempotent.
        """
        self._engine.terminate()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker threads to exit (after ``close``/``terminate``); True if all did."""
        timeout = _core.as_timeout(timeout)
        if threading.current_thread() in self._threads:
            raise RuntimeError("a worker cannot join its own pool")
        deadline = None if timeout is None else monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def stats(self) -> dict[str, Any]:
        """A snapshot of the pool's counters (and, adaptive, the level and its decisions)."""
        stats: dict[str, Any] = self._engine.stats()
        if self._tuner is not None:
            stats.update(self._tuner.stats())
        return stats

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.terminate()
        self.join()

    def __repr__(self) -> str:
        state = "closed" if self._engine.closed else "open"
        return f"<orderedtask.Pool workers={self.workers} window={self.window} {state}>"
