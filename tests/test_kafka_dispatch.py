"""The Dispatcher contract (orderedtask/kafka/_dispatch.py): what the Kafka layer relies on.

An engine-backed Dispatcher replacing the thread-based one must pass these unchanged.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("confluent_kafka", reason="orderedtask.kafka needs confluent-kafka (no "
                    "wheel for this interpreter, e.g. 3.13t or 3.15)")

from orderedtask.kafka._dispatch import Dispatcher, DispatcherClosed  # noqa: E402

pytestmark = pytest.mark.timeout(60)


class Collector:
    """An on_done that records every triple and the thread it ran on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.results: list[tuple] = []
        self.threads: set[int] = set()
        self.calls = 0

    def __call__(self, results: list[tuple]) -> None:
        with self.lock:
            self.results.extend(results)
            self.threads.add(threading.get_ident())
            self.calls += 1

    def wait(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.results) < count:
            assert time.monotonic() < deadline, f"{len(self.results)} of {count} reported"
            time.sleep(0.005)


def square(item: int) -> int:
    return item * item


def die_on_13(item: int) -> int:
    if item == 13:
        os._exit(1)
    return item


def test_every_item_reported_once_on_a_worker_thread() -> None:
    done = Collector()
    dispatcher = Dispatcher(square, done, workers=4)
    for start in range(0, 1000, 100):
        dispatcher.submit(list(range(start, start + 100)))
    dispatcher.close()
    assert dispatcher.join(10)
    assert sorted(item for item, _, _ in done.results) == list(range(1000))
    assert all(output == item * item and error is None for item, output, error in done.results)
    assert threading.get_ident() not in done.threads
    assert dispatcher.error is None


def test_items_run_in_parallel() -> None:
    barrier = threading.Barrier(4, timeout=10)
    done = Collector()
    dispatcher = Dispatcher(lambda item: barrier.wait(), done, workers=4)
    dispatcher.submit([1, 2, 3, 4])  # four at once only if four workers run together
    done.wait(4)
    assert all(error is None for _, _, error in done.results)
    dispatcher.close()
    assert dispatcher.join(10)


def test_a_stuck_item_holds_back_no_other_item_on_threads() -> None:
    # Each item is a chunk of records already: a worker stuck on one must not have taken
    # others with it (their partitions and keys would wait for it too).
    release = threading.Event()

    def fn(item: int) -> int:
        if item == 1000:
            release.wait(30)
        return item

    done = Collector()
    dispatcher = Dispatcher(fn, done, workers=2)
    try:
        dispatcher.submit(list(range(200)))  # the engine learns that items are fast ...
        done.wait(200)
        dispatcher.submit([1000] + list(range(200, 220)))  # ... then one never finishes
        done.wait(220)  # everything but the stuck item, while it is stuck
        assert 1000 not in {item for item, _, _ in done.results}
    finally:
        release.set()
        dispatcher.close()
        assert dispatcher.join(10)
    assert sorted(item for item, _, _ in done.results) == list(range(220)) + [1000]


def test_keyed_items_run_one_at_a_time_in_submit_order_and_keys_in_parallel() -> None:
    running: dict[str, int] = defaultdict(int)
    reporting: dict[str, int] = defaultdict(int)
    started: dict[str, list[int]] = defaultdict(list)
    reported: dict[str, list[int]] = defaultdict(list)
    lock = threading.Lock()
    overlap = []
    barrier = threading.Barrier(2, timeout=10)

    def fn(item: tuple[str, int]) -> None:
        key, n = item
        with lock:
            running[key] += 1
            if running[key] > 1:
                overlap.append(item)
            started[key].append(n)
            if reporting[key]:  # the key is held until on_done for it returned
                overlap.append(("during on_done", item))
        if n == 0:
            barrier.wait()  # the first item of both keys runs at the same time
        time.sleep(0.0005)
        with lock:
            running[key] -= 1

    def on_done(results: list[tuple]) -> None:
        keys = {key for (key, _), _, _ in results}
        with lock:
            for key in keys:
                reporting[key] += 1
        time.sleep(0.0005)  # a slow on_done: no fn of its keys may start meanwhile
        with lock:
            for (key, n), _, error in results:
                assert error is None, error
                reported[key].append(n)
            for key in keys:
                reporting[key] -= 1

    dispatcher = Dispatcher(fn, on_done, workers=4, keyed=True)
    for start in range(0, 200, 20):
        items = [(key, n) for n in range(start, start + 20) for key in ("a", "b")]
        dispatcher.submit(items, [key for key, _ in items])
    dispatcher.close()
    assert dispatcher.join(20)
    assert not overlap
    assert started == {"a": list(range(200)), "b": list(range(200))}
    assert reported == started


def test_keyed_needs_one_key_per_item_and_unkeyed_refuses_keys() -> None:
    keyed = Dispatcher(square, Collector(), workers=1, keyed=True)
    plain = Dispatcher(square, Collector(), workers=1)
    try:
        with pytest.raises(ValueError):
            keyed.submit([1, 2])
        with pytest.raises(ValueError):
            keyed.submit([1, 2], ["a"])
        with pytest.raises(ValueError):
            plain.submit([1], ["a"])
    finally:
        for dispatcher in (keyed, plain):
            dispatcher.close()
            assert dispatcher.join(5)


