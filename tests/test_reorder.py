"""The reorder core, on both twins (``buffer_cls``): semantics, counters, every invalid input."""

from __future__ import annotations

import gc
import random
import re
import sys
import threading
import weakref

import pytest

from support import NO_EXTENSIONS, load_twin

MAX_INDEX = 2**64 - 1


def snapshot(buf) -> tuple:
    return (len(buf), buf.head, buf.last_released,
            buf.accepted, buf.finished, buf.released, buf.held)


def accept_all(buf, *indices: int) -> None:
    for index in indices:
        buf.accept(index)


# -- semantics ---------------------------------------------------------------------------


def test_empty_buffer(buffer_cls):
    buf = buffer_cls()
    assert snapshot(buf) == (0, None, None, 0, 0, 0, 0)
    assert buf.release() == []
    assert buf.clear() == 0


def test_in_order_finish_releases_immediately(buffer_cls):
    buf = buffer_cls()
    accept_all(buf, 0, 1, 2)
    for index in range(3):
        buf.finish(index, f"item{index}")
        assert buf.release() == [f"item{index}"]
        assert buf.last_released == index
    assert snapshot(buf) == (0, None, 2, 3, 3, 3, 0)


def test_out_of_order_finish_waits_for_lowest_pending(buffer_cls):
    buf = buffer_cls()
    accept_all(buf, 0, 1, 2, 3)
    buf.finish(2, "c")
    buf.finish(1, "b")
    assert buf.release() == []
    assert snapshot(buf) == (4, 0, None, 4, 2, 0, 2)
    buf.finish(0, "a")
    assert buf.release() == ["a", "b", "c"]  # 3 is pending, not finished: the run stops there
    assert snapshot(buf) == (1, 3, 2, 4, 3, 3, 0)
    buf.finish(3, "d")
    assert buf.release() == ["d"]
    assert snapshot(buf) == (0, None, 3, 4, 4, 4, 0)


def test_release_without_pending_finish_is_empty_and_repeatable(buffer_cls):
    buf = buffer_cls()
    accept_all(buf, 0, 1)
    buf.finish(0, "a")
    assert buf.release() == ["a"]
    assert buf.release() == []
    assert buf.release() == []
    assert snapshot(buf) == (1, 1, 0, 2, 1, 1, 0)


def test_gaps_are_legal(buffer_cls):
    buf = buffer_cls()
    accept_all(buf, 3, 10, 11, 1000)
    assert buf.head == 3
    buf.finish(1000, "z")
    buf.finish(10, "b")
    assert buf.release() == []
    buf.finish(3, "a")
    assert buf.release() == ["a", "b"]
    assert (buf.head, buf.last_released) == (11, 10)
    buf.finish(11, "c")
    assert buf.release() == ["c", "z"]
    assert snapshot(buf) == (0, None, 1000, 4, 4, 4, 0)


def test_accept_in_any_order_above_last_released(buffer_cls):
    buf = buffer_cls()
    accept_all(buf, 50, 7, 20)
    assert buf.head == 7
    buf.finish(7, "x")
    assert buf.release() == ["x"]
    buf.accept(8)  # lower than pending 20 and 50, higher than the last released 7: legal
    assert buf.head == 8
    for index in (20, 8, 50):
        buf.finish(index, index)
    assert buf.release() == [8, 20, 50]


def test_items_are_returned_by_identity_and_none_is_an_item(buffer_cls):
    buf = buffer_cls()
    items = [object(), None, [], None]
    accept_all(buf, *range(4))
    for index in (3, 1, 2, 0):
        buf.finish(index, items[index])
    released = buf.release()
    assert len(released) == 4
    assert all(got is want for got, want in zip(released, items))


def test_largest_index(buffer_cls):
    buf = buffer_cls()
    accept_all(buf, MAX_INDEX, MAX_INDEX - 1)
    assert buf.head == MAX_INDEX - 1
    buf.finish(MAX_INDEX, "last")
    buf.finish(MAX_INDEX - 1, "before")
    assert buf.release() == ["before", "last"]
    assert buf.last_released == MAX_INDEX
    with pytest.raises(ValueError, match=f"task index 0 is not greater .* {MAX_INDEX}"):
        buf.accept(0)


def test_int_subclass_is_an_index(buffer_cls):
    class Offset(int):
        pass

    buf = buffer_cls()
    buf.accept(Offset(4))
    buf.finish(4, "a")
    assert buf.release() == ["a"]
    assert buf.last_released == 4 and type(buf.last_released) is int


