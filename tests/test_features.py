"""Key-ordered processing, retries, stats, map_tasks, decode and progress bars."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

import pytest

import orderedtask
from support import run_pool
from orderedtask import DecodeError, Pool, Task


# -- key-ordered processing -----------------------------------------------------------------


def test_same_key_runs_one_at_a_time_in_order(twin, no_thread_leak) -> None:
    lock = threading.Lock()
    running: dict[int, int] = defaultdict(int)
    overlap: list[int] = []
    seen: dict[int, list[int]] = defaultdict(list)
    concurrent_keys: set[int] = set()

    def fn(workerlocal: dict, task: Task) -> None:
        key = task.input
        with lock:
            running[key] += 1
            if running[key] > 1:
                overlap.append(task.index)
            seen[key].append(task.index)
            concurrent_keys.add(sum(1 for v in running.values() if v))
        time.sleep(random.random() * 0.0005)
        with lock:
            running[key] -= 1
        task.output = key

    rng = random.Random(5)
    tasks = [Task(i, rng.randrange(6)) for i in range(3000)]
    with Pool(8, fn, key=lambda task: task.input) as pool:
        out = run_pool(pool, tasks)
    assert [t.index for t in out] == list(range(3000))
    assert overlap == []  # never two tasks of one key at once
    for key, indices in seen.items():
        assert indices == sorted(indices), key  # per key, in index order
    assert max(concurrent_keys) > 1  # different keys did run in parallel


def test_key_error_is_raised_to_the_producer_and_nothing_is_accepted(twin) -> None:
    def key(task: Task) -> str:
        if task.input is None:
            raise LookupError("no customer")
        return task.input

    with Pool(2, lambda local, task: None, key=key) as pool:
        pool.enqueue(Task(0, "a"))
        with pytest.raises(LookupError, match="no customer"):
            pool.enqueue(Task(1, None))
        pool.enqueue(Task(1, "b"))  # the index was not taken by the failed enqueue
        pool.close()
        assert [t.index for t in pool.results()] == [0, 1]


def test_key_must_be_callable() -> None:
    with pytest.raises(TypeError, match="key must be callable"):
        Pool(1, lambda local, task: None, key="customer")


# -- retries --------------------------------------------------------------------------------


def test_retries_until_success_and_final_error_stays(twin) -> None:
    attempts: dict[int, int] = defaultdict(int)
    lock = threading.Lock()

    def flaky(workerlocal: dict, task: Task) -> None:
        with lock:
            attempts[task.index] += 1
            n = attempts[task.index]
        task.output = "partial"
        if n <= task.input:
            raise ConnectionError(f"attempt {n}")
        task.output = n

    # task.input = how many attempts fail before one succeeds
    tasks = [Task(i, i % 4) for i in range(40)]
    with Pool(4, flaky, retries=2, retry_backoff=0.001) as pool:
        out = run_pool(pool, tasks)
    for task in out:
        if task.input <= 2:
            assert task.error is None and task.output == task.input + 1
        else:
            assert isinstance(task.error, ConnectionError) and str(task.error) == "attempt 3"
        assert attempts[task.index] == min(task.input + 1, 3)


def test_map_retries() -> None:
    failed: set[int] = set()

    def once_flaky(x: int) -> int:
        if x % 5 == 0 and x not in failed:
            failed.add(x)
            raise TimeoutError(x)
        return x * 2

    assert list(orderedtask.map(once_flaky, range(100), workers=3, retries=1)) == [
        x * 2 for x in range(100)]
    with pytest.raises(ZeroDivisionError):
        list(orderedtask.map(lambda x: 1 / 0 if x == 3 else x, range(10), retries=2))


def test_base_exceptions_are_not_retried(twin) -> None:
    calls = []

    def stop(workerlocal: dict, task: Task) -> None:
        calls.append(task.index)
        raise SystemExit(3)

    with Pool(1, stop, retries=5) as pool:
        pool.enqueue(Task(0))
        with pytest.raises(SystemExit):
            next(pool.results())
    assert calls == [0]


@pytest.mark.parametrize("retries, backoff, error", [
    (-1, 0, ValueError), (1.5, 0, TypeError), (True, 0, TypeError),
    (1, -0.1, ValueError), (1, "1", TypeError), (1, float("nan"), ValueError),
])
def test_bad_retry_arguments(retries, backoff, error) -> None:
    with pytest.raises(error, match="retr"):
        Pool(1, lambda local, task: None, retries=retries, retry_backoff=backoff)
    with pytest.raises(error, match="retr"):
        orderedtask.map(abs, [1], retries=retries, retry_backoff=backoff)


# -- stats ----------------------------------------------------------------------------------


def test_stats_track_a_stalled_head(twin) -> None:
    release = threading.Event()

    def fn(workerlocal: dict, task: Task) -> None:
        if task.index == 0:
            release.wait(10)
        task.output = task.index

    with Pool(2, fn, window=100) as pool:
        pool.enqueue_many([Task(i) for i in range(10)])
        deadline = time.monotonic() + 10
        while pool.stats()["reorder_depth"] < 9 and time.monotonic() < deadline:
            time.sleep(0.005)
        stats = pool.stats()
        assert stats["accepted"] == 10
        assert stats["completed"] == 9
        assert stats["reorder_depth"] == 9  # finished, waiting behind the head
        assert stats["in_flight"] == 1
        assert stats["head"] == 0
        assert stats["head_wait_seconds"] > 0
        assert stats["yielded"] == 0 and stats["watermark"] is None
        release.set()
        pool.close()
        assert [t.index for t in pool.results()] == list(range(10))
        stats = pool.stats()
        assert (stats["yielded"], stats["pending"], stats["head"]) == (10, 0, None)
        assert stats["watermark"] == 9 and stats["closed"]


# -- map_tasks and decode -------------------------------------------------------------------


def test_map_tasks_keeps_errors_in_place(twin) -> None:
    def fn(x: int) -> int:
        if x % 7 == 3:
            raise ValueError(x)
        return -x

    out = list(orderedtask.map_tasks(fn, range(500), workers=3))
    assert [t.index for t in out] == list(range(500))
    for task in out:
        if task.input % 7 == 3:
            assert isinstance(task.error, ValueError) and task.output is None
        else:
            assert task.error is None and task.output == -task.input


def test_map_tasks_with_indices() -> None:
    pairs = [(10, "a"), (11, "b"), (40, "c")]
    out = list(orderedtask.map_tasks(str.upper, pairs, indexed=True))
    assert [(t.index, t.input, t.output) for t in out] == [(10, "a", "A"), (11, "b", "B"),
                                                          (40, "c", "C")]


@pytest.mark.parametrize("decoder", ["auto", "json", "orjson", json.loads])
def test_decode_messages_with_offsets(decoder) -> None:
    if decoder == "orjson":
        pytest.importorskip("orjson")
    offsets = list(range(100, 100 + 3 * 400, 3))
    messages = [(off, json.dumps({"offset": off}).encode()) for off in offsets]
    messages[5] = (messages[5][0], b'{"offset": 1')  # truncated
    out = list(orderedtask.decode(messages, workers=2, decoder=decoder))
    assert [t.index for t in out] == offsets
    bad = out[5]
    assert isinstance(bad.error, DecodeError)
    assert bad.error.offset == offsets[5] and bad.error.head == b'{"offset": 1'
    assert f"offset {offsets[5]}" in str(bad.error)
    assert all(t.output == {"offset": t.index} for t in out if t is not bad)


def test_decode_plain_bytes_use_positions() -> None:
    out = list(orderedtask.decode([b"1", b"[2]", b"x"], decoder="json"))
    assert [(t.index, t.output) for t in out[:2]] == [(0, 1), (1, [2])]
    assert isinstance(out[2].error, DecodeError) and out[2].error.offset == 2


def test_decode_into_types() -> None:
    msgspec = pytest.importorskip("msgspec")

    class Visit(msgspec.Struct):
        name: str
        clicks: int

    @dataclass
    class Page:
        url: str

    out = list(orderedtask.decode([(7, b'{"name":"a","clicks":2}'), (9, b'{"name":"b"}')],
                                  type=Visit))
    assert out[0].output == Visit("a", 2) and out[0].index == 7
    assert isinstance(out[1].error, DecodeError) and "clicks" in str(out[1].error)
    assert next(orderedtask.decode([b'{"url":"u"}'], type=Page)).output == Page("u")


def test_decode_bad_decoder() -> None:
    with pytest.raises(ValueError, match="decoder must be"):
        orderedtask.decode([b"1"], decoder="yaml")


def test_decode_error_pickles() -> None:
    import pickle

    error = DecodeError(5, "bad", b"{x")
    again = pickle.loads(pickle.dumps(error))
    assert (again.offset, again.reason, again.head, str(again)) == (5, "bad", b"{x", str(error))


# -- progress -------------------------------------------------------------------------------


def test_map_progress_bar(capsys) -> None:
    assert list(orderedtask.map(abs, range(-50, 0), progress=True)) == list(range(50, 0, -1))
    err = capsys.readouterr().err
    assert "orderedtask.map" in err and "50/50" in err


def test_map_tasks_stream_has_stats_and_close(no_thread_leak) -> None:
    stream = orderedtask.map_tasks(abs, range(-100, 0), workers=2)
    before = stream.stats()
    assert (before["accepted"], before["workers"]) == (0, 0)  # nothing starts before next()
    first = next(stream)
    assert (first.index, first.output) == (0, 100)
    assert stream.stats()["accepted"] >= 1
    stream.close()
    with pytest.raises(StopIteration):
        next(stream)


class BurstThenBlock:
    """A burst of 20 items, then a pull that blocks until released; says how many are buffered."""

    def __init__(self) -> None:
        self.items = list(range(1, 21))
        self.release = threading.Event()

    def __iter__(self):
        return self

    def __next__(self) -> int:
        if self.items:
            return self.items.pop(0)
        assert self.release.wait(10), "the burst was held back until the source timed out"
        raise StopIteration

    def buffered(self) -> int:
        return len(self.items)


@pytest.mark.parametrize("api", ["map", "map_tasks"])
def test_a_buffered_hint_keeps_a_burst_from_waiting_on_a_blocking_pull(api, no_thread_leak) -> None:
    source = BurstThenBlock()
    results = getattr(orderedtask, api)(abs, source, workers=2)
    got = [next(results) for _ in range(20)]  # the last few would wait for release otherwise
    assert [getattr(r, "output", r) for r in got] == list(range(1, 21))
    source.release.set()
    assert list(results) == []
