"""The core: the engine's mechanism, compiled (``_core_c``) or its pure-Python twin (``_core_py``).

This is the one place that picks the twin: the compiled one unless ``ORDEREDTASK_NO_EXTENSIONS``
is set (or the extension is missing). The shell reads the classes from this module at call
time (``_core.Engine``), so a test can switch twins by patching them here.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

NO_EXTENSIONS = bool(os.environ.get("ORDEREDTASK_NO_EXTENSIONS")) or (
    sys.implementation.name != "cpython"
)


def _select() -> tuple[ModuleType, str]:
    if not NO_EXTENSIONS:
        try:
            from . import _core_c
        except ImportError:  # no compiler at install time: fall back to the specification
            pass
        else:
            return _core_c, "c"
    from . import _core_py

    return _core_py, "py"


impl, IMPLEMENTATION = _select()

if TYPE_CHECKING:  # both twins have the specification's interface
    from ._core_py import (MAP, MAX_BATCH, NOT_READY, POOL, Batch, Cursor, Engine,
                           ReorderBuffer, Runner, Task, as_index, as_timeout)
else:
    Batch = impl.Batch
    Cursor = impl.Cursor
    Engine = impl.Engine
    ReorderBuffer = impl.ReorderBuffer
    Runner = impl.Runner
    Task = impl.Task
    MAP = impl.MAP
    POOL = impl.POOL
    MAX_BATCH = impl.MAX_BATCH
    NOT_READY = impl.NOT_READY
    as_index = impl.as_index
    as_timeout = impl.as_timeout


def make_runner(kind: int, fn: Any, retries: int = 0, backoff: float = 0.0,
                describe: Any = None) -> Runner:
    """What a pickled ``Runner`` becomes: a Runner of the core where it is unpickled.

    (A subinterpreter cannot load the compiled core and gets the pure-Python one.)
    """
    return Runner(kind, fn, retries, backoff, describe)


def make_task(cls: type | None, index: Any, input: Any) -> Task:
    """What a pickled ``Task`` becomes: ``cls`` if it was a subclass, else this core's Task."""
    task: Task = (Task if cls is None else cls)(index, input)
    return task


def gil_enabled() -> bool:
    """True unless this is a free-threaded interpreter running with the GIL off."""
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


__all__ = ["IMPLEMENTATION", "MAP", "MAX_BATCH", "NOT_READY", "NO_EXTENSIONS", "POOL", "Batch",
           "Cursor", "Engine", "ReorderBuffer", "Runner", "Task", "as_index", "as_timeout",
           "gil_enabled", "impl", "make_runner", "make_task"]
