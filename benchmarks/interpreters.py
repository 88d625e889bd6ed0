#!/usr/bin/env python3
"""Subinterpreters against threads and processes on GIL-holding pure-Python work, in one run.

    python benchmarks/interpreters.py                    # 2 workers; 2, 2,000 and 40,000 items
    python benchmarks/interpreters.py --items 20000 --workers 4

Needs CPython 3.14+ (``concurrent.interpreters``); on 3.14 from Debian sid, for instance:
``bash ../shared/tools/sid-python.sh 3.14 ...`` (benchmarks/README.md). The work is
``benchmarks.compare.spin``, a pure-Python loop calibrated to ~50 us per item, which holds the
GIL: threads cannot run it in parallel, processes and subinterpreters (one GIL each) can. Rows:
a plain loop; ``orderedtask.map`` on threads, processes (``backend="process"``), its own
subinterpreters (``backend="interpreter"``) and an ``InterpreterPoolExecutor``; ``Pool`` with
one Task per item on subinterpreters; and ``concurrent.futures``' ThreadPool, ProcessPool
(chunksize as multiprocessing's default) and InterpreterPool ``map`` (one submit per item:
its ``chunksize`` has no effect, as in ThreadPoolExecutor), plus InterpreterPool ``map`` over
chunks made by hand. Every call starts and stops its own pool (start-up included); best of
``--repeats``, round-robin over the rows, cyclic GC off while timing; every output is checked
against the loop's. Raw outputs: ``benchmarks/results/interpreters-*.txt``.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # measure this checkout (its in-place build), not an install

import orderedtask  # noqa: E402
from benchmarks.compare import _chunksize, calibrate_spin, drain_pool, spin  # noqa: E402
from orderedtask import Pool, Task  # noqa: E402

Run = Callable[[list[int], int], list[Any]]


def spin_many(chunk: list[int]) -> list[int]:
    return [spin(x) for x in chunk]


def loop(items: list[int], workers: int) -> list[Any]:
    return [spin(x) for x in items]


def ot_map(backend: Any) -> Run:
    def run(items: list[int], workers: int) -> list[Any]:
        return list(orderedtask.map(spin, items, workers=workers, backend=backend))
    return run


def ot_map_interpreter_pool(items: list[int], workers: int) -> list[Any]:
    from concurrent.futures import InterpreterPoolExecutor

    with InterpreterPoolExecutor(workers) as executor:  # the backend passes sys.path itself
        return list(orderedtask.map(spin, items, workers=workers, backend=executor))


def spin_task(workerlocal: dict[str, Any], task: Task) -> None:
    task.output = spin(task.input)


def ot_pool_interpreter(items: list[int], workers: int) -> list[Any]:
    with Pool(workers, spin_task, backend="interpreter") as pool:
        return drain_pool(pool, items)


def thread_pool(items: list[int], workers: int) -> list[Any]:
    with ThreadPoolExecutor(workers) as executor:
        return list(executor.map(spin, items))


def process_pool(items: list[int], workers: int) -> list[Any]:
    with ProcessPoolExecutor(workers) as executor:
        return list(executor.map(spin, items, chunksize=_chunksize(items, workers)))


def set_path(path: tuple[str, ...]) -> None:
    """Stateless, so an interpreter receives it by value: sys.path before anything is imported."""
    import sys

    sys.path[:] = list(path)


def interpreter_pool_executor(workers: int) -> Any:
    # The stdlib's worker interpreters start from the process's initial sys.path, without the
    # checkout inserted above, so they could not import benchmarks.compare.spin: an initializer
    # gives them ours (orderedtask's interpreter backend does that itself).
    from concurrent.futures import InterpreterPoolExecutor

    return InterpreterPoolExecutor(workers, initializer=set_path, initargs=(tuple(sys.path),))


def interpreter_pool(items: list[int], workers: int) -> list[Any]:
    with interpreter_pool_executor(workers) as executor:
        return list(executor.map(spin, items))


def interpreter_pool_chunks(items: list[int], workers: int) -> list[Any]:
    size = _chunksize(items, workers)
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    with interpreter_pool_executor(workers) as executor:
        return [y for chunk in executor.map(spin_many, chunks) for y in chunk]


ROWS: list[tuple[str, Run]] = [
    ("plain loop", loop),
    ("orderedtask.map (threads)", ot_map("thread")),
    ("orderedtask.map (backend='process')", ot_map("process")),
    ("orderedtask.map (backend='interpreter')", ot_map("interpreter")),
    ("orderedtask.map (InterpreterPoolExecutor)", ot_map_interpreter_pool),
    ("orderedtask.Pool (backend='interpreter', Task per item)", ot_pool_interpreter),
    ("ThreadPoolExecutor.map", thread_pool),
    ("ProcessPoolExecutor.map (chunksize)", process_pool),
    ("InterpreterPoolExecutor.map (per item)", interpreter_pool),
    ("InterpreterPoolExecutor.map (chunks by hand)", interpreter_pool_chunks),
]


def timed(run: Run, items: list[int], workers: int) -> tuple[float, list[Any]]:
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        out = run(items, workers)
        return time.perf_counter() - started, out
    finally:
        gc.enable()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", default="2,2000,40000",
                        help="comma-separated item counts (2 items: start-up and shut-down)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if sys.version_info < (3, 14):
        sys.exit("benchmarks/interpreters.py needs CPython 3.14+ (concurrent.interpreters)")
    sizes = [int(n) for n in args.items.split(",")]
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs")
    print(f"python:  {sys.version.split()[0]} ({platform.python_implementation()}), "
          f"GIL {'on' if gil else 'off'}, orderedtask core {orderedtask.IMPLEMENTATION}")
    print(f"spin():  {calibrate_spin()} loop iterations per call (~50 us); "
          f"{args.workers} workers; best of {args.repeats}; started {time.strftime('%Y-%m-%d %H:%M')}")
    for n in sizes:
        items = list(range(n))
        expected = loop(items, args.workers)
        best = {label: float("inf") for label, _ in ROWS}
        ok = dict.fromkeys(best, True)
        for _ in range(args.repeats):
            for label, run in ROWS:
                seconds, out = timed(run, items, args.workers)
                best[label] = min(best[label], seconds)
                ok[label] = ok[label] and out == expected
        base = best["plain loop"]
        print(f"\n{n:,} items of ~50 us pure Python, {args.workers} workers")
        print(f"| {'row':<56} | seconds | items/s | speed-up | output |")
        print(f"|{'-' * 58}|---------|---------|----------|--------|")
        for label, _ in ROWS:
            s = best[label]
            print(f"| {label:<56} | {s:7.3f} | {n / s:7,.0f} | {base / s:7.2f}x | "
                  f"{'ok' if ok[label] else 'WRONG':<6} |")
        if not all(ok.values()):
            sys.exit("some output differed from the plain loop's")


if __name__ == "__main__":
    main()
