"""``map``, ``map_tasks`` and ``amap``: lazy, ordered, parallel ``fn(item)`` over an iterable.

Each call builds one engine, one backend and a cursor; the worker threads and a feeder thread
start on the first ``next`` (a stream that is never iterated costs nothing). The feeder
accepts each item as soon as it pulls it, so no item waits for the next pull.
"""

from __future__ import annotations

import operator
import os
import sys
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar

from . import _core
from ._adaptive import Tuner
from ._backends import Backend, make_backend
from ._options import (MAP_WINDOW, check_bool, check_callable, check_max_workers, check_retries,
                       check_window, check_workers_or_adaptive, default_window)
from ._results import Results
from ._core import Task

T = TypeVar("T")
R = TypeVar("R")

# The progress bar is advanced every this many items (and at the end).
PROGRESS_EVERY = 256

#: What ``map_tasks`` and ``decode`` return: ``Task`` objects in order, ``stats()``, ``close()``.
TaskStream = Results[Task]


class _Plan:
    """A validated call: the engine and backend it will run on, not started yet.

    ``workers=None`` is adaptive: a ``Tuner`` chooses the level, from 0 (the consumer pulls
    and runs each item itself, as a plain loop would) up to ``max_workers``.
    """

    __slots__ = ("engine", "backend", "workers", "max_workers")

    def __init__(self, fn: Callable[[Any], Any], workers: int | None, window: int | None,
                 backend: object, retries: int, retry_backoff: float,
                 describe: Callable[[int, Any, Exception], BaseException] | None = None,
                 max_workers: int | None = None) -> None:
        check_callable("fn", fn)
        check_callable("describe_error", describe, optional=True)
        self.workers = check_workers_or_adaptive(workers)
        self.max_workers = check_max_workers(max_workers, backend, self.workers)
        sizing = self.workers if self.workers is not None else (os.cpu_count() or 1)
        window = check_window(window, default_window(MAP_WINDOW, sizing))
        retries, retry_backoff = check_retries(retries, retry_backoff)
        runner = _core.Runner(_core.MAP, fn, retries, retry_backoff, describe)
        self.backend: Backend = make_backend(backend, runner, None, self.workers or 1)
        self.engine = _core.Engine(window, _core.MAP, batch_seconds=self.backend.batch_seconds,
                                   on_terminate=self.backend.stopper())

    def cursor(self, mode: int, source: Callable[[], Iterator[Any]], indexed: bool,
               name: str, buffered: Callable[[], int] | None = None,
               inline: bool = True) -> Any:
        engine, backend, workers = self.engine, self.backend, self.workers

        def start_feeder() -> None:
            threading.Thread(target=engine.feed, name=f"{name}-feeder", daemon=True).start()

        if workers is not None:
            def start() -> None:
                engine.set_source(source(), indexed, buffered)
                backend.start(engine, workers, name)
                start_feeder()

            # The cursor keeps the backend alive; the workers reach it by weak reference.
            return _core.Cursor(engine, mode, on_start=start, keepalive=backend)
        tuner = Tuner(engine, backend, name, self.max_workers, on_first_worker=start_feeder,
                      inline=inline)

        def start_adaptive() -> None:
            engine.set_source(source(), indexed, buffered)
            tuner.start()

        return _core.Cursor(engine, mode, on_start=start_adaptive, keepalive=backend,
                            helper=tuner)


def map(
    fn: Callable[[T], R],
    iterable: Iterable[T],
    *,
    workers: int | None = None,
    window: int | None = None,
    backend: str | Executor = "thread",
    retries: int = 0,
    retry_backoff: float = 0.0,
    progress: bool = False,
    max_workers: int | None = None,
) -> Results[R]:
    """Yield ``fn(item)`` for each item, in input order, computed on ``workers`` threads.

    The iterable is consumed lazily (endless generators work): at most ``window`` items are
    in the pool and not yet yielded (``None``: 2,048, or with the GIL off and the GC on, sized
    from the first GC threshold). An exception from ``fn`` (or from the iterable) is raised
    at that item's position, after the results before it; the work then stops.
    ``workers=None`` (the default) is adaptive: the number of workers follows the measured
    throughput, from 0 (this thread runs each item itself, as a plain loop) up to
    ``max_workers`` (default 64 threads, or one per CPU for other backends); an int fixes it.
    ``retries``/``retry_backoff`` retry an item whose ``fn`` raised an ``Exception``;
    ``progress=True`` shows a tqdm bar on stderr.
    """
    plan = _Plan(fn, workers, window, backend, retries, retry_backoff, max_workers=max_workers)
    check_bool("progress", progress)
    source = iter(iterable)
    cursor = plan.cursor(_core.Cursor.MAP, lambda: source, False, "orderedtask-map",
                         _buffered_hint(iterable))
    return _ProgressResults(cursor, iterable) if progress else cursor


