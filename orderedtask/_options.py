"""Argument checks and the window policy: one home for how every API validates its options.

Every check raises before anything starts or waits, with a message naming the value and the
rule (README, "Bad input").
"""

from __future__ import annotations

import gc
import math
import os
from typing import Any

from ._core import gil_enabled

#: Default window of ``Pool``: tasks accepted and not yet consumed. Measured (benchmarks/window.py,
#: README "Choosing the window"): 256-1,024 is fastest on small tasks and keeps 12+ workers
#: busy on 1 ms tasks; larger windows only hold more results in memory.
POOL_WINDOW = 1024
#: Default window of ``map``, ``map_tasks`` and ``decode``, in items pulled and not yet yielded.
MAP_WINDOW = 2048

# With the GIL off, every cyclic-GC pass stops all threads and walks the whole heap. A loop frees
# each result before the next allocation and never triggers one; results waiting in a window
# that holds more containers than the first GC threshold trigger passes all the time (README,
# "Choosing the window"). So the default follows the threshold, assuming a few containers per
# result, but keeps a couple of batches in reach of every worker.
FREE_THREADED_WINDOW_PER_WORKER = 256


def default_window(base: int, workers: int) -> int:
    """``base`` on the standard build or with the GC off; else sized from the GC threshold."""
    if gil_enabled() or not gc.isenabled():
        return base
    threshold = gc.get_threshold()[0]
    if threshold <= 0:  # collections off
        return base
    return min(base, max(FREE_THREADED_WINDOW_PER_WORKER * workers, threshold // 4))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_workers(workers: object) -> int:
    if not _is_int(workers):
        raise TypeError(f"workers must be an int, not {type(workers).__name__}")
    if workers <= 0:  # type: ignore[operator]
        raise ValueError(f"workers must be >= 1, got {workers}")
    return workers  # type: ignore[return-value]


#: ``max_workers`` by default: threads mostly wait (I/O) when many pay; a process, an
#: interpreter or an executor's worker is worth one CPU.
THREAD_MAX_WORKERS = 64


def check_workers_or_adaptive(workers: object) -> int | None:
    """``workers``: an int >= 1, or None (adaptive)."""
    return None if workers is None else check_workers(workers)


def check_max_workers(max_workers: object, backend: object, workers: int | None) -> int:
    """The ceiling of adaptive concurrency: ``max_workers``, or the backend's default.

    With ``workers`` fixed there is nothing for a ceiling to bound: asking for both is
    refused, rather than one of them silently ignored.
    """
    if max_workers is None:
        return THREAD_MAX_WORKERS if backend == "thread" else (os.cpu_count() or 1)
    if not _is_int(max_workers):
        raise TypeError(f"max_workers must be an int or None, not {type(max_workers).__name__}")
    if max_workers <= 0:  # type: ignore[operator]
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    if workers is not None:
        raise ValueError(f"max_workers={max_workers} bounds adaptive concurrency "
                         f"(workers=None), but workers={workers} fixes the count: pass one")
    return max_workers  # type: ignore[return-value]


def check_window(window: object, default: int) -> int:
    if window is None:
        return default
    if not _is_int(window):
        raise TypeError(f"window must be an int or None, not {type(window).__name__}")
    if window <= 0:  # type: ignore[operator]
        raise ValueError(f"window must be >= 1, got {window}")
    return window  # type: ignore[return-value]


def check_callable(name: str, fn: object, optional: bool = False) -> None:
    if fn is None and optional:
        return
    if not callable(fn):
        raise TypeError(f"{name} must be callable, not {type(fn).__name__}")


def check_retries(retries: object, backoff: object) -> tuple[int, float]:
    if not _is_int(retries):
        raise TypeError(f"retries must be an int, not {type(retries).__name__}")
    if retries < 0:  # type: ignore[operator]
        raise ValueError(f"retries must be >= 0, got {retries}")
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)):
        raise TypeError(f"retry_backoff must be a number of seconds, not {type(backoff).__name__}")
    if not (backoff >= 0 and math.isfinite(backoff)):
        raise ValueError(f"retry_backoff must be a finite number of seconds >= 0, got {backoff}")
    return retries, float(backoff)  # type: ignore[return-value]


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {type(value).__name__}")
    return value
