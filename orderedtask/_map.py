"""``map``: lazy, ordered, parallel ``fn(item)`` over an iterable, moved in chunks."""

from __future__ import annotations

import builtins
import operator
import os
import sys
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Generator, Iterable, Iterator
from concurrent.futures import Executor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import closing
from functools import partial
from itertools import islice
from time import perf_counter
from typing import Any, TypeVar

from ._backends import Retrying, check_retries, make_backend
from ._engine import Engine, check_callable, check_window, check_workers, default_window
from ._errors import PoolClosed
from ._task import Task

T = TypeVar("T")
R = TypeVar("R")

#: Default window of ``map``, in items pulled from the iterable and not yet yielded. Measured
#: (benchmarks/window.py, README "Choosing the window"): 1,024-2,048 decode fastest; larger
#: windows keep more results alive and cost more in cache misses and garbage collection. With
#: the GIL off and the GC on, it follows the GC threshold (``_engine.default_window``).
DEFAULT_MAP_WINDOW = 2048
# A chunk aims at half a backend batch of work; chunks stay small while the cost is unknown.
MAX_CHUNK = 1024
UNMEASURED_CHUNK = 8
# A pull from the iterable slower than this means a slow source: send items on one by one.
SLOW_SOURCE_SECONDS = 0.001
# How often a feeder waiting on an async source checks whether the work was abandoned.
PULL_CHECK_SECONDS = 0.05


def _chunk_items(task: Task) -> int:
    return len(task.input)


