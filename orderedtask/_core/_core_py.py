"""The pure-Python core: the executable specification of the compiled ``_core_c``.

Same names, signatures, docstrings and errors (``tests/test_implementation.py`` checks);
``ORDEREDTASK_NO_EXTENSIONS=1`` selects it.
"""

from ._engine_py import (INLINE_BATCH, MAX_BATCH, NOT_READY, PULL_BATCH, Batch, Cursor, Engine,
                         as_timeout)
from ._reorder_py import ReorderBuffer, as_index
from ._runner_py import MAP, POOL, Runner
from ._task_py import Task

__all__ = ["INLINE_BATCH", "MAP", "MAX_BATCH", "NOT_READY", "POOL", "PULL_BATCH", "Batch", "Cursor",
           "Engine", "ReorderBuffer", "Runner", "Task", "as_index", "as_timeout"]
