"""Per-partition offset tracking: what was received, what was handled, what may be committed.

Invariant: every offset below ``committable()`` was either handled or never received (it does
not exist: a transaction marker, a compacted record, or one the metadata of the last commit
recorded as handled), so committing it re-reads nothing that was handled in order before it,
and never skips what was not.
"""

from __future__ import annotations

import bisect
import time

__all__ = ["OffsetTracker", "SkipRanges"]


class SkipRanges:
    """Offsets recorded as handled above the committed offset (from the commit metadata).

    ``ranges`` are sorted, disjoint, inclusive ``(first, last)`` pairs. Records are received
    in ascending offset order, so ``split`` walks them with a cursor.
    """

    __slots__ = ("_ranges", "_next")

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self._ranges = ranges
        self._next = 0

    def __bool__(self) -> bool:
        return self._next < len(self._ranges)

    def split(self, offsets: list[int]) -> tuple[list[int], list[int]]:
        """Indices into ``offsets`` (ascending) to run, and those to skip as already handled."""
        run: list[int] = []
        skip: list[int] = []
        ranges, i = self._ranges, self._next
        for index, offset in enumerate(offsets):
            while i < len(ranges) and ranges[i][1] < offset:
                i += 1
            if i < len(ranges) and ranges[i][0] <= offset:
                skip.append(index)
            else:
                run.append(index)
        self._next = i
        return run, skip


class OffsetTracker:
    """Received and handled offsets of one partition (one assignment of it).

    ``receive`` is called in ascending offset order; ``done`` in any order, each received
    offset at most once. Not thread-safe: the consumer calls it under its partition's lock.

    ``committable(position)`` is the next offset to read: the lowest received offset not yet
    handled, or, when everything received is handled, the consumer's ``position`` (which lies
    past trailing transaction markers), never less than one past the last received offset, nor
    less than ``start``. ``handled_above()`` lists the handled offsets above it, as inclusive
    ranges over the received offsets, for the commit metadata.
    """

    __slots__ = ("start", "_received", "_head", "_done", "_batches", "handled", "skipped",
                 "_last")

    def __init__(self, start: int | None = None) -> None:
        self.start = start  # the committed offset at assignment (None: none known yet)
        self._received: list[int] = []  # ascending; [_head:] are not yet behind the commit
        self._head = 0
        self._done: set[int] = set()  # handled offsets in _received[_head:]
        self._batches: list[tuple[int, float]] = []  # (first offset, monotonic time received)
        self.handled = 0  # how many records were handled (skipped ones not included)
        self.skipped = 0  # how many were skipped as handled already (commit metadata)
        self._last: int | None = None  # the highest offset received

    def receive(self, offsets: list[int]) -> None:
        """Offsets just consumed, ascending and above every offset received before."""
        if not offsets:
            return
        if self._last is not None and offsets[0] <= self._last:
            raise ValueError(f"offset {offsets[0]} received after {self._last}")
        self._received.extend(offsets)
        self._batches.append((offsets[0], time.monotonic()))
        self._last = offsets[-1]

    def done(self, offsets: list[int], *, skipped: bool = False) -> None:
        """Offsets (received, not yet done) that are now handled."""
        self._done.update(offsets)
        if skipped:
            self.skipped += len(offsets)
        else:
            self.handled += len(offsets)

    def done_one(self, offset: int) -> None:
        """One received offset (not yet done) that is now handled."""
        self._done.add(offset)
        self.handled += 1

    @property
    def in_flight(self) -> int:
        """Received and not yet handled."""
        return len(self._received) - self._head - len(self._done)

    def _advance(self) -> None:
        received, done, head = self._received, self._done, self._head
        count = len(done)
        if not count:
            return
        # Handled in offset order (ordering="partition"): ``done`` is exactly the next
        # ``count`` received offsets when its maximum is the count-th of them (offsets are
        # distinct and ascending), so the head moves in one step.
        if head + count <= len(received) and received[head + count - 1] == max(done):
            head += count
            done.clear()
        else:
            end = len(received)
            while head < end and received[head] in done:
                done.discard(received[head])
                head += 1
        self._head = head
        if head > 4096 and head * 2 > len(received):
            del received[:head]  # keep the list from growing without bound
            head = self._head = 0
        if self._batches:
            first = received[head] if head < len(received) else None
            batches = self._batches
            if first is None:
                batches.clear()
            else:
                # Keep the batch holding the head (its time is the head's wait).
                keep = bisect.bisect_right(batches, (first, float("inf"))) - 1
                if keep > 0:
                    del batches[:keep]

    def committable(self, position: int | None = None) -> int | None:
        """The offset to commit (see the class docstring); None before anything is known."""
        self._advance()
        if self._head < len(self._received):
            return self._received[self._head]
        candidates = [o for o in (self.start, position,
                                  None if self._last is None else self._last + 1)
                      if o is not None and o >= 0]
        return max(candidates) if candidates else None

    def handled_above(self) -> list[tuple[int, int]]:
        """Handled offsets above ``committable()``, as inclusive ranges of received offsets.

        Offsets between two received ones do not exist (gaps), so a range spans them freely;
        a received, unhandled offset always ends a range.
        """
        self._advance()
        done = self._done
        if not done:
            return []
        ranges: list[tuple[int, int]] = []
        first = last = -1
        left = len(done)
        received = self._received
        for index in range(self._head, len(received)):
            offset = received[index]
            if offset in done:
                if first < 0:
                    first = offset
                last = offset
                left -= 1
                if not left:
                    break
            elif first >= 0:
                ranges.append((first, last))
                first = -1
        if first >= 0:
            ranges.append((first, last))
        return ranges

    def head_wait(self, now: float | None = None) -> float:
        """Seconds the lowest unhandled received record has been waiting (0.0 if none)."""
        self._advance()
        if self._head >= len(self._received) or not self._batches:
            return 0.0
        return max(0.0, (time.monotonic() if now is None else now) - self._batches[0][1])
