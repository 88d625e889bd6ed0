"""``Pool``: the seed's ordered task pool, with backpressure, errors in place and a watermark."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Callable, Generator, Hashable, Iterable
from concurrent.futures import Executor
from contextlib import closing
from types import TracebackType
from typing import Any

from ._backends import check_retries, make_backend
from ._engine import Engine, check_callable, check_window, check_workers, default_window
from ._task import Task

#: Default window: tasks accepted but not yet consumed. Measured (benchmarks/window.py, README
#: "Choosing the window"): 256-1,024 is fastest on small tasks, and enough to keep 12+
#: workers busy on 1 ms tasks; larger windows only hold more results in memory. With the GIL
#: off and the GC on, it follows the GC threshold (``_engine.default_window``).
DEFAULT_WINDOW = 1024

WorkerFn = Callable[[dict[str, Any], Task], Any]


def _raise_fatal(engine: Engine, task: Task) -> None:
    error = task.error
    if error is not None and not isinstance(error, Exception):
        engine.terminate()
        raise error


class Pool:
    """Runs ``fn(workerlocal, task)`` on ``workers`` threads; yields tasks in index order.

    ``fn`` writes ``task.output``; an ``Exception`` it raises is stored on ``task.error`` and
    the task is still yielded in its place. ``workerlocal`` is a dict private to one worker
    thread; ``worker_init(workerlocal)`` runs once per worker before its first task.
    At most ``window`` tasks are accepted and not yet consumed; ``enqueue`` blocks beyond that.
    ``window=None`` means 1,024, or with the GIL off and the GC on a window sized from the
    first GC threshold (README, "Choosing the window").
    """

    def __init__(
        self,
        workers: int,
        fn: WorkerFn,
        *,
        window: int | None = None,
        worker_init: Callable[[dict[str, Any]], Any] | None = None,
        backend: str | Executor = "thread",
        key: Callable[[Task], Hashable] | None = None,
        retries: int = 0,
        retry_backoff: float = 0.0,
    ) -> None:
        check_workers(workers)
        check_callable("fn", fn)
        check_callable("worker_init", worker_init, optional=True)
        check_callable("key", key, optional=True)
        window = check_window(window, default_window(DEFAULT_WINDOW, workers))
        retry = check_retries(retries, retry_backoff)
        self._engine = Engine(
            workers, make_backend(backend, fn, worker_init, retry), window, "orderedtask",
            key=key,
        )
        # Workers reference the engine only, so an unreachable pool is collected and stops them.
        self._finalizer = weakref.finalize(self, self._engine.terminate)

    @property
    def workers(self) -> int:
        return self._engine.workers

    @property
    def window(self) -> int:
        return self._engine.window

    @property
    def watermark(self) -> int | None:
        """Highest index such that every accepted task at or below it has been yielded.

        ``None`` before the first task is yielded. A Kafka consumer commits ``watermark + 1``
        once it has handled the tasks ``results()`` gave it.
        """
        return self._engine.watermark

    def enqueue(self, task: Task, timeout: float | None = None) -> None:
        """Accept ``task``; block while ``window`` tasks are accepted and not yet consumed.

        Raises ``TypeError``/``ValueError``/``OverflowError`` for a bad index (the pool is
        unchanged), ``TimeoutError`` when ``timeout`` seconds pass with the window full,
        ``PoolClosed`` after ``close()``. Safe to call from several threads.
        """
        if type(task) is not Task and not isinstance(task, Task):
            raise TypeError(f"enqueue() takes an orderedtask.Task, not {type(task).__name__}")
        self._engine.put(task, 1, timeout)

    def enqueue_many(self, tasks: Iterable[Task], timeout: float | None = None) -> int:
        """Enqueue each task in turn; return how many were accepted.

        A list or tuple is accepted a window's room at a time under one lock acquisition
        (much cheaper per task than ``enqueue``); pass lists of a few hundred tasks, since the
        list keeps every task (and its output) alive until this returns. Other iterables are
        consumed one task at a time, so a slow iterable never holds tasks back. On an error, the tasks before the bad
        one stay accepted and the error is raised.
        """
        if isinstance(tasks, (list, tuple)):
            for position, task in enumerate(tasks):
                if not isinstance(task, Task):
                    self._engine.put_many(list(tasks[:position]), timeout)
                    raise TypeError(
                        f"enqueue_many() takes orderedtask.Task items, not {type(task).__name__}")
            return self._engine.put_many(list(tasks), timeout)
        put = self._engine.put
        count = 0
        for task in tasks:
            if not isinstance(task, Task):
                raise TypeError(
                    f"enqueue_many() takes orderedtask.Task items, not {type(task).__name__}")
            put(task, 1, timeout)
            count += 1
        return count

    def results(self) -> Generator[Task, None, None]:
        """Yield finished tasks in ascending index order; one consumer at a time.

        Ends after ``close()`` once every accepted task has been yielded. Leaving the
        iteration early terminates the pool. If ``fn`` raised a ``BaseException`` that is not
        an ``Exception`` (``SystemExit``, ``KeyboardInterrupt``...), the tasks before it are
        yielded, then it is raised here and the pool is terminated.
        """
        engine = self._engine
        with closing(engine.batches()) as batches:
            for batch in batches:
                for task in batch:
                    _raise_fatal(engine, task)
                    engine.watermark = task.index
                    engine.yielded += 1
                    yield task

    def aresults(self) -> AsyncIterator[Task]:
        """``results()`` for asyncio: ``async for task in pool.aresults()``.

        Never blocks the event loop: it waits for released tasks through a wake-up that the
        workers schedule on the loop. A cancelled ``__anext__`` (a timeout around it) loses
        nothing; ``aclose()`` or dropping the iterator before the end terminates the pool.
        """
        from ._aio import TaskResults  # imports asyncio: only for those who use it

        return TaskResults(lambda: self._engine)

    def close(self) -> None:
        """Stop accepting tasks; those accepted still run and are yielded. Idempotent."""
        self._engine.close()

    def terminate(self) -> None:
        """Stop now: drop tasks no worker has started; ``results()`` ends. Idempotent."""
        self._engine.terminate()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker threads to exit (after ``close``/``terminate``)."""
        return self._engine.join(timeout)

    def stats(self) -> dict[str, Any]:
        """A snapshot of the pool's counters."""
        return self._engine.stats()

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
