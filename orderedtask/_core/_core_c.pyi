# The compiled core has the interface of its specification, the pure-Python twin.
from ._core_py import (INLINE_BATCH as INLINE_BATCH, MAP as MAP, MAX_BATCH as MAX_BATCH,
                       NOT_READY as NOT_READY, POOL as POOL, PULL_BATCH as PULL_BATCH, Batch as Batch, Cursor as Cursor,
                       Engine as Engine, ReorderBuffer as ReorderBuffer, Runner as Runner,
                       Task as Task, as_index as as_index, as_timeout as as_timeout)
