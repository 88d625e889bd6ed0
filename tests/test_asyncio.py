"""``Pool.aresults()`` and ``orderedtask.amap`` under ``asyncio.run``, on both core twins."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterable

import pytest

import orderedtask
from orderedtask import Pool, PoolClosed, PoolTerminated, Task

# A broken async pool tends to hang: fail after a minute rather than the global 300 s.
pytestmark = [pytest.mark.usefixtures("twin", "no_thread_leak"), pytest.mark.timeout(60)]

WAIT = 10.0  # generous bound on waits that only guard against a hang
SLOW = 0.02  # seconds per item of "slow" work


class Stop(BaseException):
    """A BaseException that is not an Exception: "stop", as the README defines it."""


# -- helpers -----------------------------------------------------------------------------


def identity(workerlocal, task):
    task.output = task.input


def jittered(workerlocal, task):
    # Random latency, so that tasks finish out of order.
    time.sleep(random.random() * 0.002)
    task.output = task.input * 2


def slow_task(workerlocal, task):
    time.sleep(SLOW)
    task.output = task.input


def slow_item(x):
    time.sleep(SLOW)
    return x


async def agen(items: Iterable, delay: float = 0.0):
    for item in items:
        if delay:
            await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)  # a real suspension point on every item
        yield item


def start_producer(pool: Pool, tasks: Iterable[Task], close: bool = True) -> threading.Thread:
    """Enqueues from its own thread; stops quietly once the pool is closed under it."""

    def produce() -> None:
        try:
            pool.enqueue_many(tasks)
        except PoolClosed:
            return
        if close:
            pool.close()

    thread = threading.Thread(target=produce, name="test-producer", daemon=True)
    thread.start()
    return thread


def run(coro_fn: Callable[[], Awaitable]):
    return asyncio.run(coro_fn())


async def eventually(predicate: Callable[[], bool]) -> None:
    """Await until ``predicate()`` holds (liveness only: fails after WAIT seconds)."""
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.001)


async def feeder_exited(before: set[threading.Thread]) -> None:
    """Keep the loop running until the threads started since ``before`` have exited.

    After an early exit from ``amap`` over an *async* source, the feeder thread may be waiting
    for the loop to run the source's next step; it exits once the loop has run it. A loop that
    stops before that strands the feeder for good (a known library bug: the feeder waits on
    ``run_coroutine_threadsafe(...).result()`` and nothing ends that wait on an early exit).
    """
    await eventually(lambda: set(threading.enumerate()) <= before)


async def join(pool: Pool) -> None:
    assert await asyncio.to_thread(pool.join, WAIT), "workers did not exit"


class Ticker:
    """Counts 1 ms ticks of a concurrent asyncio task: it only ticks while the loop is free."""

    def __init__(self) -> None:
        self.ticks = 0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0.001)
            self.ticks += 1

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)  # let it start
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


# -- order -------------------------------------------------------------------------------


def test_aresults_yields_in_index_order_from_a_producer_thread():
    indices = [i * 3 + random.randrange(3) for i in range(300)]  # gaps, like Kafka offsets

    async def main():
        pool = Pool(4, jittered, window=32)
        producer = start_producer(pool, (Task(i, i) for i in indices))
        got = []
        async for task in pool.aresults():
            assert task.output == task.index * 2
            assert pool.watermark == task.index
            got.append(task.index)
        producer.join(WAIT)
        await join(pool)
        return got

    assert run(main) == indices


def test_aresults_with_tasks_enqueued_from_a_loop_executor():
    async def main():
        pool = Pool(3, jittered, window=16)
        loop = asyncio.get_running_loop()

        def produce():
            pool.enqueue_many(Task(i, i) for i in range(200))
            pool.close()

        produced = loop.run_in_executor(None, produce)
        got = [task.index async for task in pool.aresults()]
        await produced
        await join(pool)
        return got

    assert run(main) == list(range(200))


def test_amap_over_a_plain_iterable():
    async def main():
        return [x async for x in orderedtask.amap(lambda x: x * x, range(500), workers=3,
                                                   window=64)]

    assert run(main) == [x * x for x in range(500)]


def test_amap_over_an_async_generator():
    async def main():
        source = agen(range(300))
        return [x async for x in orderedtask.amap(lambda x: -x, source, workers=3, window=32)]

    assert run(main) == [-x for x in range(300)]


def test_amap_over_an_empty_source():
    async def main():
        plain = [x async for x in orderedtask.amap(abs, [], workers=2)]
        asynchronous = [x async for x in orderedtask.amap(abs, agen([]), workers=2)]
        return plain, asynchronous

    assert run(main) == ([], [])


# -- the event loop stays free -----------------------------------------------------------

# Ten slow items on one worker keep the consumer waiting ~200 ms; a free loop ticks ~100-200
# times meanwhile. "> 10" is a liveness check that a loaded 2-core machine still passes.
SLOW_ITEMS = 10
MIN_TICKS = 10


def test_aresults_never_blocks_the_event_loop():
    async def main():
        pool = Pool(1, slow_task)
        async with Ticker() as ticker:
            producer = start_producer(pool, (Task(i, i) for i in range(SLOW_ITEMS)))
            got = [task.index async for task in pool.aresults()]
            ticks = ticker.ticks
        producer.join(WAIT)
        await join(pool)
        return got, ticks

    got, ticks = run(main)
    assert got == list(range(SLOW_ITEMS))
    assert ticks > MIN_TICKS


@pytest.mark.parametrize("source_kind", ["plain", "async"])
def test_amap_never_blocks_the_event_loop(source_kind):
    async def main():
        source = range(SLOW_ITEMS) if source_kind == "plain" else agen(range(SLOW_ITEMS))
        async with Ticker() as ticker:
            got = [x async for x in orderedtask.amap(slow_item, source, workers=1)]
            ticks = ticker.ticks
        return got, ticks

    got, ticks = run(main)
    assert got == list(range(SLOW_ITEMS))
    assert ticks > MIN_TICKS


def test_amap_with_a_blocking_plain_source_never_blocks_the_event_loop():
    # The plain iterable is pulled on the feeder thread, so even a source that sleeps is fine.
    def sleepy_source():
        for i in range(SLOW_ITEMS):
            time.sleep(SLOW)
            yield i

    async def main():
        async with Ticker() as ticker:
            got = [x async for x in orderedtask.amap(abs, sleepy_source(), workers=2)]
            ticks = ticker.ticks
        return got, ticks

    got, ticks = run(main)
    assert got == list(range(SLOW_ITEMS))
    assert ticks > MIN_TICKS


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("source_kind", ["plain", "async"])
@pytest.mark.parametrize("position", [0, 1, 57, 199])
def test_amap_raises_an_exception_from_fn_at_its_position(source_kind, position):
    def fn(x):
        if x == position:
            raise ValueError(f"bad item {x}")
        return x + 1

    async def main():
        before = set(threading.enumerate())
        source = range(200) if source_kind == "plain" else agen(range(200))
        got = []
        with pytest.raises(ValueError, match=f"bad item {position}$"):
            async for x in orderedtask.amap(fn, source, workers=3, window=16):
                got.append(x)
        await feeder_exited(before)
        return got

    assert run(main) == [x + 1 for x in range(position)]


def test_amap_raises_an_exception_from_the_async_source_at_its_position():
    async def failing_source():
        for i in range(25):
            yield i
        raise KeyError("source broke")

    async def main():
        got = []
        with pytest.raises(KeyError, match="source broke"):
            async for x in orderedtask.amap(abs, failing_source(), workers=2):
                got.append(x)
        return got

    assert run(main) == list(range(25))


def test_aresults_keeps_errors_on_their_tasks():
    def fn(workerlocal, task):
        if task.index % 7 == 3:
            raise ValueError(f"task {task.index}")
        task.output = task.index

    async def main():
        pool = Pool(3, fn, window=16)
        producer = start_producer(pool, (Task(i, i) for i in range(100)))
        got = [task async for task in pool.aresults()]
        producer.join(WAIT)
        await join(pool)
        return got

    got = run(main)
    assert [task.index for task in got] == list(range(100))
    for task in got:
        if task.index % 7 == 3:
            assert isinstance(task.error, ValueError)
            assert str(task.error) == f"task {task.index}"
            assert task.output is None
        else:
            assert task.error is None
            assert task.output == task.index


def test_aresults_raises_a_base_exception_from_fn_after_the_tasks_before_it():
    def fn(workerlocal, task):
        if task.index == 40:
            raise Stop()
        task.output = task.index

    async def main():
        pool = Pool(2, fn, window=16)
        producer = start_producer(pool, (Task(i, i) for i in range(100)))
        got = []
        with pytest.raises(Stop):
            async for task in pool.aresults():
                got.append(task.index)
        producer.join(WAIT)
        assert not producer.is_alive()
        with pytest.raises(PoolClosed):
            pool.enqueue(Task(1000))
        await join(pool)
        return got

    assert run(main) == list(range(40))


# -- one consumer at a time --------------------------------------------------------------


def test_a_second_concurrent_consumer_raises_runtime_error():
    async def main():
        pool = Pool(2, identity)
        pool.enqueue(Task(0, 0))
        first = pool.aresults()
        assert (await anext(first)).index == 0

        with pytest.raises(RuntimeError, match="already being iterated"):
            await anext(pool.aresults())
        with pytest.raises(RuntimeError, match="already being iterated"):
            next(pool.results())

        # The rejected consumers changed nothing: the first one carries on to the end.
        pool.enqueue(Task(1, 1))
        pool.close()
        rest = [task.index async for task in first]
        await join(pool)
        return rest

    assert run(main) == [1]


def test_two_async_consumers_racing_for_the_same_pool():
    async def consume(pool):
        return [task.index async for task in pool.aresults()]

    async def main():
        pool = Pool(2, jittered)
        producer = start_producer(pool, (Task(i, i) for i in range(50)))
        outcomes = await asyncio.gather(consume(pool), consume(pool), return_exceptions=True)
        producer.join(WAIT)
        await join(pool)
        return outcomes

    outcomes = run(main)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    results = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert results == [list(range(50))]


def test_enqueue_from_the_loop_thread_on_a_full_window_raises_instead_of_freezing_the_loop():
    async def main():
        window = 2
        pool = Pool(1, identity, window=window)
        pool.enqueue(Task(0, 0))
        results = pool.aresults()
        assert (await anext(results)).index == 0  # this thread is now the consumer
        accepted = []
        with pytest.raises(RuntimeError, match="wait forever"):
            for i in range(1, window + 2):  # fills the window; waiting would hang the loop
                pool.enqueue(Task(i, i))
                accepted.append(i)
        assert 1 <= len(accepted) <= window
        pool.close()
        got = [task.index async for task in results]
        await join(pool)
        return accepted, got

    accepted, got = run(main)
    assert got == accepted  # the rejected task changed nothing


# -- leaving early, and the end of the stream -------------------------------------------


def test_breaking_out_of_aresults_terminates_the_pool():
    async def main():
        pool = Pool(2, jittered, window=8)
        producer = start_producer(pool, (Task(i, i) for i in range(10_000)))
        async for task in pool.aresults():
            if task.index == 5:
                break
        # The abandoned async generator is closed by asyncio's finaliser on a later loop turn.
        await eventually(lambda: pool.stats()["closed"])
        with pytest.raises(PoolClosed):
            pool.enqueue(Task(20_000))
        await asyncio.to_thread(producer.join, WAIT)
        assert not producer.is_alive()
        await join(pool)

    run(main)


def test_aclosing_aresults_terminates_the_pool_at_once():
    async def main():
        pool = Pool(2, jittered, window=8)
        producer = start_producer(pool, (Task(i, i) for i in range(10_000)))
        async with contextlib.aclosing(pool.aresults()) as results:
            async for task in results:
                if task.index == 5:
                    break
        assert pool.stats()["closed"]
        await asyncio.to_thread(producer.join, WAIT)
        assert not producer.is_alive()
        await join(pool)

    run(main)


def test_an_exception_in_the_async_for_body_terminates_the_pool():
    class HandlerError(Exception):
        pass

    async def main():
        pool = Pool(2, jittered, window=8)
        producer = start_producer(pool, (Task(i, i) for i in range(10_000)))
        with pytest.raises(HandlerError):
            async with contextlib.aclosing(pool.aresults()) as results:
                async for task in results:
                    if task.index == 5:
                        raise HandlerError()
        assert pool.stats()["closed"]
        await asyncio.to_thread(producer.join, WAIT)
        await join(pool)

    run(main)


def test_cancelling_the_consumer_terminates_the_pool():
    async def main():
        # The window is smaller than the stream: only terminating the pool ends the producer.
        pool = Pool(1, slow_task, window=100)
        producer = start_producer(pool, (Task(i, i) for i in range(1000)))
        started = asyncio.Event()

        async def consume():
            async for _ in pool.aresults():
                started.set()

        consumer = asyncio.create_task(consume())
        await started.wait()
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        # The iterator goes with the last reference to it: the task, once the loop has run the
        # callbacks still holding it (and on 3.10 the task's exception keeps the whole frame,
        # the iterator included, alive, so drop the task).
        del consumer
        await eventually(lambda: pool.stats()["closed"])
        await asyncio.to_thread(producer.join, WAIT)
        assert not producer.is_alive()
        await join(pool)

    run(main)


@pytest.mark.parametrize("source_kind", ["plain", "async", "endless"])
def test_breaking_out_of_amap_stops_the_work(source_kind):
    async def endless():
        i = 0
        while True:
            await asyncio.sleep(0)
            yield i
            i += 1

    async def main():
        before = set(threading.enumerate())
        if source_kind == "plain":
            source = range(100_000)
        elif source_kind == "async":
            source = agen(range(100_000))
        else:
            source = endless()
        got = []
        async with contextlib.aclosing(orderedtask.amap(abs, source, workers=2,
                                                        window=64)) as results:
            async for x in results:
                got.append(x)
                if len(got) == 10:
                    break
        await feeder_exited(before)
        return got

    assert run(main) == list(range(10))


def test_breaking_out_of_amap_without_aclosing_stops_the_work_too():
    async def main():
        before = set(threading.enumerate())
        got = []
        async for x in orderedtask.amap(abs, agen(range(100_000)), workers=2, window=64):
            got.append(x)
            if len(got) == 10:
                break
        await feeder_exited(before)
        return got

    assert run(main) == list(range(10))


def test_aresults_ends_after_close():
    async def main():
        pool = Pool(2, identity)
        pool.enqueue_many(Task(i, i) for i in range(10))
        pool.close()
        got = [task.index async for task in pool.aresults()]
        await join(pool)
        return got

    assert run(main) == list(range(10))


def test_aresults_on_an_empty_closed_pool_ends_at_once():
    async def main():
        pool = Pool(2, identity)
        pool.close()
        got = [task async for task in pool.aresults()]
        await join(pool)
        return got

    assert run(main) == []


def test_close_wakes_a_consumer_that_is_waiting():
    async def main():
        pool = Pool(2, identity)
        consumer = asyncio.create_task(
            asyncio.wait_for(_collect(pool.aresults()), WAIT))
        await asyncio.sleep(0.01)  # the consumer is now awaiting with nothing to read
        assert not consumer.done()
        pool.enqueue(Task(7, 7))
        await asyncio.to_thread(pool.close)  # closed from another thread, as a producer would
        got = await consumer
        await join(pool)
        return got

    assert run(main) == [7]


def test_terminate_from_another_thread_ends_a_waiting_consumer():
    async def main():
        pool = Pool(1, slow_task, window=200)  # room for all: enqueue never waits here
        pool.enqueue_many(Task(i, i) for i in range(200))
        got: list[int] = []

        async def collect() -> None:
            async for task in pool.aresults():
                got.append(task.index)

        consumer = asyncio.create_task(asyncio.wait_for(collect(), WAIT))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(pool.terminate)
        with pytest.raises(PoolTerminated) as info:  # the consumer learns what was dropped
            await consumer
        await join(pool)
        return got, info.value

    got, terminated = run(main)
    assert got == list(range(len(got)))  # a prefix, in order; the rest was dropped
    assert len(got) < 200
    assert (terminated.dropped, terminated.index) == (200 - len(got), len(got))


async def _collect(results) -> list[int]:
    return [task.index async for task in results]


def test_a_timed_out_anext_leaves_the_pool_usable():
    async def main():
        pool = Pool(1, slow_task)
        pool.enqueue_many(Task(i, i) for i in range(3))
        pool.close()
        results = pool.aresults()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(anext(results), 0.001)  # the first item takes 20 ms
        got = [task.index async for task in results]
        await join(pool)
        return got

    assert run(main) == [0, 1, 2]


def test_a_timed_out_amap_step_leaves_the_stream_usable():
    gate = threading.Event()

    def slow_start(x: int) -> int:
        gate.wait(5)
        return x * 2

    async def main() -> list[int]:
        stream = orderedtask.amap(slow_start, range(50), workers=2)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(stream.__anext__(), 0.05)
        gate.set()
        return [x async for x in stream]

    assert asyncio.run(main()) == [x * 2 for x in range(50)]


def test_dropping_a_started_async_iterator_terminates_the_pool(no_thread_leak):
    async def main() -> None:
        pool = orderedtask.Pool(2, lambda local, task: None)
        pool.enqueue(orderedtask.Task(0))
        stream = pool.aresults()
        await stream.__anext__()
        del stream
        gc.collect()
        with pytest.raises(orderedtask.PoolClosed):
            pool.enqueue(orderedtask.Task(1))
        pool.join(5)

    asyncio.run(main())


def test_stop_async_iteration_from_fn_does_not_end_amap_silently():
    def fn(x: int) -> int:
        if x == 3:
            raise StopAsyncIteration
        return x

    async def main() -> list[int]:
        got = []
        with pytest.raises(RuntimeError, match="StopAsyncIteration"):
            async for x in orderedtask.amap(fn, range(10), workers=2):
                got.append(x)
        return got

    assert asyncio.run(main()) == [0, 1, 2]
