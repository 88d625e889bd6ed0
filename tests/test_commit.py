"""``OffsetCommitter``: the commit policy and crash/restart runs against a fake broker.

(The Kafka example is a ``ParallelConsumer`` now: tests/test_kafka.py runs it against
librdkafka's mock cluster.)"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderedtask import Pool, PoolClosed, Task
from orderedtask._commit import OffsetCommitter

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0  # generous bound on waits that only guard against a hang


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """A ``commit`` callable that records its calls and can be told to fail."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.fail = False

    def __call__(self, offset: int) -> None:
        if self.fail:
            raise ConnectionError(f"commit of {offset} failed")
        self.calls.append(offset)


def committer(every: int | None = 10, interval: float | None = 5.0, **kwargs: Any
              ) -> tuple[OffsetCommitter, Recorder, FakeClock]:
    clock = FakeClock()
    commits = Recorder()
    return OffsetCommitter(commits, every=every, interval=interval, clock=clock,
                           **kwargs), commits, clock


# -- the policy ----------------------------------------------------------------------------


def test_commits_watermark_plus_one_after_every_offsets():
    c, commits, _ = committer(every=10, interval=None)
    assert c.committed is None
    assert [c.update(w) for w in range(9)] == [None] * 9
    assert c.update(9) == 10  # ten offsets, 0..9, handled: the next one to read is 10
    assert commits.calls == [10] and c.committed == 10
    assert [c.update(w) for w in range(10, 19)] == [None] * 9
    assert c.update(19) == 20
    assert commits.calls == [10, 20]


def test_every_counts_from_the_first_watermark_when_nothing_is_committed():
    # A consumer restarted at offset 1000 with no known commit: counting starts there.
    c, commits, _ = committer(every=10, interval=None)
    assert [c.update(w) for w in range(1000, 1009)] == [None] * 9
    assert c.update(1009) == 1010
    assert commits.calls == [1010]


def test_every_counts_offsets_so_a_gap_counts():
    c, commits, _ = committer(every=100, interval=None)
    assert c.update(0) is None
    assert c.update(250) == 251  # offsets 1..249 were compacted away or are control records
    assert commits.calls == [251]


def test_commits_after_interval_seconds_if_the_watermark_moved():
    c, commits, clock = committer(every=None, interval=5.0)
    assert c.update(0) is None
    clock.advance(4.9)
    assert c.update(1) is None
    clock.advance(0.1)
    assert c.update(2) == 3  # 5 s since the committer started
    clock.advance(100)
    assert c.update(2) is None  # time passed, but nothing new was handled
    assert c.update(3) == 4
    clock.advance(4.9)
    assert c.update(7) is None  # the interval restarts at each commit
    assert commits.calls == [3, 4]


def test_interval_zero_commits_every_move():
    c, commits, _ = committer(every=None, interval=0)
    assert [c.update(w) for w in (0, 0, 1, 5, 5)] == [1, None, 2, 6, None]
    assert commits.calls == [1, 2, 6]


def test_flush_commits_at_once_if_the_watermark_moved():
    c, commits, _ = committer(every=1000, interval=1000.0)
    assert c.update(3) is None
    assert c.flush(3) == 4
    assert c.flush(3) is None  # never the same value twice
    assert c.flush(None) is None
    assert c.flush(4) == 5
    assert commits.calls == [4, 5]


def test_with_both_triggers_off_only_flush_commits():
    c, commits, clock = committer(every=None, interval=None)
    for w in range(10_000):
        assert c.update(w) is None
    clock.advance(1e9)
    assert c.update(10_000) is None
    assert c.flush(10_000) == 10_001
    assert commits.calls == [10_001]


def test_never_commits_backwards_or_at_a_known_commit():
    c, commits, clock = committer(every=1, interval=0, committed=500)
    assert c.committed == 500
    clock.advance(10)
    assert c.update(300) is None  # a watermark below the group's commit (a stale pool)
    assert c.update(499) is None  # 499 + 1 == 500: already committed
    assert c.flush(499) is None
    assert c.update(500) == 501
    assert c.update(400) is None
    assert c.flush(400) is None
    assert commits.calls == [501]


