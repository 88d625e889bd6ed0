"""Stateful fuzzing of one ReorderBuffer against a trivially correct model, on both twins.

``ORDEREDTASK_FUZZ=long`` turns the quick default run into a long one (200,000 examples;
``ORDEREDTASK_FUZZ_EXAMPLES=N`` sets another count).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

LIMIT = 2**64
LONG = os.environ.get("ORDEREDTASK_FUZZ") == "long"

SETTINGS = settings(
    max_examples=int(os.environ.get("ORDEREDTASK_FUZZ_EXAMPLES", 200_000)) if LONG else 200,
    stateful_step_count=50,
    deadline=None,  # no timing assertions; the long run has no deadline either
    database=None,  # write nothing outside tests/
    suppress_health_check=[HealthCheck.too_slow],
)

# pytest-timeout (300 s in pyproject.toml) would cut the long run short.
pytestmark = [pytest.mark.timeout(0)] if LONG else []

UNFINISHED = object()  # model: pending, no item yet

INVALID = st.one_of(
    st.booleans(), st.none(), st.sampled_from(["3", "", "x"]),
    st.floats(allow_nan=False, min_value=-5, max_value=2.0**65),
    st.integers(max_value=-1), st.integers(min_value=LIMIT, max_value=LIMIT * 4),
)
NEAR_TOP = st.integers(min_value=LIMIT - 4, max_value=LIMIT - 1)


def weighted(**weights: int) -> st.SearchStrategy[str]:
    """A strategy over the names, drawn in proportion to their weights."""
    return st.sampled_from([name for name, weight in weights.items() for _ in range(weight)])


ACCEPT_KINDS = weighted(fresh=5, behind=1, pending=1, top=1, invalid=1)
FINISH_KINDS = weighted(pending=4, head=2, near=1, top=1, invalid=1)


def expected_index_error(index) -> tuple[type, str] | None:
    """The error any method raises for ``index`` before looking at the buffer's state."""
    if type(index) is bool or not isinstance(index, int):
        return TypeError, repr(index)
    if index < 0:
        return ValueError, f"task index {index} is negative"
    if index >= LIMIT:
        return OverflowError, f"task index {index} does not fit in 64 bits"
    return None


class ReorderModel(RuleBasedStateMachine):
    """Subclassed per twin with ``buffer_cls`` set."""

    buffer_cls: type

    def __init__(self) -> None:
        super().__init__()
        self.buf = self.buffer_cls()
        self.pending: dict[int, object] = {}  # index -> item, or UNFINISHED
        self.last_released: int | None = None
        self.accepted = self.finished = self.released = 0
        self.serial = 0

    # -- helpers ---------------------------------------------------------------------------

    def base(self) -> int:
        return 0 if self.last_released is None else self.last_released + 1

    def expect_error(self, call, error: type, text: str) -> None:
        before = self.observed()
        try:
            call()
        except error as exc:
            assert text in str(exc), f"{text!r} not in {str(exc)!r}"
        else:
            raise AssertionError(f"expected {error.__name__} mentioning {text!r}")
        assert self.observed() == before, "a failed call changed the buffer"

    def observed(self) -> tuple:
        buf = self.buf
        return (len(buf), buf.head, buf.last_released,
                buf.accepted, buf.finished, buf.released, buf.held)

    # -- rules -----------------------------------------------------------------------------

    def draw_index(self, data, kind: str):
        base = self.base()
        pending = sorted(self.pending)
        if kind in ("pending", "head") and not pending:
            kind = "fresh"
        strategy = {
            "fresh": st.integers(min_value=base, max_value=base + 20),  # or a duplicate
            "near": st.integers(min_value=max(0, base - 5), max_value=base + 20),
            "behind": st.integers(min_value=0, max_value=base),
            "pending": st.sampled_from(pending or [0]),
            "head": st.just(pending[0] if pending else 0),
            "top": NEAR_TOP,
            "invalid": INVALID,
        }[kind]
        return data.draw(strategy, label=f"{kind} index")

    @rule(data=st.data())
    def accept(self, data) -> None:
        index = self.draw_index(data, data.draw(ACCEPT_KINDS, label="kind"))
        failure = expected_index_error(index)
        if failure is None and self.last_released is not None and index <= self.last_released:
            failure = ValueError, f"task index {index} is not greater than the last released"
        if failure is None and index in self.pending:
            failure = ValueError, f"task index {index} is already pending"
        if failure is not None:
            self.expect_error(lambda: self.buf.accept(index), *failure)
            return
        assert self.buf.accept(index) is None
        self.pending[index] = UNFINISHED
        self.accepted += 1

    @rule(data=st.data())
    def finish(self, data) -> None:
        index = self.draw_index(data, data.draw(FINISH_KINDS, label="kind"))
        self.serial += 1
        item = ("item", index, self.serial)
        failure = expected_index_error(index)
        if failure is None and index not in self.pending:
            failure = ValueError, f"task index {index} is not pending"
        if failure is None and self.pending[index] is not UNFINISHED:
            failure = ValueError, f"task index {index} is already finished"
        if failure is not None:
            self.expect_error(lambda: self.buf.finish(index, item), *failure)
            return
        assert self.buf.finish(index, item) is None
        self.pending[index] = item
        self.finished += 1

    @rule()
    def release(self) -> None:
        expected = []
        for index in sorted(self.pending):
            if self.pending[index] is UNFINISHED:
                break
            expected.append(self.pending.pop(index))
            self.last_released = index
        got = self.buf.release()
        assert type(got) is list
        assert len(got) == len(expected) and all(a is b for a, b in zip(got, expected)), (
            got, expected)
        self.released += len(expected)

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def finish_all_then_release(self, data) -> None:
        """Finish every pending index in a drawn order: the whole buffer drains."""
        order = data.draw(st.permutations(sorted(self.pending)), label="order")
        for index in order:
            if self.pending[index] is UNFINISHED:
                self.serial += 1
                self.pending[index] = ("item", index, self.serial)
                self.buf.finish(index, self.pending[index])
                self.finished += 1
        self.release()
        assert not self.pending

    @rule(data=st.data())
    def accept_several(self, data) -> None:
        """Accept a few fresh indices, in a drawn order, with gaps."""
        base = self.base()
        fresh = [i for i in range(base, base + 12) if i not in self.pending and i < LIMIT]
        chosen = data.draw(st.lists(st.sampled_from(fresh), min_size=1, max_size=6, unique=True)
                           if fresh else st.just([]), label="indices")
        for index in chosen:
            self.buf.accept(index)
            self.pending[index] = UNFINISHED
            self.accepted += 1

    @rule(data=st.data())
    def clear(self, data) -> None:
        if data.draw(st.integers(0, 3), label="clear?") != 3:  # rarely: it empties the model
            return
        assert self.buf.clear() == len(self.pending)
        self.pending.clear()

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def state_matches_model(self) -> None:
        ready = sum(item is not UNFINISHED for item in self.pending.values())
        assert self.observed() == (
            len(self.pending), min(self.pending, default=None), self.last_released,
            self.accepted, self.finished, self.released, ready,
        )


def test_reorder_buffer_matches_model(buffer_cls):
    machine = type(f"ReorderModel_{buffer_cls.__module__.rsplit('.', 1)[-1]}",
                   (ReorderModel,), {"buffer_cls": buffer_cls})
    run_state_machine_as_test(machine, settings=SETTINGS)
