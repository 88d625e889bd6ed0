"""``ReorderBuffer``: two min-heaps over unsigned 64-bit indices, the specification of
``_reorder.pxi`` (same names, signatures, docstrings and errors).

The engine keeps its own reorder state; this buffer is the stand-alone form, for code that
finishes items out of order and releases them in order (one per Kafka partition, say).
"""

from __future__ import annotations

import threading
from heapq import heappop, heappush
from typing import Any

__all__ = ["ReorderBuffer", "as_index"]

_LIMIT = 2**64
_NOT_FINISHED = object()


def as_index(index: object) -> int:
    """``index`` as a task index: an ``int`` (not a ``bool``) in ``[0, 2**64)``, else raises."""
    if type(index) is not int:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"task index must be an int, not {type(index).__name__} ({index!r})")
        index = int.__int__(index)  # the stored value, whatever the subclass overrides
    if index < 0:
        raise ValueError(f"task index {index} is negative; indices must be in [0, 2**64)")
    if index >= _LIMIT:
        raise OverflowError(f"task index {index} does not fit in 64 bits; indices must be < 2**64")
    return index


class ReorderBuffer:
    """Releases finished items in ascending index order.

    Invariant: an index is *pending* from ``accept`` until ``release`` hands its item back;
    ``release`` returns the longest run whose lowest finished index equals the lowest pending
    index. Indices need not be contiguous (gaps are legal), but each must be greater than the
    last released index and not pending already.

    Thread safety: every method and property may be called from any thread; one mutex per
    buffer serialises them.
    """

    __slots__ = (
        "_lock", "_pending_heap", "_finished_heap", "_slots", "_last_released",
        "_accepted", "_finished", "_released",
    )

    def __init__(self) -> None:
        # _lock protects every field below.
        self._lock = threading.Lock()
        self._pending_heap: list[int] = []
        self._finished_heap: list[int] = []
        self._slots: dict[int, Any] = {}
        self._last_released: int | None = None
        self._accepted = 0
        self._finished = 0
        self._released = 0

    def accept(self, index: int) -> None:
        """Register ``index`` as pending; its item is released only once it is finished.

        Raises ``TypeError`` (not an int, or a bool), ``ValueError`` (negative, not greater
        than the last released index, or already pending) or ``OverflowError`` (>= 2**64).
        The buffer is unchanged when it raises.
        """
        value = as_index(index)
        with self._lock:
            if self._last_released is not None and value <= self._last_released:
                raise ValueError(
                    f"task index {index} is not greater than the last released index "
                    f"{self._last_released}")
            if value in self._slots:
                raise ValueError(f"task index {index} is already pending (duplicate index)")
            heappush(self._pending_heap, value)
            self._slots[value] = _NOT_FINISHED
            self._accepted += 1

    def finish(self, index: int, item: Any) -> None:
        """Store ``item`` as the result of the pending ``index``.

        Raises ``ValueError`` if ``index`` is not pending or already finished, and the index
        errors of ``accept``. The buffer is unchanged when it raises.
        """
        value = as_index(index)
        with self._lock:
            slot = self._slots.get(value, None)
            if value not in self._slots:
                raise ValueError(f"task index {index} is not pending (never accepted, or released)")
            if slot is not _NOT_FINISHED:
                raise ValueError(f"task index {index} is already finished")
            heappush(self._finished_heap, value)
            self._slots[value] = item
            self._finished += 1

    def release(self) -> list[Any]:
        """Remove and return, in ascending index order, every item that is now releasable."""
        items: list[Any] = []
        with self._lock:
            finished, pending, slots = self._finished_heap, self._pending_heap, self._slots
            while finished and pending and finished[0] == pending[0]:
                value = heappop(finished)
                heappop(pending)
                items.append(slots.pop(value))
                self._last_released = value
                self._released += 1
        return items

    def clear(self) -> int:
        """Drop every pending index and finished item; return how many were pending.

        Counters and ``last_released`` are kept, so dropped indices are not accepted again
        unless they are above ``last_released``.
        """
        with self._lock:
            dropped = len(self._slots)
            items = self._slots
            self._slots = {}
            self._pending_heap = []
            self._finished_heap = []
        del items  # dropped outside the lock: an item's finaliser may call back in
        return dropped

    def __len__(self) -> int:
        """Number of pending indices (accepted, not yet released)."""
        with self._lock:
            return len(self._slots)

    @property
    def head(self) -> int | None:
        """The lowest pending index, or None."""
        with self._lock:
            return self._pending_heap[0] if self._pending_heap else None

    @property
    def last_released(self) -> int | None:
        """The highest index released so far, or None."""
        with self._lock:
            return self._last_released

    @property
    def accepted(self) -> int:
        """How many indices were ever accepted."""
        with self._lock:
            return self._accepted

    @property
    def finished(self) -> int:
        """How many items were ever finished."""
        with self._lock:
            return self._finished

    @property
    def released(self) -> int:
        """How many items were ever released."""
        with self._lock:
            return self._released

    @property
    def held(self) -> int:
        """How many finished items wait for a lower index to finish (or for ``release``)."""
        with self._lock:
            return len(self._finished_heap)