def test_every_counts_from_a_known_commit():
    c, commits, _ = committer(every=10, interval=None, committed=500)
    assert [c.update(w) for w in range(500, 509)] == [None] * 9
    assert c.update(509) == 510
    assert commits.calls == [510]


def test_none_watermark_commits_nothing():
    c, commits, clock = committer(every=1, interval=0)
    clock.advance(10)
    assert c.update(None) is None
    assert c.flush(None) is None
    assert commits.calls == [] and c.committed is None


def test_a_failed_commit_propagates_and_is_retried():
    c, commits, clock = committer(every=10, interval=None)
    assert [c.update(w) for w in range(9)] == [None] * 9
    commits.fail = True
    with pytest.raises(ConnectionError, match="commit of 10 failed"):
        c.update(9)
    assert c.committed is None  # unchanged: the next update tries again
    with pytest.raises(ConnectionError, match="commit of 11 failed"):
        c.update(10)
    commits.fail = False
    assert c.update(10) == 11
    assert commits.calls == [11]
    # The same for flush, and for the time trigger: still due after a failure.
    c2, commits2, clock2 = committer(every=None, interval=5.0)
    clock2.advance(5)
    commits2.fail = True
    with pytest.raises(ConnectionError):
        c2.update(0)
    with pytest.raises(ConnectionError):
        c2.flush(0)
    commits2.fail = False
    assert c2.update(0) == 1
    assert commits2.calls == [1]


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"commit": None}, TypeError, "commit must be callable"),
    ({"every": 0}, ValueError, "every must be >= 1"),
    ({"every": True}, TypeError, "every must be an int"),
    ({"every": 1.5}, TypeError, "every must be an int"),
    ({"interval": -1}, ValueError, "interval must be >= 0"),
    ({"interval": float("nan")}, ValueError, "interval must be >= 0"),
    ({"interval": "5"}, TypeError, "interval must be a number"),
    ({"clock": 3}, TypeError, "clock must be callable"),
    ({"committed": -1}, ValueError, "committed must be >= 0"),
    ({"committed": 1.0}, TypeError, "committed must be an int"),
])
def test_bad_arguments_are_rejected(kwargs, error, match):
    arguments: dict[str, Any] = {"commit": Recorder()} | kwargs
    commit = arguments.pop("commit")
    with pytest.raises(error, match=match):
        OffsetCommitter(commit, **arguments)


@pytest.mark.parametrize(("watermark", "error"), [
    (-1, ValueError), (1.0, TypeError), (True, TypeError), ("3", TypeError),
])
def test_bad_watermarks_are_rejected(watermark, error):
    c, commits, _ = committer(every=1)
    with pytest.raises(error, match="watermark"):
        c.update(watermark)
    with pytest.raises(error, match="watermark"):
        c.flush(watermark)
    assert commits.calls == []


def test_concurrent_updates_and_flushes_commit_in_order_one_at_a_time():
    inside = threading.Lock()
    calls: list[int] = []

    def commit(offset: int) -> None:
        assert inside.acquire(blocking=False), "commit entered concurrently"
        try:
            calls.append(offset)
            time.sleep(0)  # invite a thread switch while "committing"
        finally:
            inside.release()

    c = OffsetCommitter(commit, every=3, interval=None)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def hammer(seed: int) -> None:
        try:
            barrier.wait(WAIT)
            rng = random.Random(seed)
            for w in range(2000):
                if rng.random() < 0.1:
                    c.flush(w)
                else:
                    c.update(w)
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not errors
    assert calls == sorted(set(calls))  # strictly increasing: no repeats, never backwards
    assert calls[-1] <= 2000 and c.committed == calls[-1]