def map_tasks(
    fn: Callable[[Any], Any],
    iterable: Iterable[Any],
    *,
    indexed: bool = False,
    workers: int | None = None,
    window: int | None = None,
    backend: str | Executor = "thread",
    retries: int = 0,
    retry_backoff: float = 0.0,
    progress: bool = False,
    describe_error: Callable[[int, Any, Exception], BaseException] | None = None,
    max_workers: int | None = None,
) -> TaskStream:
    """Like ``map``, but yield a ``Task`` per item and keep each item's error on its task.

    Tasks come in input order. ``task.index`` is the item's position, or with ``indexed=True``
    the iterable yields ``(index, input)`` pairs and the index is kept (Kafka offsets; any
    ``int`` in ``[0, 2**64)``). ``task.output`` is
    ``fn(input)``; an ``Exception`` from ``fn``, or the failure of the batch the item was in
    (a worker process that died, an executor that refused it), is stored on ``task.error``
    and the stream goes on (``describe_error(index, input, error)`` may replace an error from
    ``fn`` by a more telling one). A ``BaseException`` that is not an ``Exception``, and an
    error of the iterable itself, stop the stream at that position.
    """
    plan = _Plan(fn, workers, window, backend, retries, retry_backoff, describe_error,
                 max_workers)
    check_bool("indexed", indexed)
    check_bool("progress", progress)
    source = iter(iterable)
    cursor = plan.cursor(_core.Cursor.MAP_TASKS, lambda: source, indexed, "orderedtask-map",
                         _buffered_hint(iterable))
    return _ProgressResults(cursor, iterable) if progress else cursor


def amap(
    fn: Callable[[T], R],
    iterable: Iterable[T] | AsyncIterable[T],
    *,
    workers: int | None = None,
    window: int | None = None,
    backend: str | Executor = "thread",
    retries: int = 0,
    retry_backoff: float = 0.0,
    max_workers: int | None = None,
) -> AsyncIterator[R]:
    """``map`` for asyncio: ``async for result in amap(fn, items)``; never blocks the loop.

    ``iterable`` may be a plain or an async iterable (pulled on the loop); ``fn`` runs on the
    workers as in ``map``.
    """
    from ._aio import AsyncResults, pull_from_loop  # asyncio: only for those who use it

    plan = _Plan(fn, workers, window, backend, retries, retry_backoff, max_workers=max_workers)
    if isinstance(iterable, AsyncIterable):
        import asyncio

        engine = plan.engine

        def source() -> Iterator[Any]:
            # Called by start(), inside the running loop that the async source needs.
            return pull_from_loop(iterable, asyncio.get_running_loop(), engine)
    else:
        items = iter(iterable)

        def source() -> Iterator[Any]:
            return items

    # inline=False: the loop's thread never runs fn, whatever the level.
    return AsyncResults(plan.cursor(_core.Cursor.MAP, source, False, "orderedtask-amap",
                                    inline=False))


def _buffered_hint(iterable: object) -> Callable[[], int] | None:
    """The iterable's ``buffered()``: how many items it can give now without blocking.

    A source that knows (a line reader, a consumer's fetch buffer) may offer it; the feeder
    then takes that many under one lock round instead of one at a time.
    """
    hint = getattr(iterable, "buffered", None)
    return hint if callable(hint) else None


def _progress_total(iterable: object) -> int | None:
    total = operator.length_hint(iterable, -1)
    return total if total >= 0 else None


class _ProgressResults:
    """A cursor with a tqdm bar on stderr, advanced every ``PROGRESS_EVERY`` items."""

    __slots__ = ("_cursor", "_bar", "_count")

    def __init__(self, cursor: Any, iterable: object) -> None:
        from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

        self._cursor = cursor
        self._bar = tqdm(total=_progress_total(iterable), unit="item", dynamic_ncols=True,
                         desc="orderedtask.map", file=sys.stderr)
        self._count = 0

    def __iter__(self) -> _ProgressResults:
        return self

    def __next__(self) -> Any:
        try:
            item = next(self._cursor)
        except BaseException:
            self._finish()
            raise
        self._count += 1
        if self._count >= PROGRESS_EVERY:
            level = self._cursor.stats().get("level")
            if level is not None:
                self._bar.set_postfix(level=level, refresh=False)
            self._bar.update(self._count)
            self._count = 0
        return item

    def _finish(self) -> None:
        if self._bar is not None:
            self._bar.update(self._count)
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self._cursor.close()
        self._finish()

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self._cursor.stats()
        return stats


__all__ = ["TaskStream", "amap", "map", "map_tasks"]
