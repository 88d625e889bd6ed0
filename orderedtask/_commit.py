"""``OffsetCommitter``: given a pool's watermark, decides what to commit to Kafka, and when."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def _check_offset(name: str, value: object, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


class OffsetCommitter:
    """Commits ``watermark + 1`` (Kafka's "next offset to read") every so often.

    Call ``update(pool.watermark)`` from the thread iterating ``results()``, *after* handling
    each task (or with a watermark that thread published after handling: see below). It calls
    ``commit(watermark + 1)`` once the watermark has moved past the last commit and either
    ``every`` offsets have been handled since it (offsets, not messages: a gap counts), or
    ``interval`` seconds have passed since it (read from ``clock``). ``every=None`` or
    ``interval=None`` turns that trigger off. Call ``flush(watermark)`` on shutdown and when
    the partition is revoked: it commits whatever was handled, due or not.

    ``committed`` is the next offset already committed (e.g. the group's committed offset on
    assignment), or None when unknown; the committer never commits at or below it.

    Guarantees: a commit never goes backwards, never repeats a value, and is never above
    ``watermark + 1``, so with a watermark read after handling it never covers an offset that
    was not handled (at-least-once: after a crash, the offsets from the last commit on are
    read again). If ``commit`` raises, the exception propagates and the committer is left as
    it was, so the next ``update``/``flush`` tries that commit again.

    Thread safety: ``update``, ``flush`` and ``committed`` may be called from any thread. A
    lock serialises them and is held while ``commit`` runs, so commits happen one at a time
    and in increasing order; ``commit`` must not call back into the committer. A watermark
    must still be a safe one: ``pool.watermark`` read by another thread than the consumer's
    may include the task the consumer is handling right now, so a second thread should pass
    a value the consumer thread recorded after handling (as ``examples/kafka_consumer.py``
    does).
    """

    __slots__ = ("_commit", "_every", "_interval", "_clock", "_lock", "_committed", "_origin",
                 "_since")

    def __init__(
        self,
        commit: Callable[[int], object],
        *,
        every: int | None = 1000,
        interval: float | None = 5.0,
        clock: Callable[[], float] = time.monotonic,
        committed: int | None = None,
    ) -> None:
        if not callable(commit):
            raise TypeError(f"commit must be callable, not {type(commit).__name__}")
        if every is not None:
            if isinstance(every, bool) or not isinstance(every, int):
                raise TypeError(f"every must be an int or None, not {type(every).__name__}")
            if every < 1:
                raise ValueError(f"every must be >= 1, got {every}")
        if interval is not None:
            if isinstance(interval, bool) or not isinstance(interval, (int, float)):
                raise TypeError(
                    f"interval must be a number of seconds or None, not {type(interval).__name__}")
            if not interval >= 0:  # also rejects NaN
                raise ValueError(f"interval must be >= 0, got {interval}")
        if not callable(clock):
            raise TypeError(f"clock must be callable, not {type(clock).__name__}")
        _check_offset("committed", committed)
        self._commit = commit
        self._every = every
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._committed = committed
        # Where ``every`` counts from while nothing is committed: the first watermark seen.
        self._origin = committed
        self._since = clock()

    @property
    def committed(self) -> int | None:
        """The last next-offset committed (or given as ``committed``); None before any."""
        return self._committed

    def update(self, watermark: int | None) -> int | None:
        """Commit ``watermark + 1`` if a commit is due; return the offset committed, or None."""
        _check_offset("watermark", watermark)
        if watermark is None:
            return None
        with self._lock:
            offset = watermark + 1
            if not self._is_new_locked(offset):
                return None  # nothing new handled: no commit, however long it has been
            if self._origin is None:
                self._origin = watermark
            due = self._every is not None and offset - self._origin >= self._every
            if not due and self._interval is not None:
                due = self._clock() - self._since >= self._interval
            if not due:
                return None
            return self._commit_locked(offset)

    def flush(self, watermark: int | None) -> int | None:
        """Commit ``watermark + 1`` now if it is above the last commit; return it, or None."""
        _check_offset("watermark", watermark)
        if watermark is None:
            return None
        with self._lock:
            offset = watermark + 1
            if not self._is_new_locked(offset):
                return None
            return self._commit_locked(offset)

    def _is_new_locked(self, offset: int) -> bool:
        return self._committed is None or offset > self._committed

    def _commit_locked(self, offset: int) -> int:
        self._commit(offset)  # raises: nothing below changes, the next call retries
        self._committed = offset
        self._origin = offset
        self._since = self._clock()
        return offset

    def __repr__(self) -> str:
        return (f"<orderedtask.OffsetCommitter committed={self._committed} every={self._every} "
                f"interval={self._interval}>")