class ChunkRunner:
    """Runs ``fn`` over a chunk (``task.input``); picklable, for the process backend."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __call__(self, workerlocal: dict[str, Any], task: Task) -> None:
        out: list[Any] = []
        task.output = out
        # list.extend keeps the results made before fn raises: they are yielded first.
        items = task.input
        out.extend(builtins.map(self.fn, items))
        if len(out) != len(items):  # list.extend took fn's StopIteration for the end
            raise RuntimeError(
                f"fn raised StopIteration on an item (position {len(out)} of its chunk)")

    def __reduce__(self) -> tuple[Any, ...]:
        return (ChunkRunner, (self.fn,))


class TaskChunkRunner:
    """Runs ``fn`` over a chunk of ``(index, input)`` pairs, one Task each; errors stay on it.

    ``describe(index, input, error)``, if given, replaces an error with a more telling one.
    """

    __slots__ = ("fn", "describe")

    def __init__(self, fn: Callable[[Any], Any],
                 describe: Callable[[int, Any, Exception], Exception] | None = None) -> None:
        self.fn = fn
        self.describe = describe

    def __call__(self, workerlocal: dict[str, Any], task: Task) -> None:
        fn = self.fn
        out: list[Task] = []
        task.output = out
        for index, value in task.input:
            item = Task(index, value)
            try:
                item.output = fn(value)
            except Exception as exc:  # noqa: BLE001 - kept on its task; others propagate
                item.error = exc if self.describe is None else self.describe(index, value, exc)
            out.append(item)

    def __reduce__(self) -> tuple[Any, ...]:
        return (TaskChunkRunner, (self.fn, self.describe))


def _engine_for(
    make_runner: Callable[[Callable[[Any], Any]], Any], fn: Callable[[Any], Any],
    workers: int | None, window: int | None, backend: object, retries: int,
    retry_backoff: float,
) -> Callable[[], Engine]:
    """Validate the arguments now; return what builds the engine on first use."""
    check_callable("fn", fn)
    if workers is None:
        workers = os.cpu_count() or 1
    check_workers(workers)
    window = check_window(window, default_window(DEFAULT_MAP_WINDOW, workers))
    retry = check_retries(retries, retry_backoff)
    runner = make_runner(Retrying(fn, retry) if retry[0] else fn)
    chunk_backend = make_backend(backend, runner, None)
    count = workers
    return lambda: Engine(count, chunk_backend, window, "orderedtask-map", _chunk_items)


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
) -> Generator[R, None, None]:
    """Yield ``fn(item)`` for each item, in input order, computed on ``workers`` threads.

    The iterable is consumed lazily (endless generators work): at most ``window`` items are
    in the pool and not yet yielded (``None``: 2,048, or with the GIL off and the GC on, sized
    from the first GC threshold), plus the one chunk the feeder thread is filling. An
    exception from ``fn`` (or from the iterable) is raised at that item's position, after the
    results before it; the work then stops.
    ``workers`` defaults to ``os.cpu_count()``. ``retries``/``retry_backoff`` retry an item
    whose ``fn`` raised an ``Exception``; ``progress=True`` shows a tqdm bar on stderr.
    """
    make_engine = _engine_for(ChunkRunner, fn, workers, window, backend, retries, retry_backoff)
    source = iter(iterable)
    total = operator.length_hint(iterable, -1)
    return _results(make_engine, source, _progress_bar(progress, total), _buffered_hint(iterable))


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
    describe_error: Callable[[int, Any, Exception], Exception] | None = None,
) -> TaskStream:
    """Like ``map``, but yield a ``Task`` per item and keep each item's error on its task.

    ``task.index`` is the item's position, or with ``indexed=True`` the iterable yields
    ``(index, input)`` pairs and the index is kept (Kafka offsets). ``task.output`` is
    ``fn(input)``; an ``Exception`` from ``fn`` is stored on ``task.error`` and the stream goes
    on (``describe_error(index, input, error)`` may replace that error with a more telling
    one). A ``BaseException`` that is not an ``Exception`` still stops the stream.
    """
    make_engine = _engine_for(partial(TaskChunkRunner, describe=describe_error), fn, workers,
                              window, backend, retries, retry_backoff)
    total = operator.length_hint(iterable, -1)
    pairs = iter(iterable) if indexed else enumerate(iterable)
    return TaskStream(make_engine, pairs, _progress_bar(progress, total), _buffered_hint(iterable))


def _buffered_hint(iterable: object) -> Callable[[], int] | None:
    """The iterable's ``buffered()``: how many items it can give now without blocking.

    A source that knows (a line reader, a consumer's fetch buffer) may offer it; chunks are
    then never filled with a pull that blocks while earlier items wait in them.
    """
    hint = getattr(iterable, "buffered", None)
    return hint if callable(hint) else None


def _progress_bar(progress: bool, total: int) -> Any:
    if not progress:
        return None
    from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

    return tqdm(total=total if total >= 0 else None, unit="item", dynamic_ncols=True,
                desc="orderedtask.map", file=sys.stderr)


class TaskStream(Iterator[Task]):
    """What ``map_tasks`` returns: its tasks in order, plus ``stats()`` and ``close()``."""

    __slots__ = ("_tasks", "_engine")

    def __init__(self, make_engine: Callable[[], Engine], source: Iterator[Any], bar: Any,
                 buffered: Callable[[], int] | None) -> None:
        self._engine: list[Engine] = []  # filled on the first next(), when the threads start
        self._tasks = _results(make_engine, source, bar, buffered, self._engine)

    def __next__(self) -> Task:
        task: Task = next(self._tasks)
        return task

    def stats(self) -> dict[str, Any]:
        """The engine's counters (``Pool.stats()``; its tasks are chunks); {} before the start."""
        return self._engine[0].stats() if self._engine else {}

    def close(self) -> None:
        """Stop the work now (as leaving a ``for`` loop early does)."""
        self._tasks.close()


def _results(make_engine: Callable[[], Engine], source: Iterator[Any], bar: Any,
             buffered: Callable[[], int] | None = None, started: list[Engine] | None = None
             ) -> Generator[Any, None, None]:
    # Threads start on the first next(): a map object that is never iterated costs nothing.
    engine = make_engine()
    if started is not None:
        started.append(engine)
    feeder = threading.Thread(
        target=_feed, args=(engine, source, buffered), name="orderedtask-map-feeder", daemon=True
    )
    feeder.start()
    try:
        with closing(engine.batches()) as batches:
            for batch in batches:
                for chunk in batch:
                    out = chunk.output
                    engine.yielded += len(out)
                    yield from out
                    if chunk.error is not None:
                        raise chunk.error
                if bar is not None:
                    bar.update(sum(len(chunk.output) for chunk in batch))
    finally:
        if bar is not None:
            bar.close()


def amap(
    fn: Callable[[T], R],
    iterable: Iterable[T] | AsyncIterable[T],
    *,
    workers: int | None = None,
    window: int | None = None,
    backend: str | Executor = "thread",
    retries: int = 0,
    retry_backoff: float = 0.0,
) -> AsyncIterator[R]:
    """``map`` for asyncio: ``async for result in amap(fn, items)``; never blocks the loop.

    ``iterable`` may be a plain or an async iterable; ``fn`` runs on the workers as in ``map``.
    """
    make_engine = _engine_for(ChunkRunner, fn, workers, window, backend, retries, retry_backoff)
    return _aresults(make_engine, iterable)


def _aresults(make_engine: Callable[[], Engine],
              iterable: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    # asyncio is imported here, not at the top: it doubles the import time of the package
    # (and of every worker process) for users who never touch it.
    import asyncio

    from ._aio import ItemResults

    def start() -> Engine:
        # On the first __anext__, inside the running loop that an async source needs.
        engine = make_engine()
        if isinstance(iterable, AsyncIterable):
            source: Iterator[Any] = _pull_from_loop(iterable, asyncio.get_running_loop(), engine)
        else:
            source = iter(iterable)
        threading.Thread(target=_feed, args=(engine, source), name="orderedtask-amap-feeder",
                         daemon=True).start()
        return engine

    return ItemResults(start)


def _pull_from_loop(iterable: AsyncIterable[Any], loop: Any, engine: Engine) -> Iterator[Any]:
    """Iterate an async iterable from the feeder thread, each step run on the event loop.

    The wait for a step gives up once the engine stops or the loop closes, so an abandoned
    ``amap`` never strands its feeder thread.
    """
    import asyncio

    iterator = aiter(iterable)

    async def step() -> Any:
        return await anext(iterator)

    while not engine.stopping:
        coroutine = step()
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        except RuntimeError:  # the loop is closed
            coroutine.close()
            return
        while True:
            try:
                item = future.result(timeout=PULL_CHECK_SECONDS)
            except FutureTimeout:
                if engine.stopping or loop.is_closed():
                    future.cancel()
                    return
                continue
            except StopAsyncIteration:
                return
            break
        yield item


def _feed(engine: Engine, source: Iterator[Any],
          buffered: Callable[[], int] | None = None) -> None:
    index = 0
    size = 1
    try:
        while True:
            chunk: list[Any] = []
            started = perf_counter()
            # No item waits in a half-filled chunk on a pull that blocks for the next one.
            want = size if buffered is None else max(1, min(size, buffered()))
            try:
                chunk.extend(islice(source, want))
            except BaseException as exc:  # noqa: BLE001 - raised to the consumer in place
                if chunk:
                    engine.put(Task(index, chunk), len(chunk))
                    index += 1
                failed = Task(index, ())
                failed.error = exc
                engine.put(failed, 0)
                return
            if not chunk:
                return
            took = perf_counter() - started
            engine.put(Task(index, chunk), len(chunk))
            index += 1
            size = _next_chunk_size(engine, size, took)
    except PoolClosed:
        return
    finally:
        engine.close()


def _next_chunk_size(engine: Engine, size: int, took: float) -> int:
    if took > SLOW_SOURCE_SECONDS * size:
        return 1
    # Keep at least two chunks per worker inside the window so that no worker starves.
    cap = min(MAX_CHUNK, engine.window // (2 * engine.workers))
    cost = engine.cost  # read without the lock: a stale estimate only sizes a chunk
    if cost <= 0:
        # No chunk has finished yet: the items may be slow, so keep chunks small enough to
        # spread over every worker until the first measurement arrives.
        cap = min(cap, UNMEASURED_CHUNK)
    else:
        cap = min(cap, int(engine.backend.batch_seconds / 2 / cost))
    return max(1, min(size * 2, cap))
