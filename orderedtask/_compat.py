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
        from ._heapcore import ReorderBuffer
    except ImportError:  # no compiler at install time: fall back to the specification
        from ._heapcore_py import ReorderBuffer

        IMPLEMENTATION = "py"
    else:
        IMPLEMENTATION = "c"

__all__ = ["IMPLEMENTATION", "NO_EXTENSIONS", "ReorderBuffer"]
