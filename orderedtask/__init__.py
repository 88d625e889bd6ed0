"""Ordered parallel processing: tasks go in with an index, results come out in index order."""

from ._commit import OffsetCommitter
from ._core import IMPLEMENTATION
from ._decode import DecodeError, decode
from ._errors import PoolClosed, PoolTerminated, WorkerDied, WorkerInitError
from ._map import TaskStream, amap, map, map_tasks
from ._results import Results
from ._pool import Pool
from ._core import Task

__version__ = "0.1.0"

__all__ = [
    "IMPLEMENTATION",
    "DecodeError",
    "OffsetCommitter",
    "Pool",
    "PoolClosed",
    "PoolTerminated",
    "Results",
    "Task",
    "TaskStream",
    "WorkerDied",
    "WorkerInitError",
    "amap",
    "decode",
    "map",
    "map_tasks",
]