operations = st.lists(
    st.tuples(
        st.sampled_from(["update", "update", "update", "flush"]),
        st.integers(min_value=-3, max_value=40),  # watermark step: mostly forward
        st.floats(min_value=0, max_value=3, allow_nan=False),  # seconds passing
        st.sampled_from([False, False, False, True]),  # this commit fails
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=operations, every=st.none() | st.integers(1, 50),
       interval=st.none() | st.floats(0, 10, allow_nan=False),
       known=st.none() | st.integers(0, 30))
def test_policy_invariants(ops, every, interval, known):
    c, commits, clock = committer(every=every, interval=interval, committed=known)
    watermark = -1
    last_commit_time = clock.now
    for op, step, seconds, fail in ops:
        clock.advance(seconds)
        watermark = max(0, watermark + step)
        before = c.committed
        commits.fail = fail
        calls_before = len(commits.calls)
        try:
            result = getattr(c, op)(watermark)
        except ConnectionError:
            assert fail
            assert c.committed == before  # a failed commit changes nothing
            continue
        moved = before is None or watermark + 1 > before
        if result is None:
            assert len(commits.calls) == calls_before
            assert c.committed == before
            assert op == "update" or not moved  # flush commits whenever it moved
            if moved and before is not None:
                # Not due: neither trigger had fired.
                assert every is None or watermark + 1 - before < every
                assert interval is None or clock.now - last_commit_time < interval
        else:
            assert moved
            assert result == watermark + 1 == commits.calls[-1] == c.committed
            assert len(commits.calls) == calls_before + 1
            last_commit_time = clock.now
    assert commits.calls == sorted(set(commits.calls))
    if known is not None:
        assert all(offset > known for offset in commits.calls)


# -- end to end: a partition, a broker, crashes and restarts ---------------------------------


class Crash(Exception):
    """The consumer process dies here."""


@dataclass
class FakeBroker:
    """Stores the group's committed offset; some commit calls fail (numbers in ``fail_on``)."""

    fail_on: set[int] = field(default_factory=set)
    committed: int | None = None
    history: list[int] = field(default_factory=list)
    calls: int = 0

    def commit(self, offset: int) -> None:
        self.calls += 1
        if self.calls in self.fail_on:
            raise ConnectionError("broker unavailable")
        self.committed = offset
        self.history.append(offset)


def make_partition(rng: random.Random, size: int) -> list[tuple[int, bytes]]:
    """(offset, value) pairs with offset gaps; a few values are not JSON; some are slow."""
    messages = []
    offset = rng.randrange(0, 50)
    for _ in range(size):
        if rng.random() < 0.03:
            value = b"{not json"
        else:
            delay = rng.choice([0.0] * 8 + [0.0005, 0.002])
            value = json.dumps({"offset": offset, "delay": delay}).encode()
        messages.append((offset, value))
        offset += rng.choice([1, 1, 1, 1, 2, 5])  # compaction / transaction markers
    return messages


def decode(workerlocal: dict, task: Task) -> None:
    doc = json.loads(task.input)  # a bad value leaves its error on the task
    time.sleep(doc["delay"])
    task.output = doc


@dataclass
class Run:
    start: int | None  # the broker's committed offset when this run started
    handled: list[int] = field(default_factory=list)
    end: int | None = None  # the broker's committed offset when this run ended
    outcome: str = ""


def consume(partition: list[tuple[int, bytes]], broker: FakeBroker, run: Run, *,
            crash_after: int | None, crash_kind: str, rng: random.Random) -> str:
    """One consumer process: read from the committed offset, handle in order, commit.

    Dies (raises ``Crash``) or walks away (returns "abandoned") after ``crash_after`` messages.
    """
    clock = FakeClock()
    committer = OffsetCommitter(broker.commit, every=rng.choice([1, 7, 40]),
                                interval=rng.choice([None, 0.5]), clock=clock,
                                committed=broker.committed)
    start = broker.committed
    messages = [(o, v) for o, v in partition if start is None or o >= start]

    with Pool(rng.choice([1, 3, 4]), decode, window=rng.choice([4, 16, 64])) as pool:
        def produce() -> None:
            try:
                for offset, value in messages:
                    pool.enqueue(Task(offset, value))
            except PoolClosed:
                return  # the consumer died: the pool was terminated
            pool.close()

        producer = threading.Thread(target=produce, name="test-producer", daemon=True)
        producer.start()
        try:
            for task in pool.results():
                if crash_kind == "before-handling" and len(run.handled) == crash_after:
                    raise Crash()
                if task.error is None:
                    assert task.output["offset"] == task.index
                else:
                    assert isinstance(task.error, json.JSONDecodeError)  # dead-lettered
                run.handled.append(task.index)
                if crash_kind == "before-commit" and len(run.handled) == crash_after:
                    raise Crash()
                clock.advance(rng.random() * 0.1)
                committer.update(pool.watermark)
                if crash_kind == "abandon" and len(run.handled) == crash_after:
                    return "abandoned"  # no flush; leaving results() terminates the pool
            committer.flush(pool.watermark)
            return "completed"
        finally:
            producer.join(WAIT)
            assert not producer.is_alive()


def crash_and_restart(seed: int) -> tuple[list[tuple[int, bytes]], FakeBroker, list[Run]]:
    rng = random.Random(seed)
    partition = make_partition(rng, rng.randrange(150, 300))
    broker = FakeBroker(fail_on=set(rng.sample(range(1, 60), 3)))
    # Three to five crashes, each kind at least once, then a run that goes to the end (unless
    # a commit fails: that is a crash too).
    kinds = ["before-handling", "before-commit", "abandon"]
    crashes = [(rng.randrange(0, 120), kinds[(seed + i) % 3])
               for i in range(rng.randrange(3, 6))]
    runs: list[Run] = []
    while True:
        assert len(runs) < 50, "no progress"
        run = Run(start=broker.committed)
        runs.append(run)
        crash_after, kind = crashes.pop(0) if crashes else (None, "")
        try:
            run.outcome = consume(partition, broker, run, crash_after=crash_after,
                                  crash_kind=kind, rng=rng)
        except Crash:
            run.outcome = "crashed"
        except ConnectionError:
            run.outcome = "commit failed"
        run.end = broker.committed
        if run.outcome == "completed":
            return partition, broker, runs


@pytest.mark.usefixtures("no_thread_leak")
@pytest.mark.parametrize("seed", range(8))
def test_crashes_lose_nothing_and_re_read_only_what_was_not_committed(seed):
    partition, broker, runs = crash_and_restart(seed)
    offsets = [o for o, _ in partition]

    assert len(runs) > 1  # the schedule did crash
    # Commits are monotonic, and the last one covers the whole partition.
    assert broker.history == sorted(set(broker.history))
    assert broker.committed == offsets[-1] + 1

    seen: set[int] = set()
    for i, run in enumerate(runs):
        # Each run reads from the broker's commit, in order, skipping nothing, and never
        # anything below the commit point.
        expected = [o for o in offsets if run.start is None or o >= run.start]
        assert run.handled == expected[:len(run.handled)]
        if i:
            assert run.start == runs[i - 1].end
        seen.update(run.handled)
        # Nothing committed is lost: every offset below the commit has been handled.
        if run.end is not None:
            assert {o for o in offsets if o < run.end} <= seen
            assert run.end <= (max(seen) + 1 if seen else 0)

    # At-least-once: everything handled; what was handled twice is exactly what a run had
    # handled above its last commit when it died (in flight, or not yet committed).
    assert seen == set(offsets)
    for i, run in enumerate(runs):
        later = {o for r in runs[i + 1:] for o in r.handled}
        uncommitted = {o for o in run.handled if run.end is None or o >= run.end}
        assert set(run.handled) & later == uncommitted
