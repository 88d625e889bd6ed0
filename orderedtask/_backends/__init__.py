"""Where batches run: the backend family (threads, processes, any Executor) and its factory.

Every backend starts the engine's worker threads (``Backend.start``); what differs is how a
worker thread runs a batch. The thread backend lets the engine run it in place
(``Engine.run_worker``); the others carry it somewhere else (``TransportBackend``). Modules
here import ``_base`` and nothing above it.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

from ._base import Backend, TransportBackend, check_picklable
from ._executor import ExecutorBackend
from ._thread import ThreadBackend

NAMES = ("thread", "process", "interpreter")


def make_backend(backend: object, runner: Any, worker_init: Any, workers: int = 1) -> Backend:
    """The backend named (or the Executor given) by a ``backend=`` argument."""
    if backend == "thread":
        return ThreadBackend(runner, worker_init)
    if backend == "process":
        from ._process import ProcessBackend  # multiprocessing: only for those who use it

        return ProcessBackend(runner, worker_init)
    if backend == "interpreter":
        from ._interpreter import InterpreterBackend

        return InterpreterBackend(runner, worker_init, workers=workers)
    if isinstance(backend, Executor):
        from ._interpreter import is_interpreter_executor

        if is_interpreter_executor(backend):
            from ._interpreter import InterpreterBackend

            return InterpreterBackend(runner, worker_init, executor=backend)
        return ExecutorBackend(backend, runner, worker_init)
    names = " or ".join(repr(name) for name in NAMES)
    message = f"backend must be {names} or a concurrent.futures.Executor, not {backend!r}"
    raise (ValueError if isinstance(backend, str) else TypeError)(message)


__all__ = ["Backend", "ExecutorBackend", "ThreadBackend", "TransportBackend", "check_picklable",
           "make_backend"]