def test_long_run_released_at_once(buffer_cls):
    """A run longer than the compiled core's no-GIL threshold (4096) comes out whole."""
    buf = buffer_cls()
    count = 10_000
    accept_all(buf, *range(1, count + 1))
    for index in range(count, 1, -1):
        buf.finish(index, index)
    assert buf.release() == []
    assert buf.held == count - 1
    buf.finish(1, 1)
    assert buf.release() == list(range(1, count + 1))
    assert snapshot(buf) == (0, None, count, count, count, count, 0)


def test_int_subclass_is_stored_by_value_whatever_int_says(buffer_cls):
    class Lying(int):
        def __int__(self):
            return 99

    buf = buffer_cls()
    buf.accept(Lying(3))
    assert buf.head == 3
    buf.finish(3, "a")
    assert buf.release() == ["a"]


def test_constructor_takes_no_arguments(buffer_cls):
    with pytest.raises(TypeError):
        buffer_cls(1)
    with pytest.raises(TypeError):
        buffer_cls(size=1)


def test_counters_over_a_longer_run(buffer_cls):
    buf = buffer_cls()
    order = list(range(100))
    random.Random(7).shuffle(order)
    accept_all(buf, *range(100))
    released = []
    for done, index in enumerate(order, 1):
        buf.finish(index, index)
        assert buf.finished == done
        assert buf.held == done - len(released)
        released += buf.release()
        assert buf.released == len(released)
        assert len(buf) == 100 - len(released)
        assert buf.held == done - len(released)
    assert released == list(range(100))


def test_clear_drops_pending_keeps_counters_and_watermark(buffer_cls):
    buf = buffer_cls()
    accept_all(buf, 0, 1, 2, 5, 9)
    buf.finish(0, "a")
    assert buf.release() == ["a"]
    buf.finish(5, "f")
    assert buf.clear() == 4
    assert snapshot(buf) == (0, None, 0, 5, 2, 1, 0)
    assert buf.release() == []
    with pytest.raises(ValueError, match="task index 5 is not pending"):
        buf.finish(5, "again")
    with pytest.raises(ValueError, match="task index 0 is not greater"):
        buf.accept(0)
    buf.accept(1)  # dropped, but above last_released: accepted again
    buf.finish(1, "b")
    assert buf.release() == ["b"]


def test_clear_and_release_free_items(buffer_cls):
    class Item:
        pass

    buf = buffer_cls()
    kept, dropped = Item(), Item()
    baseline = sys.getrefcount(kept)
    accept_all(buf, 0, 1)
    buf.finish(0, kept)
    buf.finish(1, dropped)
    assert sys.getrefcount(kept) == baseline + 1
    assert buf.release() == [kept, dropped]
    assert sys.getrefcount(kept) == baseline
    gone = weakref.ref(dropped)
    buf.accept(2)
    buf.finish(2, dropped)
    del dropped
    assert buf.clear() == 1
    gc.collect()
    assert gone() is None


def test_dropping_the_buffer_frees_its_items(buffer_cls):
    class Item:
        pass

    buf = buffer_cls()
    item = Item()
    gone = weakref.ref(item)
    buf.accept(1)
    buf.finish(1, item)
    del item, buf
    gc.collect()
    assert gone() is None


def test_item_finaliser_may_call_back_during_clear(buffer_cls):
    buf = buffer_cls()
    seen = []

    class CallsBack:
        def __del__(self):
            seen.append(len(buf))

    def scenario():
        buf.accept(0)
        buf.finish(0, CallsBack())
        buf.clear()

    worker = threading.Thread(target=scenario, daemon=True)  # a deadlock fails, not hangs
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "clear() deadlocked when an item's finaliser called back"
    assert seen == [0]


def test_properties_are_read_only(buffer_cls):
    buf = buffer_cls()
    for name in ("head", "last_released", "accepted", "finished", "released", "held"):
        with pytest.raises(AttributeError):
            setattr(buf, name, 1)


# -- invalid input -----------------------------------------------------------------------


def make_busy_buffer(buffer_cls):
    """last_released 2; pending 5 (finished), 7 and 9 (not finished)."""
    buf = buffer_cls()
    accept_all(buf, 0, 1, 2)
    for index in range(3):
        buf.finish(index, index)
    assert buf.release() == [0, 1, 2]
    accept_all(buf, 5, 7, 9)
    buf.finish(5, 5)
    return buf


def drain_busy_buffer(buf) -> None:
    """The buffer still works: the pending 7 and 9 finish and 5, 7, 9 come out."""
    buf.finish(9, 9)
    buf.finish(7, 7)
    assert buf.release() == [5, 7, 9]
    buf.accept(10)
    buf.finish(10, 10)
    assert buf.release() == [10]


