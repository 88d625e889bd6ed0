"""``orderedtask.map`` on both reorder-core twins (``twin``), with a thread-leak guard."""

from __future__ import annotations

import builtins
import itertools
import threading
import time

import pytest

import orderedtask
from orderedtask._options import MAP_WINDOW
from support import bad_call, collect_until_error

# A broken map tends to hang: fail after a minute rather than the global 300 s.
pytestmark = [pytest.mark.usefixtures("twin", "no_thread_leak"), pytest.mark.timeout(60)]


def square_plus_one(x):
    return x * x + 1


def fail_at(position: int, exc: BaseException):
    def fn(x):
        if x == position:
            raise exc
        return square_plus_one(x)

    return fn


class Counting:
    """An endless source that counts the items pulled from it."""

    def __init__(self):
        self.pulled = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.pulled += 1
        return self.pulled - 1


def broken_source(good: int, exc: BaseException):
    yield from range(good)
    raise exc


def feeder_slack(window: int, workers: int) -> int:
    """Items the feeder may hold beyond the window: the one it pulled and waits to put."""
    return 1


# -- results -----------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "workers", "window"), [
    (0, 1, None), (0, 4, None), (1, 1, None), (1, 4, 1), (7, 2, None), (7, 8, 3),
    (10_000, 1, None), (10_000, 4, 64), (10_000, 3, 1), (200_000, 4, None),
])
def test_matches_builtin_map(size, workers, window):
    got = list(orderedtask.map(square_plus_one, range(size), workers=workers, window=window))
    assert got == list(builtins.map(square_plus_one, range(size)))


def test_default_workers_and_arbitrary_items():
    words = ["a", "bb", "", "ccc"] * 50
    assert list(orderedtask.map(str.upper, words)) == [w.upper() for w in words]


def test_random_latencies():
    delays = [0, 0.001, 0, 0.002, 0.0005, 0] * 30

    def slow(delay):
        time.sleep(delay)
        return delay

    assert list(orderedtask.map(slow, delays, workers=5, window=8)) == delays


def test_slow_source():
    def trickle():
        for i in range(30):
            time.sleep(0.002)
            yield i

    assert list(orderedtask.map(square_plus_one, trickle(), workers=3)) == [
        square_plus_one(i) for i in range(30)]


def test_endless_source():
    got = list(itertools.islice(
        orderedtask.map(square_plus_one, itertools.count(), workers=2, window=64), 1000))
    assert got == [square_plus_one(i) for i in range(1000)]


# -- laziness ----------------------------------------------------------------------------


@pytest.mark.parametrize(("window", "workers"), [(1, 1), (8, 1), (32, 3), (200, 2)])
def test_pulls_at_most_window_plus_one_chunk_ahead(window, workers):
    source = Counting()
    bound = window + feeder_slack(window, workers)
    results = orderedtask.map(square_plus_one, source, workers=workers, window=window)
    for consumed, value in enumerate(results, 1):
        assert value == square_plus_one(consumed - 1)
        assert source.pulled - consumed <= bound
        if consumed % 10 == 0:
            time.sleep(0.001)  # a slow consumer
        if consumed == 150:
            break
    time.sleep(0.02)  # the feeder has all the time it needs to run ahead, if it would
    assert source.pulled - consumed <= bound
    results.close()


def test_never_iterated_map_starts_no_thread():
    before = threading.active_count()
    source = Counting()
    results = orderedtask.map(square_plus_one, source, workers=4)
    assert threading.active_count() == before
    assert source.pulled == 0
    del results


@pytest.mark.parametrize("gil, window", [(True, MAP_WINDOW), (False, 512)])
def test_default_window(monkeypatch, gil, window):
    # With the GIL off, the default GC threshold and two workers the default shrinks
    # (see _options.default_window).
    monkeypatch.setattr(orderedtask._options, "gil_enabled", lambda: gil)
    monkeypatch.setattr(orderedtask._options.gc, "isenabled", lambda: True)
    monkeypatch.setattr(orderedtask._options.gc, "get_threshold", lambda: (2000, 10, 10))
    source = Counting()
    results = orderedtask.map(square_plus_one, source, workers=2)
    assert next(results) == 1
    time.sleep(0.02)
    assert source.pulled <= 1 + window + feeder_slack(window, 2)
    results.close()


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("position", [0, 1, 500, 4999])
def test_exception_from_fn_is_raised_in_place(position):
    failure = ValueError(f"bad item {position}")
    results = orderedtask.map(fail_at(position, failure), range(5000), workers=3)
    got, raised = collect_until_error(results)
    assert raised is failure
    assert got == [square_plus_one(i) for i in range(position)]
    assert list(results) == []  # the work stopped: nothing after the failure


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_base_exception_from_fn_is_raised_in_place(exc_type):
    failure = exc_type("stop")
    got, raised = collect_until_error(
        orderedtask.map(fail_at(123, failure), range(10_000), workers=2, window=100))
    assert raised is failure
    assert got == [square_plus_one(i) for i in range(123)]


@pytest.mark.parametrize("good", [0, 1, 100, 3000])
def test_exception_from_iterable_is_raised_in_place(good):
    failure = OSError("source broke")
    got, raised = collect_until_error(
        orderedtask.map(square_plus_one, broken_source(good, failure), workers=3))
    assert raised is failure
    assert got == [square_plus_one(i) for i in range(good)]


@pytest.mark.parametrize("position", [0, 5, 2999])
def test_stop_iteration_from_fn_is_not_swallowed(position):
    # list.extend would take it for the end of the chunk and drop the rest silently.
    got, raised = collect_until_error(orderedtask.map(
        fail_at(position, StopIteration("inner")), range(3000), workers=2))
    assert got == [square_plus_one(i) for i in range(position)]
    assert isinstance(raised, RuntimeError)
    assert "StopIteration" in str(raised)


@pytest.mark.parametrize("source", [range(100_000), itertools.count()], ids=["range", "endless"])
def test_breaking_out_early_stops_the_work(source):
    for value in orderedtask.map(square_plus_one, source, workers=3, window=64):
        if value > 1000:
            break  # the thread-leak guard checks that the workers and the feeder exit


def test_closing_the_iterator_stops_the_work():
    results = orderedtask.map(square_plus_one, itertools.count(), workers=2)
    assert next(results) == 1
    results.close()
    assert list(results) == []


# -- invalid input -----------------------------------------------------------------------


@pytest.mark.parametrize(("override", "error", "match"), [
    bad_call({"fn": 5}, TypeError, "fn must be callable"),
    bad_call({"fn": None}, TypeError, "fn must be callable"),
    bad_call({"workers": 0}, ValueError, "workers must be >= 1"),
    bad_call({"workers": -3}, ValueError, "workers must be >= 1"),
    bad_call({"workers": True}, TypeError, "workers must be an int"),
    bad_call({"workers": 2.0}, TypeError, "workers must be an int"),
    bad_call({"window": 0}, ValueError, "window must be >= 1"),
    bad_call({"window": "a"}, TypeError, "window must be an int"),
    bad_call({"iterable": 5}, TypeError, "not iterable"),
    bad_call({"iterable": None}, TypeError, "not iterable"),
])
def test_bad_arguments_are_rejected_eagerly(override, error, match):
    kwargs = {"fn": square_plus_one, "iterable": [1], **override}
    fn, iterable = kwargs.pop("fn"), kwargs.pop("iterable")
    with pytest.raises(error, match=match):
        orderedtask.map(fn, iterable, **kwargs)  # raised by the call, before any next()
