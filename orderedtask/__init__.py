"""Ordered parallel processing: tasks go in with an index, results come out in index order."""

from ._compat import IMPLEMENTATION
from ._errors import PoolClosed, WorkerDied, WorkerInitError
from ._map import amap, map
from ._pool import Pool
from ._task import Task

__version__ = "0.1.0"

__all__ = ["IMPLEMENTATION", "Pool", "PoolClosed", "Task", "WorkerDied", "WorkerInitError", "amap", "map"]
