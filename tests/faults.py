"""Faults to inject, as picklable module-level objects: worker processes import this module.

An ``Item`` carries a value and a fault; ``run_item`` (for map) and ``run_task`` (for Pool)
act it out wherever they run. ``expected`` says what the consumer must see for an item, so a
test can check every item against the accounting rule: exactly once, in order, with its
output or an error saying what happened.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from typing import Any

OK = "ok"
RAISE = "raise"  # fn raises ValueError
SET_THEN_RAISE = "set-then-raise"  # Pool fn sets task.output, then raises
SLOW = "slow"  # fn sleeps a little
UNPICKLABLE_INPUT = "unpicklable-input"  # the input cannot be pickled (process backends)
INPUT_FAILS_TO_UNPICKLE = "input-fails-to-unpickle"  # pickles; unpickling raises
UNPICKLABLE_OUTPUT = "unpicklable-output"  # fn returns something that cannot be pickled
OUTPUT_FAILS_TO_UNPICKLE = "output-fails-to-unpickle"  # pickles; unpickling raises
ERROR_FAILS_TO_UNPICKLE = "error-fails-to-unpickle"  # fn raises an exception that won't unpickle
DIE = "die"  # the worker process exits while running it
DIE_AFTER = "die-after"  # the worker process exits just after the batch that holds it

THREAD_FAULTS = (OK, RAISE, SLOW)
PROCESS_FAULTS = (OK, RAISE, SLOW, UNPICKLABLE_INPUT, INPUT_FAILS_TO_UNPICKLE,
                  UNPICKLABLE_OUTPUT, OUTPUT_FAILS_TO_UNPICKLE, ERROR_FAILS_TO_UNPICKLE, DIE,
                  DIE_AFTER)
DEATHS = (DIE, DIE_AFTER)


def _refuse_unpickling(*args: Any) -> Any:
    raise RuntimeError("this object refuses to be unpickled")


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("this object refuses to be pickled")


class FailsToUnpickle:
    def __reduce__(self) -> Any:
        return (_refuse_unpickling, ())


class StubbornError(Exception):
    """Pickles, but its __init__ signature makes unpickling fail."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(a)  # args == (a,): unpickling calls StubbornError(a) and fails


class Item:
    """A value and the fault to act out when it is run."""

    __slots__ = ("value", "fault")

    def __init__(self, value: int, fault: str = OK) -> None:
        self.value = value
        self.fault = fault

    def __reduce__(self) -> Any:
        if self.fault == UNPICKLABLE_INPUT:
            raise TypeError(f"item {self.value} refuses to be pickled")
        if self.fault == INPUT_FAILS_TO_UNPICKLE:
            return (_refuse_unpickling, ())
        return (Item, (self.value, self.fault))

    def __repr__(self) -> str:
        return f"Item({self.value}, {self.fault})"


def _act(item: Item) -> Any:
    fault = item.fault
    if fault in (RAISE, SET_THEN_RAISE):  # map has no task to set an output on
        raise ValueError(f"item {item.value} failed")
    if fault == ERROR_FAILS_TO_UNPICKLE:
        raise StubbornError(item.value, 0)
    if fault == SLOW:
        time.sleep(0.002)
    if fault == DIE:
        os._exit(3)
    if fault == DIE_AFTER:
        threading.Timer(0.02, os._exit, args=(4,)).start()
    if fault == UNPICKLABLE_OUTPUT:
        return Unpicklable()
    if fault == OUTPUT_FAILS_TO_UNPICKLE:
        return FailsToUnpickle()
    return item.value * 2


def run_item(item: Item) -> Any:
    """``map``'s fn."""
    return _act(item)


def run_task(workerlocal: dict, task: Any) -> None:
    """``Pool``'s fn."""
    if task.input.fault == SET_THEN_RAISE:
        task.output = "partial"
        raise ValueError(f"item {task.input.value} failed after setting output")
    task.output = _act(task.input)


def check_outcome(item: Item, output: Any, error: BaseException | None, *,
                  deaths: bool = False) -> None:
    """The accounting rule for one item: its output, or an error that says what happened.

    ``deaths``: a worker process died in this run, so any item may carry ``WorkerDied`` (its
    batch held the dying item, or was on its way to the worker).
    """
    from orderedtask import WorkerDied

    fault = item.fault
    if error is not None and deaths and isinstance(error, WorkerDied):
        return
    if fault in (OK, SLOW, DIE_AFTER):
        assert error is None, (item, error)
        assert output == item.value * 2, (item, output)
        return
    assert error is not None, (item, output)
    if fault == RAISE:
        assert isinstance(error, ValueError) and f"item {item.value} failed" in str(error)
    elif fault == SET_THEN_RAISE:
        assert isinstance(error, ValueError)
    elif fault == ERROR_FAILS_TO_UNPICKLE:
        assert isinstance(error, RuntimeError) and "could not be unpickled" in str(error), error
        assert f"StubbornError: {item.value}" in str(error), error  # what it said is kept
    elif fault in (UNPICKLABLE_INPUT, INPUT_FAILS_TO_UNPICKLE):
        assert isinstance(error, TypeError) and f"input of task" in str(error), error
    elif fault in (UNPICKLABLE_OUTPUT, OUTPUT_FAILS_TO_UNPICKLE):
        assert isinstance(error, TypeError) and "of task" in str(error), error
    elif fault == DIE:
        assert isinstance(error, WorkerDied), error
    else:  # pragma: no cover - a fault the table forgot
        raise AssertionError(f"unknown fault {fault}")


def pickles(obj: object) -> bool:
    try:
        pickle.loads(pickle.dumps(obj))
    except Exception:  # noqa: BLE001 - any failure means no
        return False
    return True
