"""Exceptions raised by the pool."""


class PoolClosed(RuntimeError):
    """The pool no longer accepts tasks: ``close()`` or ``terminate()`` was called, or it failed."""


class WorkerInitError(RuntimeError):
    """``worker_init`` raised; the original exception is the ``__cause__``."""


class WorkerDied(RuntimeError):
    """A worker process died while it held this task; it was replaced and the pool goes on."""