BAD_INDICES = [
    pytest.param(True, TypeError, "must be an int, not bool (True)", id="True"),
    pytest.param(False, TypeError, "must be an int, not bool (False)", id="False"),
    pytest.param(7.0, TypeError, "must be an int, not float (7.0)", id="float"),
    pytest.param("7", TypeError, "must be an int, not str ('7')", id="str"),
    pytest.param(None, TypeError, "must be an int, not NoneType (None)", id="None"),
    pytest.param(-1, ValueError, "task index -1 is negative", id="negative"),
    pytest.param(-(2**70), ValueError, f"task index {-(2**70)} is negative", id="very-negative"),
    pytest.param(2**64, OverflowError, f"task index {2**64} does not fit in 64 bits", id="2**64"),
    pytest.param(2**100, OverflowError, f"task index {2**100} does not fit", id="2**100"),
]

BAD_ACCEPTS = BAD_INDICES + [
    pytest.param(5, ValueError, "task index 5 is already pending", id="duplicate-finished"),
    pytest.param(7, ValueError, "task index 7 is already pending", id="duplicate-unfinished"),
    pytest.param(2, ValueError, "task index 2 is not greater than the last released index 2",
                 id="equal-last-released"),
    pytest.param(0, ValueError, "task index 0 is not greater than the last released index 2",
                 id="behind-last-released"),
]

BAD_FINISHES = BAD_INDICES + [
    pytest.param(6, ValueError, "task index 6 is not pending", id="never-accepted"),
    pytest.param(1, ValueError, "task index 1 is not pending", id="released"),
    pytest.param(100, ValueError, "task index 100 is not pending", id="beyond"),
    pytest.param(5, ValueError, "task index 5 is already finished", id="already-finished"),
]


@pytest.mark.parametrize(("index", "error", "message"), BAD_ACCEPTS)
def test_bad_accept_raises_and_changes_nothing(buffer_cls, index, error, message):
    buf = make_busy_buffer(buffer_cls)
    before = snapshot(buf)
    with pytest.raises(error, match=re.escape(message)):
        buf.accept(index)
    assert snapshot(buf) == before
    drain_busy_buffer(buf)


@pytest.mark.parametrize(("index", "error", "message"), BAD_FINISHES)
def test_bad_finish_raises_and_changes_nothing(buffer_cls, index, error, message):
    buf = make_busy_buffer(buffer_cls)
    before = snapshot(buf)
    with pytest.raises(error, match=re.escape(message)):
        buf.finish(index, "bad")
    assert snapshot(buf) == before
    drain_busy_buffer(buf)


def test_finish_twice_keeps_the_first_item(buffer_cls):
    buf = buffer_cls()
    buf.accept(0)
    buf.finish(0, "first")
    with pytest.raises(ValueError, match="task index 0 is already finished"):
        buf.finish(0, "second")
    assert snapshot(buf) == (1, 0, None, 1, 1, 0, 1)
    assert buf.release() == ["first"]


# -- the twins agree -----------------------------------------------------------------------


ODD_INDICES = [True, False, 1.5, "3", None, -1, -(2**65), 2**64, 2**64 + 5]


def pick_index(rng: random.Random, kind: str, reference, known: list[int]):
    """An index for ``kind``: mostly plausible (near the watermark, or accepted before)."""
    roll = rng.random()
    if roll < 0.04:
        return rng.choice(ODD_INDICES)
    if roll < 0.06:
        return MAX_INDEX - rng.randrange(3)
    if kind == "finish" and known and roll < 0.75:
        return reference.head if roll < 0.25 and reference.head is not None else rng.choice(
            known[-40:])
    return (reference.last_released or 0) + rng.randrange(-3, 30)


def apply(buf, kind: str, index) -> tuple:
    try:
        if kind == "accept":
            result = buf.accept(index)
        elif kind == "finish":
            result = buf.finish(index, ("item", index))
        elif kind == "release":
            result = buf.release()
        else:
            result = buf.clear()
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome compared
        result = (type(exc), str(exc))
    return result, snapshot(buf)


@pytest.mark.skipif(NO_EXTENSIONS, reason="ORDEREDTASK_NO_EXTENSIONS is set")
@pytest.mark.parametrize("seed", range(8))
def test_twins_agree_on_random_operations(seed):
    """Identical operation sequences on both twins give identical results, errors and state."""
    rng = random.Random(seed)
    compiled, reference = load_twin("c").ReorderBuffer(), load_twin("py").ReorderBuffer()
    known: list[int] = []  # indices accepted at some point
    for step in range(3000):
        kind = rng.choices(["accept", "finish", "release", "clear"], [40, 40, 19, 1])[0]
        index = pick_index(rng, kind, reference, known)
        want = apply(reference, kind, index)
        got = apply(compiled, kind, index)
        assert got == want, f"step {step}: {kind}({index!r})"
        if kind == "accept" and want[0] is None:
            known.append(index)
