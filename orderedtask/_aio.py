"""Async iterators over an engine's released tasks, for ``Pool.aresults()`` and ``amap``.

They are classes, not async generators, so that cancelling one ``__anext__`` (a timeout around
it) loses nothing: the iterator stays usable and the pool keeps running. Leaving for good is
``aclose()`` (or ``contextlib.aclosing``), or dropping the iterator: that terminates the pool.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ._engine import Engine
from ._task import Task

T = TypeVar("T")


class _Raise:
    """Queued in place of an item: raise this error when the consumer reaches it."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class AsyncStream(Generic[T]):
    """Base: waits for released batches without blocking the loop; subclasses expand them."""

    def __init__(self, start: Callable[[], Engine]) -> None:
        self._start = start
        self._engine: Engine | None = None
        self._items: deque[Any] = deque()
        self._handed = 0
        self._done = False
        self._finalizer: weakref.finalize[[bool], AsyncStream[T]] | None = None

    def __aiter__(self) -> AsyncStream[T]:
        return self

    async def __anext__(self) -> T:
        if self._done:
            raise StopAsyncIteration
        engine = self._engine
        if engine is None:
            engine = self._engine = self._start()
            engine.claim()
            # Dropped while running: terminate, as an abandoned generator would.
            self._finalizer = weakref.finalize(self, engine.unclaim, False)
        loop = asyncio.get_running_loop()
        while not self._items:
            wake = asyncio.Event()

            def waker(wake: asyncio.Event = wake) -> None:
                try:
                    loop.call_soon_threadsafe(wake.set)
                except RuntimeError:  # the loop is closed: its consumer is gone
                    pass

            batch = engine.next_batch(self._handed, waker=waker)
            self._handed = 0
            if batch is None:
                self._finish(completed=True)
                raise StopAsyncIteration
            if not batch:
                await wake.wait()  # cancelled here: nothing was taken, nothing is lost
                continue
            self._handed = engine.weigh(batch)
            self._expand(batch)
        item = self._items.popleft()
        if isinstance(item, _Raise):
            self._finish(completed=False)
            if isinstance(item.error, StopAsyncIteration):  # would end the loop silently
                raise RuntimeError("fn raised StopAsyncIteration") from item.error
            raise item.error
        return self._take(engine, item)

    def _expand(self, batch: list[Task]) -> None:
        raise NotImplementedError

    def _take(self, engine: Engine, item: Any) -> T:
        return item  # type: ignore[no-any-return]

    def _finish(self, completed: bool) -> None:
        self._done = True
        self._items.clear()
        if self._finalizer is not None:
            self._finalizer.detach()
            assert self._engine is not None
            self._engine.unclaim(completed)

    async def aclose(self) -> None:
        """Stop iterating; if the stream had not ended, terminate the pool."""
        if not self._done:
            self._finish(completed=False)
            self._done = True


class TaskResults(AsyncStream[Task]):
    """``Pool.aresults()``: tasks in order; a fatal ``BaseException`` on a task is raised."""

    def _expand(self, batch: list[Task]) -> None:
        items = self._items
        for task in batch:
            error = task.error
            if error is not None and not isinstance(error, Exception):
                items.append(_Raise(error))
                return
            items.append(task)

    def _take(self, engine: Engine, task: Task) -> Task:
        engine.watermark = task.index
        engine.yielded += 1
        return task


class ItemResults(AsyncStream[Any]):
    """``amap``: each chunk's results in order; an error is raised at its item's place."""

    def _expand(self, batch: list[Task]) -> None:
        items = self._items
        assert self._engine is not None
        for chunk in batch:
            out = chunk.output
            self._engine.yielded += len(out)
            items.extend(out)
            if chunk.error is not None:
                items.append(_Raise(chunk.error))
                return
