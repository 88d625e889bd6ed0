"""What a commit may say: the offset tracker and the commit-metadata codec (no cluster)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("confluent_kafka", reason="orderedtask.kafka needs confluent-kafka (no "
                    "wheel for this interpreter, e.g. 3.13t or 3.15)")

from orderedtask.kafka._metadata import METADATA_LIMIT, decode, encode  # noqa: E402
from orderedtask.kafka._offsets import OffsetTracker, SkipRanges  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def expand(ranges: list[tuple[int, int]], universe: set[int]) -> set[int]:
    """The offsets of ``universe`` (the received ones) that ``ranges`` cover."""
    return {offset for offset in universe if any(a <= offset <= b for a, b in ranges)}


@st.composite
def partitions(draw: st.DrawFn) -> tuple[int, list[int], list[list[int]]]:
    """A start offset, received offsets with gaps, and the order in which some of them are
    handled (chunks of offsets)."""
    start = draw(st.integers(0, 10**12))
    gaps = draw(st.lists(st.integers(1, 6), max_size=300))
    offsets = []
    offset = start
    for gap in gaps:
        offsets.append(offset)
        offset += gap
    handled = draw(st.permutations(offsets))
    handled = handled[:draw(st.integers(0, len(handled)))]
    chunks = []
    while handled:
        size = draw(st.integers(1, 8))
        chunks.append(handled[:size])
        handled = handled[size:]
    return start, offsets, chunks


def check_tracker(tracker: OffsetTracker, received: list[int], done: set[int],
                  position: int | None) -> int | None:
    committed = tracker.committable(position)
    if not received:
        return committed
    below = [offset for offset in received if offset < (committed or 0)]
    assert set(below) <= done, "a commit must not cover a record that was not handled"
    if done >= set(received):
        assert committed == max(received[-1] + 1, position or 0)
    else:
        assert committed == min(set(received) - done)
        assert tracker.in_flight == len(set(received) - done)
    ranges = tracker.handled_above()
    assert all(a <= b for a, b in ranges)
    assert all(b < c for (_, b), (c, _) in zip(ranges, ranges[1:]))
    assert all(a > committed for a, _ in ranges)
    assert expand(ranges, set(received)) == {o for o in done if o > committed}
    return committed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(partitions(), st.integers(0, 3))
def test_tracker_commits_only_handled_prefixes(case: tuple, extra: int) -> None:
    start, received, chunks = case
    tracker = OffsetTracker(start)
    half = len(received) // 2
    tracker.receive(received[:half])
    tracker.receive(received[half:])
    done: set[int] = set()
    for chunk in chunks:
        tracker.done(chunk)
        done.update(chunk)
        check_tracker(tracker, received, done, None)
    position = received[-1] + 1 + extra if received else None
    check_tracker(tracker, received, done, position)


@settings(max_examples=200, deadline=None)
@given(partitions())
def test_tracker_in_order_handling_takes_the_fast_path(case: tuple) -> None:
    start, received, _ = case
    tracker = OffsetTracker(start)
    tracker.receive(received)
    for begin in range(0, len(received), 7):
        tracker.done(received[begin:begin + 7])
        expected = received[begin + 7] if begin + 7 < len(received) else received[-1] + 1
        assert tracker.committable() == expected
        assert tracker.handled_above() == []


def test_a_trailing_marker_is_committed_past() -> None:
    tracker = OffsetTracker(100)
    tracker.receive([100, 101, 103])  # 102: a transaction marker; 104: the trailing one
    assert tracker.committable(None) == 100
    tracker.done([101, 103])
    assert tracker.committable(105) == 100 and tracker.handled_above() == [(101, 103)]
    tracker.done([100])
    assert tracker.committable(105) == 105  # the consumer's position, past the marker
    assert tracker.committable(None) == 104


def test_tracker_before_anything_is_received() -> None:
    assert OffsetTracker(None).committable() is None
    assert OffsetTracker(7).committable() == 7
    assert OffsetTracker(7).committable(9) == 9


def test_tracker_refuses_offsets_out_of_order_and_counts() -> None:
    tracker = OffsetTracker()
    tracker.receive([5, 6, 9])
    with pytest.raises(ValueError):
        tracker.receive([9])
    tracker.done([5], skipped=True)
    tracker.done([9])
    assert (tracker.handled, tracker.skipped, tracker.in_flight) == (1, 1, 1)
    assert tracker.head_wait() >= 0.0


def test_skip_ranges_split_received_batches() -> None:
    skip = SkipRanges([(10, 12), (20, 20)])
    assert skip
    assert skip.split([8, 9, 10, 11]) == ([0, 1], [2, 3])
    assert skip.split([12, 15, 20, 21]) == ([1, 3], [0, 2])
    assert not skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(partitions(), st.sampled_from([64, 200, 1000, METADATA_LIMIT]))
def test_metadata_round_trip_within_the_limit_and_never_skips_what_was_not_handled(
        case: tuple, limit: int) -> None:
    start, received, chunks = case
    tracker = OffsetTracker(start)
    tracker.receive(received)
    done = set()
    for chunk in chunks:
        tracker.done(chunk)
        done.update(chunk)
    committed = tracker.committable()
    if committed is None:
        return
    ranges = tracker.handled_above()
    text = encode(committed, ranges, limit)
    assert len(text) <= limit and text.isascii()
    got = decode(text, committed)
    universe = set(received)
    skipped = expand(got, universe)
    assert skipped <= done and all(offset > committed for offset in skipped)
    if len(text) < limit - 40:  # nothing had to be left out
        assert skipped == expand(ranges, universe)
    assert decode(text, committed + 1) == []  # another committed offset: replay everything


@given(st.text(max_size=200), st.integers(0, 10**6))
def test_metadata_that_does_not_decode_means_replay(text: str, committed: int) -> None:
    got = decode(text, committed)
    assert got == [] or text.startswith("ot1")


@settings(max_examples=200, deadline=None)
@given(partitions(), st.data())
def test_a_damaged_metadata_string_never_skips_more(case: tuple, data: st.DataObject) -> None:
    start, received, chunks = case
    done = {offset for chunk in chunks for offset in chunk}
    tracker = OffsetTracker(start)
    tracker.receive(received)
    for chunk in chunks:
        tracker.done(chunk)
    committed = tracker.committable()
    if committed is None:
        return
    text = encode(committed, tracker.handled_above())
    index = data.draw(st.integers(0, len(text) - 1))
    char = data.draw(st.sampled_from("0123456789abcz.,:-_=r"))
    damaged = text[:index] + char + text[index + 1:]
    assert expand(decode(damaged, committed), set(received)) <= done


def test_metadata_examples() -> None:
    assert encode(100, []) == encode(100, [])
    assert decode(encode(100, []), 100) == []
    text = encode(100, [(102, 102), (105, 109)])
    assert text.startswith("ot1") and decode(text, 100) == [(102, 102), (105, 109)]
    assert decode("", 100) == [] and decode(None, 100) == []
    assert decode("ot2r:2s::00000000", 100) == []
    with pytest.raises(ValueError):
        encode(100, [(100, 101)])  # the committed offset itself is never handled


def test_metadata_degrades_to_a_prefix_when_the_map_is_too_big() -> None:
    rng = random.Random(5)
    offsets = sorted(rng.sample(range(1000, 400_000), 20_000))  # 20,000 lone records
    ranges = [(offset, offset) for offset in offsets]
    text = encode(999, ranges)
    assert len(text) <= METADATA_LIMIT
    got = decode(text, 999)
    assert got and got == ranges[:len(got)] and len(got) < len(ranges)
