"""The one place that decides which reorder core runs: compiled, or its pure-Python twin."""

from __future__ import annotations

import os
import sys

NO_EXTENSIONS = bool(os.environ.get("ORDEREDTASK_NO_EXTENSIONS")) or (
    sys.implementation.name != "cpython"
)

if NO_EXTENSIONS:
    from ._heapcore_py import ReorderBuffer

    IMPLEMENTATION = "py"
else:
    try:
        # The twins are separate classes with one interface (tests/test_implementation.py).
        from ._heapcore import ReorderBuffer  # type: ignore[assignment]
    except ImportError:  # no compiler at install time: fall back to the specification
        from ._heapcore_py import ReorderBuffer

        IMPLEMENTATION = "py"
    else:
        IMPLEMENTATION = "c"



def gil_enabled() -> bool:
    """True unless this is a free-threaded interpreter running with the GIL off."""
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


__all__ = ["IMPLEMENTATION", "NO_EXTENSIONS", "ReorderBuffer", "gil_enabled"]
