"""Exceptions raised by the pool."""

from __future__ import annotations


class PoolClosed(RuntimeError):
    """The pool no longer accepts tasks: ``close()`` or ``terminate()`` was called, or it failed."""


class PoolTerminated(PoolClosed):
    """The pool was terminated while accepted tasks were not yet yielded.

    Raised by the results iterator at the position of the first task it can no longer yield:
    ``dropped`` tasks were accepted and never yielded, the lowest of them at ``index``. The
    watermark stays below them, so a consumer that commits it never skips them.
    """

    def __init__(self, dropped: int, index: int | None) -> None:
        where = "" if index is None else f", from index {index} on"
        super().__init__(
            f"the pool was terminated with {dropped} accepted task(s) not yielded{where}")
        self.dropped = dropped
        self.index = index

    def __reduce__(self) -> tuple[object, ...]:
        return (PoolTerminated, (self.dropped, self.index))


class WorkerInitError(RuntimeError):
    """``worker_init`` raised (or a worker could not start); the original error is the cause."""


class WorkerDied(RuntimeError):
    """A worker process died while it held this task; it was replaced and the pool goes on."""