def test_errors_are_reported_after_retries_with_backoff() -> None:
    attempts: dict[int, int] = defaultdict(int)

    def flaky(item: int) -> int:
        attempts[item] += 1
        if item == 0 or attempts[item] <= 2:  # item 0 always fails; others twice, then pass
            raise ValueError(f"attempt {attempts[item]} of {item}")
        return item

    done = Collector()
    started = time.monotonic()
    dispatcher = Dispatcher(flaky, done, workers=1, retries=2, retry_backoff=0.05)
    dispatcher.submit([0, 1])
    dispatcher.close()
    assert dispatcher.join(10)
    results = {item: (output, error) for item, output, error in done.results}
    assert results[1] == (1, None)
    assert results[0][0] is None and str(results[0][1]) == "attempt 3 of 0"
    assert attempts == {0: 3, 1: 3}
    assert time.monotonic() - started >= 4 * 0.05


def test_a_base_exception_is_reported_at_once_not_retried() -> None:
    calls = []

    def stop(item: int) -> None:
        calls.append(item)
        raise SystemExit(3)

    done = Collector()
    dispatcher = Dispatcher(stop, done, workers=1, retries=5)
    dispatcher.submit([7])
    dispatcher.close()
    assert dispatcher.join(10)
    [(item, output, error)] = done.results
    assert item == 7 and output is None and isinstance(error, SystemExit)
    assert calls == [7]


def test_close_finishes_queued_items_and_refuses_submits() -> None:
    done = Collector()
    dispatcher = Dispatcher(lambda item: time.sleep(0.001), done, workers=2)
    dispatcher.submit(list(range(100)))
    dispatcher.close()
    with pytest.raises(DispatcherClosed):
        dispatcher.submit([1])
    assert dispatcher.join(10)
    assert len(done.results) == 100


def test_terminate_drops_queued_items_and_reports_running_ones() -> None:
    release = threading.Event()
    first = threading.Event()

    def fn(item: int) -> int:
        first.set()
        release.wait(10)
        return item

    done = Collector()
    dispatcher = Dispatcher(fn, done, workers=1)
    dispatcher.submit([0])
    assert first.wait(5)
    dispatcher.submit(list(range(1, 50)))
    assert not dispatcher.join(timeout=0.05)  # still running
    assert dispatcher.terminate() == 49
    release.set()
    assert dispatcher.join(10)
    assert [item for item, _, _ in done.results] == [0]
    with pytest.raises(DispatcherClosed):
        dispatcher.submit([1])


def test_terminate_drops_keyed_items_waiting_for_their_key() -> None:
    release = threading.Event()
    done = Collector()
    dispatcher = Dispatcher(lambda item: release.wait(10), done, workers=2, keyed=True)
    dispatcher.submit(["a0", "a1", "a2", "b0"], ["a", "a", "a", "b"])
    time.sleep(0.1)
    dropped = dispatcher.terminate()
    release.set()
    assert dispatcher.join(10)
    assert dropped + len(done.results) == 4
    reported = [item for item, _, _ in done.results]
    assert set(reported) <= {"a0", "a1", "a2", "b0"}
    assert [item for item in reported if item.startswith("a")] == \
        ["a0", "a1", "a2"][:len([item for item in reported if item.startswith("a")])]


def test_on_done_raising_is_recorded_and_terminates() -> None:
    calls = []

    def on_done(results: list[tuple]) -> None:
        calls.append(results)
        raise RuntimeError("on_done broke")

    dispatcher = Dispatcher(lambda item: time.sleep(0.01), on_done, workers=1)
    dispatcher.submit(list(range(200)))
    assert dispatcher.join(10)  # terminated: the workers exit without close()
    assert isinstance(dispatcher.error, RuntimeError)
    assert sum(len(results) for results in calls) < 200
    with pytest.raises(DispatcherClosed):
        dispatcher.submit([1])


def test_process_backend_runs_in_other_processes_and_survives_a_dead_worker() -> None:
    done = Collector()
    dispatcher = Dispatcher(die_on_13, done, workers=2, backend="process")
    dispatcher.submit([13])
    done.wait(1, timeout=30)
    dispatcher.submit(list(range(20, 30)))
    dispatcher.close()
    assert dispatcher.join(30)
    results = {item: (output, error) for item, output, error in done.results}
    assert results[13][0] is None and results[13][1] is not None  # the batch as a whole
    assert {item: output for item, (output, _) in results.items() if item != 13} == \
        {item: item for item in range(20, 30)}


def test_process_backend_runs_fn_in_another_process() -> None:
    done = Collector()
    dispatcher = Dispatcher(_pid, done, workers=1, backend="process")
    dispatcher.submit([0])
    dispatcher.close()
    assert dispatcher.join(30)
    [(_, pid, error)] = done.results
    assert error is None and pid != os.getpid()


def _pid(item: int) -> int:
    return os.getpid()


def test_an_executor_backend_is_used_and_left_open() -> None:
    with ThreadPoolExecutor(2, thread_name_prefix="given") as executor:
        names = []
        done = Collector()

        def fn(item: int) -> int:
            names.append(threading.current_thread().name)
            return item

        dispatcher = Dispatcher(fn, done, workers=2, backend=executor)
        dispatcher.submit(list(range(10)))
        dispatcher.close()
        assert dispatcher.join(10)
        assert sorted(item for item, _, _ in done.results) == list(range(10))
        assert names and all(name.startswith("given") for name in names)
        assert executor.submit(square, 3).result() == 9  # not shut down


@pytest.mark.parametrize("kwargs, error", [
    ({"workers": 0}, ValueError), ({"workers": 1.5}, TypeError), ({"retries": -1}, ValueError),
    ({"retry_backoff": -1}, ValueError), ({"backend": "gpu"}, ValueError),
])
def test_bad_arguments(kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        Dispatcher(square, Collector(), **{"workers": 1, **kwargs})
