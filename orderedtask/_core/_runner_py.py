"""How a worker runs one item: the specification of ``_runner.pxi``.

A ``Runner`` is the one place that decides what running an item means, whatever runs it: the
engine's thread workers (``Engine.run_worker``), a worker process, an Executor, a
subinterpreter, or the consumer itself. It never raises for an item's own failure: what ``fn``
raised stays on that item.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .. import _core as _selected  # the process's Task: _selected.Task, read at call time

if TYPE_CHECKING:
    from ._task_py import Task

__all__ = ["MAP", "POOL", "Runner"]

#: ``fn(workerlocal, task)``: the Pool's function, which writes ``task.output``.
POOL = 0
#: ``output = fn(item)``: the function of ``map``, ``map_tasks`` and ``decode``.
MAP = 1

Outcome = tuple[Any, "BaseException | None"]


class Runner:
    """Runs ``fn`` on one item, retrying an ``Exception`` up to ``retries`` times.

    ``kind`` is ``POOL`` (``fn(workerlocal, task)``; ``task.output`` is reset before each
    retry, and the last error is stored on ``task.error``) or ``MAP`` (``fn(item)`` returns the
    output). A ``BaseException`` that is not an ``Exception`` is never retried: it is stored
    like an error, and the consumer raises it. ``describe(index, item, error)``, if given,
    replaces the final ``Exception`` of a ``MAP`` item by a more telling one.
    """

    __slots__ = ("kind", "fn", "retries", "backoff", "describe")

    def __init__(self, kind: int, fn: Callable[..., Any], retries: int = 0,
                 backoff: float = 0.0,
                 describe: Callable[[int, Any, Exception], BaseException] | None = None
                 ) -> None:
        if kind != POOL and kind != MAP:
            raise ValueError(f"kind must be POOL or MAP, not {kind!r}")
        self.kind = kind
        self.fn = fn
        self.retries = retries
        self.backoff = backoff
        self.describe = describe

    def run_task(self, workerlocal: dict[str, Any], task: Task) -> None:
        """``POOL``: run ``fn(workerlocal, task)``; what it raises goes to ``task.error``."""
        attempt = 0
        while True:
            try:
                self.fn(workerlocal, task)
                return
            except Exception as exc:  # noqa: BLE001 - kept on the task
                if attempt < self.retries:
                    attempt += 1
                    task.output = None
                    if self.backoff:
                        time.sleep(self.backoff)
                    continue
                task.error = exc
                return
            except BaseException as exc:  # noqa: BLE001 - the consumer raises it in place
                task.error = exc
                return

    def run_value(self, index: int, item: Any) -> Outcome:
        """``MAP``: return ``(fn(item), None)``, or ``(None, the error)``."""
        attempt = 0
        while True:
            try:
                return self.fn(item), None
            except Exception as exc:  # noqa: BLE001 - kept on the item
                if attempt < self.retries:
                    attempt += 1
                    if self.backoff:
                        time.sleep(self.backoff)
                    continue
                if self.describe is not None:
                    try:
                        return None, self.describe(index, item, exc)
                    except Exception:  # noqa: BLE001 - a failing describe keeps the original
                        return None, exc
                return None, exc
            except BaseException as exc:  # noqa: BLE001 - the consumer raises it in place
                return None, exc

    def run(self, workerlocal: dict[str, Any], indices: Sequence[int],
            items: Sequence[Any]) -> list[Outcome]:
        """Run a batch away from the engine (a process, an Executor): one outcome per item.

        ``POOL`` items are the tasks' inputs: each gets a fresh ``Task`` here, and its outcome
        is ``(task.output, task.error)``.
        """
        if self.kind == POOL:
            outcomes: list[Outcome] = []
            for index, value in zip(indices, items):
                task = _selected.Task(index, value)
                self.run_task(workerlocal, task)
                outcomes.append((task.output, task.error))
            return outcomes
        return [self.run_value(index, item) for index, item in zip(indices, items)]

    def __reduce__(self) -> tuple[Any, ...]:
        # By way of the selector: the receiving side may run the other twin.
        return (_selected.make_runner,
                (self.kind, self.fn, self.retries, self.backoff, self.describe))
