"""Helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterable
from types import ModuleType

import pytest

# Same rule as orderedtask._core: any non-empty value selects the pure-Python core.
NO_EXTENSIONS = bool(os.environ.get("ORDEREDTASK_NO_EXTENSIONS"))

# What the shell reads from orderedtask._core at call time: the twin fixture swaps these.
CORE_NAMES = ("Batch", "Cursor", "Engine", "ReorderBuffer", "Runner", "NOT_READY", "as_index")


def load_twin(name: str) -> ModuleType:
    """One core twin: "c" (compiled) or "py" (the specification)."""
    if name == "c":
        # No skip on ImportError: a missing build must fail loudly, not vanish.
        from orderedtask._core import _core_c as core
    else:
        from orderedtask._core import _core_py as core
    return core


def collect_until_error(iterable: Iterable) -> tuple[list, BaseException | None]:
    """Everything ``iterable`` yields, and what it raised at the end (or None)."""
    got = []
    try:
        for item in iterable:
            got.append(item)
    except BaseException as exc:  # noqa: BLE001 - handed to the test
        return got, exc
    return got, None


def bad_call(override: dict, error: type[BaseException], match: str):
    """A parametrize case for a call made with ``override`` on top of good arguments."""
    name = ",".join(f"{key}={value!r}" for key, value in override.items())
    return pytest.param(override, error, match, id=name)


def run_pool(pool, tasks: list) -> list:
    """Enqueue ``tasks`` from a producer thread, close, and collect ``results()``."""
    def produce() -> None:
        pool.enqueue_many(tasks)
        pool.close()

    producer = threading.Thread(target=produce)
    producer.start()
    out = list(pool.results())
    producer.join()
    return out


# -- worker functions shared by the backend tests: module level, so that worker processes and
# subinterpreters import them by name ----------------------------------------------------------


def square(x: int) -> int:
    return x * x


def echo(workerlocal: dict, task) -> None:
    task.output = task.input


def failing_init(workerlocal: dict) -> None:
    raise ValueError("no database")


def fail_on_7(workerlocal: dict, task) -> None:
    if task.input == 7:
        raise KeyError("seven")
    task.output = task.input


def unpicklable_output(workerlocal: dict, task) -> None:
    task.output = threading.Lock() if task.input == 2 else task.input


class sigint_after:
    """Ctrl-C after ``seconds``, pressed again every 50 ms until one is raised, as a user would.

    CPython loses a signal whose handler runs inside a finalizer (an exception there is
    "ignored"): the process would then wait on. Only the first KeyboardInterrupt is raised;
    ``join()`` stops the presses and puts the default handler back.
    """

    def __init__(self, seconds: float) -> None:
        self.raised = threading.Event()
        self.stopped = threading.Event()
        self.previous = signal.signal(signal.SIGINT, self._handler)
        self.thread = threading.Thread(target=self._press, args=(seconds,), daemon=True)
        self.thread.start()

    def _handler(self, signum, frame) -> None:
        if not self.raised.is_set():
            self.raised.set()
            raise KeyboardInterrupt

    def _press(self, seconds: float) -> None:
        if self.stopped.wait(seconds):
            return
        while not self.raised.is_set() and not self.stopped.is_set():
            os.kill(os.getpid(), signal.SIGINT)
            self.stopped.wait(0.05)

    def join(self) -> None:
        self.stopped.set()
        self.thread.join()
        signal.signal(signal.SIGINT, self.previous)
