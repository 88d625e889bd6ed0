"""asyncio faces of a cursor: ``Pool.aresults()`` and ``amap``.

``AsyncResults`` polls the cursor, which never waits: when nothing is released yet, the
cursor arms a waker that the workers call through ``loop.call_soon_threadsafe``. A cancelled
``__anext__`` (a timeout around it) therefore takes nothing and loses nothing; leaving for
good is ``aclose()`` (or ``contextlib.aclosing``), or dropping the iterator, which terminates
the pool. What the consumer sees is the cursor's rule, the same as the synchronous API's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Generic, TypeVar

from . import _core

T = TypeVar("T")

# How often a feeder waiting on an async source checks whether the work was abandoned.
PULL_CHECK_SECONDS = 0.05


class AsyncResults(Generic[T]):
    """An async iterator over a cursor's items; never blocks the event loop."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def __aiter__(self) -> AsyncResults[T]:
        return self

    async def __anext__(self) -> T:
        cursor = self._cursor
        loop = asyncio.get_running_loop()
        while True:
            wake = asyncio.Event()

            def waker(wake: asyncio.Event = wake) -> None:
                try:
                    loop.call_soon_threadsafe(wake.set)
                except RuntimeError:  # the loop is closed: its consumer is gone
                    pass

            try:
                item = cursor.poll(waker)
            except StopIteration:
                raise StopAsyncIteration from None
            except StopAsyncIteration as exc:  # fn's: it would end the caller's loop silently
                raise RuntimeError("fn raised StopAsyncIteration") from exc
            if item is not _core.NOT_READY:
                return item  # type: ignore[no-any-return]
            await wake.wait()  # cancelled here: nothing was taken, nothing is lost

    async def aclose(self) -> None:
        """Stop iterating; if the stream had not ended, terminate the pool."""
        self._cursor.close()

    def stats(self) -> dict[str, Any]:
        """The engine's counters."""
        stats: dict[str, Any] = self._cursor.stats()
        return stats


def pull_from_loop(iterable: AsyncIterable[Any], loop: asyncio.AbstractEventLoop,
                   engine: Any) -> Iterator[Any]:
    """Iterate an async iterable from the feeder thread, each step run on the event loop.

    The wait for a step gives up once the engine stops or the loop closes, so an abandoned
    ``amap`` never strands its feeder thread.
    """
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
