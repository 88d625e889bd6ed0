"""Faults from outside fn, and README's bad-input table walked row by row on both twins."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import orderedtask
from support import sigint_after
from orderedtask import Pool, PoolClosed, Task


def noop(workerlocal: dict, task: Task) -> None:
    task.output = task.input


def ctrl_c_soon() -> sigint_after:
    """A real SIGINT, as Ctrl-C sends: it interrupts the main thread's blocking waits."""
    return sigint_after(0.05)


def test_keyboard_interrupt_in_the_consuming_thread(twin, no_thread_leak) -> None:
    """Ctrl-C while the main thread waits in results(): it propagates, the pool stops."""
    gate = threading.Event()

    def stuck(workerlocal: dict, task: Task) -> None:
        gate.wait(10)

    pool = Pool(2, stuck)
    pool.enqueue(Task(0))
    presses = ctrl_c_soon()
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in pool.results():
                pass
    finally:
        presses.join()
    gate.set()
    with pytest.raises(PoolClosed):
        pool.enqueue(Task(1))
    assert pool.join(10)


def test_keyboard_interrupt_while_iterating_map(twin, no_thread_leak) -> None:
    def slow(x: int) -> int:
        time.sleep(0.001)
        return x

    presses = ctrl_c_soon()
    seen = 0
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in orderedtask.map(slow, iter(int, 1), workers=2):  # endless
                seen += 1
    finally:
        presses.join()
    assert seen > 0


def test_close_while_the_window_is_full_fails_the_blocked_producer_only(twin) -> None:
    gate = threading.Event()

    def fn(workerlocal: dict, task: Task) -> None:
        gate.wait(10)

    with Pool(1, fn, window=2) as pool:
        pool.enqueue_many([Task(0), Task(1)])
        outcome: list[BaseException] = []

        def blocked() -> None:
            try:
                pool.enqueue(Task(2))
            except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
                outcome.append(exc)

        producer = threading.Thread(target=blocked)
        producer.start()
        time.sleep(0.05)
        pool.close()
        producer.join(10)
        assert len(outcome) == 1 and isinstance(outcome[0], PoolClosed)
        gate.set()
        assert [t.index for t in pool.results()] == [0, 1]  # the accepted ones survive


# -- README's bad-input table ---------------------------------------------------------------

def _pool(**kwargs):
    return lambda: Pool(**{"workers": 1, "fn": noop, **kwargs})


def _enqueue(task):
    def run():
        with Pool(1, noop) as pool:
            pool.enqueue(task)
    return run


def _after_close():
    with Pool(1, noop) as pool:
        pool.close()
        pool.enqueue(Task(0))


def _behind_the_last_released():
    with Pool(1, noop) as pool:
        pool.enqueue(Task(5))
        it = pool.results()
        next(it)
        pool.enqueue(Task(5))


def _duplicate():
    gate = threading.Event()
    with Pool(1, lambda local, task: gate.wait(5)) as pool:
        pool.enqueue(Task(3))
        try:
            pool.enqueue(Task(3))
        finally:
            gate.set()


def _window_timeout():
    gate = threading.Event()
    with Pool(1, lambda local, task: gate.wait(5), window=1) as pool:
        pool.enqueue(Task(0))
        try:
            pool.enqueue(Task(1), timeout=0.01)
        finally:
            gate.set()


def _second_consumer():
    with Pool(1, noop) as pool:
        pool.enqueue(Task(0))
        first = pool.results()
        next(first)
        try:
            next(pool.results())
        finally:
            first.close()


def _consumer_blocks_itself():
    with Pool(1, noop, window=1) as pool:
        pool.enqueue(Task(0))
        for _ in pool.results():
            pool.enqueue(Task(1))
            pool.enqueue(Task(2))


BAD_INPUT = [
    ("workers not an int", _pool(workers=2.0), TypeError, "workers must be an int"),
    ("workers a bool", _pool(workers=True), TypeError, "workers must be an int"),
    ("window not an int", _pool(window="8"), TypeError, "window must be an int"),
    ("fn not callable", _pool(fn=None), TypeError, "fn must be callable"),
    ("worker_init not callable", _pool(worker_init=3), TypeError, "worker_init must be callable"),
    ("key not callable", _pool(key=3), TypeError, "key must be callable"),
    ("backend of a wrong type", _pool(backend=3), TypeError, "backend must be"),
    ("retries not an int", _pool(retries=1.0), TypeError, "retries must be an int"),
    ("workers <= 0", _pool(workers=0), ValueError, "workers must be >= 1"),
    ("window <= 0", _pool(window=-1), ValueError, "window must be >= 1"),
    ("unknown backend", _pool(backend="gpu"), ValueError, "backend must be"),
    ("retries < 0", _pool(retries=-1), ValueError, "retries must be >= 0"),
    ("enqueue of a non-Task", _enqueue((1, "x")), TypeError, "takes an orderedtask.Task"),
    ("index not an int", _enqueue(Task("1")), TypeError, "task index must be an int"),
    ("index a bool", _enqueue(Task(False)), TypeError, "task index must be an int"),
    ("negative index", _enqueue(Task(-1)), ValueError, "task index -1 is negative"),
    ("index >= 2**64", _enqueue(Task(2**64)), OverflowError, "does not fit in 64 bits"),
    ("index behind the last released", _behind_the_last_released, ValueError,
     "not greater than the last released index 5"),
    ("index already pending", _duplicate, ValueError, "already pending"),
    ("enqueue after close", _after_close, PoolClosed, "closed"),
    ("window full past the timeout", _window_timeout, TimeoutError, "window of 1 tasks"),
    ("second consumer", _second_consumer, RuntimeError, "already being iterated"),
    ("consumer blocks itself", _consumer_blocks_itself, RuntimeError, "wait forever"),
]


@pytest.mark.parametrize("name, call, error, message", BAD_INPUT, ids=[row[0] for row in BAD_INPUT])
def test_bad_input_table(twin, no_thread_leak, name, call, error, message) -> None:
    with pytest.raises(error, match=message):
        call()


def test_pool_stays_usable_after_every_rejected_enqueue(twin) -> None:
    bad = [Task("1"), Task(True), Task(-1), Task(2**64), (1, 2), Task(1)]
    with Pool(2, noop) as pool:
        pool.enqueue(Task(1, "first"))
        for task in bad:
            with pytest.raises((TypeError, ValueError, OverflowError)):
                pool.enqueue(task)
        pool.enqueue(Task(2, "second"))
        pool.close()
        assert [(t.index, t.output) for t in pool.results()] == [(1, "first"), (2, "second")]
