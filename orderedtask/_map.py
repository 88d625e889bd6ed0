"""``map``: lazy, ordered, parallel ``fn(item)`` over an iterable, moved in chunks."""

from __future__ import annotations

import builtins
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from contextlib import closing
from itertools import islice
from time import perf_counter
from typing import Any, TypeVar

from ._backends import Backend, make_backend
from ._engine import Engine, check_callable, check_window, check_workers
from ._errors import PoolClosed
from ._task import Task

T = TypeVar("T")
R = TypeVar("R")

#: Default window of ``map``, in items pulled from the iterable and not yet yielded.
DEFAULT_MAP_WINDOW = 16384
# A chunk aims at about this much work; chunks stay small while the cost is unknown.
TARGET_CHUNK_SECONDS = 0.001
MAX_CHUNK = 1024
UNMEASURED_CHUNK = 8
# A pull from the iterable slower than this means a slow source: send items on one by one.
SLOW_SOURCE_SECONDS = 0.001


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


def map(
    fn: Callable[[T], R],
    iterable: Iterable[T],
    *,
    workers: int | None = None,
    window: int | None = None,
    backend: str | Executor = "thread",
) -> Iterator[R]:
    """Yield ``fn(item)`` for each item, in input order, computed on ``workers`` threads.

    The iterable is consumed lazily (endless generators work): at most ``window`` items are
    pulled and not yet yielded. An exception from ``fn`` (or from the iterable) is raised at
    that item's position, after the results before it; the work then stops.
    ``workers`` defaults to ``os.cpu_count()``.
    """
    check_callable("fn", fn)
    if workers is None:
        workers = os.cpu_count() or 1
    check_workers(workers)
    window = check_window(window, DEFAULT_MAP_WINDOW)
    runner = make_backend(backend, ChunkRunner(fn), None, workers)
    return _results(runner, iter(iterable), workers, window)


def _results(backend: Backend, source: Iterator[Any], workers: int, window: int
             ) -> Iterator[Any]:
    # Threads start on the first next(): a map object that is never iterated costs nothing.
    engine = Engine(workers, backend, window, "orderedtask-map", _chunk_items)
    feeder = threading.Thread(
        target=_feed, args=(engine, source), name="orderedtask-map-feeder", daemon=True
    )
    feeder.start()
    with closing(engine.batches()) as batches:
        for batch in batches:
            for chunk in batch:
                yield from chunk.output
                if chunk.error is not None:
                    raise chunk.error


def _feed(engine: Engine, source: Iterator[Any]) -> None:
    index = 0
    size = 1
    try:
        while True:
            chunk: list[Any] = []
            started = perf_counter()
            try:
                chunk.extend(islice(source, size))
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
        cap = min(cap, int(TARGET_CHUNK_SECONDS / cost))
    return max(1, min(size * 2, cap))
