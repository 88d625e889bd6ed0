#!/usr/bin/env python3
"""orderedtask next to the usual ways of mapping a function in parallel, in one run.

    python benchmarks/compare.py                 # every workload, then the memory check
    python benchmarks/compare.py --quick         # smaller inputs (about a minute on 2 cores)
    python benchmarks/compare.py --only sleep    # one workload (comma-separated list allowed)
    python benchmarks/compare.py --memory        # the memory check's child process alone

One table per workload, one row per implementation: seconds (best of 3 repeats; 1 repeat for
a row whose first run took over a second), microseconds per item, speed-up over the plain
loop on the same number of items, and "ok" when the output equals the plain loop's output
(complete and in input order). Every timed call creates and shuts down its own pool, as a
one-shot ``map`` does; repeats go round-robin over the rows so that drift in machine load
hits every row alike. Rows whose library is not installed (mpire, joblib) are skipped.

Workloads: no-op (pure hand-off cost), orjson.loads of ~200-byte JSON (holds the GIL),
time.sleep(1 ms) on 12 workers (releases the GIL: ideal speed-up 12), zlib.decompress of
64 KB payloads (releases the GIL), a ~50 us pure-Python function (holds the GIL). Then the
peak RSS of ``orderedtask.map`` over 10,000,000 no-op items, measured in a child process
(``--memory``), to show that memory stays flat (the window bounds it).
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import platform
import random
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # measure this checkout (its in-place build), not an install

import orderedtask  # noqa: E402
from orderedtask import Pool, Task  # noqa: E402

# Optional peers, imported by load_peers() (not at import: the --memory child stays lean).
orjson: Any = None
WorkerPool: Any = None
joblib: Any = None


def load_peers() -> None:
    global orjson, WorkerPool, joblib
    try:
        import orjson
    except ImportError:
        orjson = None
    try:
        from mpire import WorkerPool
    except ImportError:
        WorkerPool = None
    try:
        import joblib
    except ImportError:
        joblib = None

REPEATS = 3
SLOW_ROW_SECONDS = 1.0  # a row whose first run takes longer is measured once

# -- workload functions: module level, so that process pools can pickle them -------------------


def identity(x: Any) -> Any:
    return x


def sleep_1ms(x: Any) -> Any:
    time.sleep(0.001)
    return x


# Iterations of spin()'s loop; calibrated to ~50 us by the parent, handed to child processes
# through the environment (spawn/forkserver children re-import this module).
SPIN_ENV = "ORDEREDTASK_BENCH_SPIN"
SPIN = int(os.environ.get(SPIN_ENV, "1000"))


def spin(x: int) -> int:
    """Pure-Python busy work (holds the GIL): about 50 us after calibration."""
    total = x
    for i in range(SPIN):
        total += i ^ x
    return total


def calibrate_spin(target_seconds: float = 50e-6) -> int:
    global SPIN
    SPIN = 1000
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for x in range(50):
            spin(x)
        best = min(best, (time.perf_counter() - started) / 50)
    SPIN = max(1, round(1000 * target_seconds / best))
    os.environ[SPIN_ENV] = str(SPIN)
    return SPIN


# -- inputs ----------------------------------------------------------------------------------


def make_messages(count: int, seed: int = 7) -> list[bytes]:
    """Kafka-like JSON bodies of ~200 bytes, all different."""
    rng = random.Random(seed)
    events = ("click", "view", "purchase", "signup", "scroll")
    return [
        (f'{{"offset":{1_000_000 + i},"user":"user-{rng.randint(1, 10**6):07d}",'
         f'"event":"{rng.choice(events)}","ts":{1_700_000_000_000 + i * 17},'
         f'"url":"https://shop.example.com/p/{rng.randint(1, 10**5)}?ref=kafka",'
         f'"session":"{rng.getrandbits(64):016x}","props":{{"price":{rng.random() * 100:.2f},'
         f'"qty":{rng.randint(1, 9)},"tags":["a","b"]}}}}').encode()
        for i in range(count)
    ]


def make_payloads(count: int, distinct: int = 32, size: int = 65536) -> list[bytes]:
    """zlib-compressed 64 KB texts of random words (about 2:1); ``distinct`` of them, cycled."""
    rng = random.Random(11)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 10)))
                  for _ in range(20_000)]
    blobs = []
    for _ in range(distinct):
        words: list[str] = []
        length = 0
        while length < size:
            word = rng.choice(vocabulary)
            words.append(word)
            length += len(word) + 1
        blobs.append(zlib.compress(" ".join(words).encode()[:size], 6))
    return [blobs[i % distinct] for i in range(count)]


# -- implementations: run(fn, items, workers) -> list -----------------------------------------


def run_loop(fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
    return [fn(x) for x in items]


def run_orderedtask_map(fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
    return list(orderedtask.map(fn, items, workers=workers))


def run_orderedtask_pool(fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
    def work(_workerlocal: dict[str, Any], task: Task) -> None:
        task.output = fn(task.input)

    with Pool(workers, work) as pool:
        return drain_pool(pool, items)


def drain_pool(pool: Pool, items: list[Any]) -> list[Any]:
    """Feed ``items`` as Tasks from a producer thread, close, and collect the outputs in order."""
    def produce() -> None:
        try:
            pool.enqueue_many(Task(i, x) for i, x in enumerate(items))
        finally:
            pool.close()

    producer = threading.Thread(target=produce, name="compare-producer", daemon=True)
    producer.start()
    out = []
    for task in pool.results():
        if task.error is not None:
            raise task.error
        out.append(task.output)
    producer.join()
    return out


def run_orderedtask_map_process(fn: Callable[[Any], Any], items: list[Any], workers: int
                                ) -> list[Any]:
    return list(orderedtask.map(fn, items, workers=workers, backend="process"))


def _process_backend_missing() -> str | None:
    import inspect

    if "backend" in inspect.signature(orderedtask.map).parameters:
        return None
    return "this orderedtask has no process backend"


def _chunksize(items: list[Any], workers: int) -> int:
    # multiprocessing.Pool.map's own default: about 4 chunks per worker.
    return max(1, -(-len(items) // (4 * workers)))


def run_thread_pool_executor(fn: Callable[[Any], Any], items: list[Any], workers: int
                             ) -> list[Any]:
    with ThreadPoolExecutor(workers) as executor:
        return list(executor.map(fn, items))


def run_process_pool_executor(fn: Callable[[Any], Any], items: list[Any], workers: int
                              ) -> list[Any]:
    with ProcessPoolExecutor(workers) as executor:
        return list(executor.map(fn, items, chunksize=_chunksize(items, workers)))


def run_multiprocessing_imap(fn: Callable[[Any], Any], items: list[Any], workers: int
                             ) -> list[Any]:
    with multiprocessing.Pool(workers) as pool:
        return list(pool.imap(fn, items, chunksize=_chunksize(items, workers)))


def run_mpire_threads(fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
    with WorkerPool(n_jobs=workers, start_method="threading") as pool:
        return list(pool.map(fn, items))


def run_joblib_threading(fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
    return joblib.Parallel(n_jobs=workers, backend="threading")(
        joblib.delayed(fn)(x) for x in items)


def run_joblib_loky(fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
    return joblib.Parallel(n_jobs=workers, backend="loky")(joblib.delayed(fn)(x) for x in items)


@dataclass(frozen=True)
class Impl:
    label: str
    run: Callable[[Callable[[Any], Any], list[Any], int], list[Any]]
    missing: str | None = None  # why it cannot run here
    # Keeps its workers alive between calls (loky's reusable executor): one untimed call
    # first, so that the timed calls measure the warm executor that a long-running program sees.
    warm_up: bool = False


LOOP = Impl("plain loop", run_loop)
OT_MAP = Impl("orderedtask.map", run_orderedtask_map)
OT_POOL = Impl("orderedtask.Pool (Task objects)", run_orderedtask_pool)


def peers() -> list[Impl]:
    return [
        Impl("orderedtask.map (backend='process')", run_orderedtask_map_process,
             _process_backend_missing()),
        Impl("ThreadPoolExecutor.map", run_thread_pool_executor),
        Impl("ProcessPoolExecutor.map (chunksize)", run_process_pool_executor),
        Impl("multiprocessing.Pool.imap (chunksize)", run_multiprocessing_imap),
        Impl("mpire WorkerPool (threading)", run_mpire_threads,
             None if WorkerPool is not None else "mpire not installed"),
        Impl("joblib Parallel (threading)", run_joblib_threading,
             None if joblib is not None else "joblib not installed"),
        Impl("joblib Parallel (loky, warm)", run_joblib_loky,
             None if joblib is not None else "joblib not installed", warm_up=True),
    ]


# -- workloads -------------------------------------------------------------------------------


@dataclass
class Row:
    impl: Impl
    items: int
    note: str = ""
    times: list[float] = field(default_factory=list)
    ok: bool | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        return self.impl.label + (f" [{self.note}]" if self.note else "")


@dataclass
class Workload:
    name: str
    title: str
    fn: Callable[[Any], Any]
    make_items: Callable[[int], list[Any]]
    workers: int
    items: int  # for every peer
    ordered_items: int  # for orderedtask and the loop
    extra_map_items: int | None = None  # an extra orderedtask.map row at this size
    efficiency: bool = False  # add a "speed-up / workers" column
    missing: str | None = None

    def rows(self) -> list[Row]:
        rows = [Row(OT_MAP, self.ordered_items)]
        if self.extra_map_items:
            rows.append(Row(OT_MAP, self.extra_map_items, "amortized"))
        rows.append(Row(OT_POOL, self.ordered_items))
        rows += [Row(impl, self.items) for impl in peers()]
        for n in sorted({row.items for row in rows}):
            rows.append(Row(LOOP, n))
        return rows


def workloads(quick: bool) -> list[Workload]:
    q = 4 if quick else 1  # --quick divides the sizes by this
    return [
        Workload("noop", "no-op (identity): hand-off cost per item", identity,
                 lambda n: list(range(n)), 2, 20_000 // q, 20_000 // q,
                 extra_map_items=1_000_000 // q),
        Workload("orjson", "orjson.loads of ~200-byte JSON messages (holds the GIL)",
                 orjson.loads if orjson is not None else identity, make_messages, 2,
                 20_000 // q, 100_000 // q,
                 missing=None if orjson is not None else "orjson not installed"),
        Workload("sleep", "time.sleep(0.001) per item (releases the GIL), 12 workers",
                 sleep_1ms, lambda n: list(range(n)), 12, 2_000 // q, 2_000 // q,
                 efficiency=True),
        Workload("zlib", "zlib.decompress of 64 KB payloads (releases the GIL)",
                 zlib.decompress, make_payloads, 2, 2_000 // q, 2_000 // q),
        Workload("python", "pure-Python function of ~50 us (holds the GIL)", spin,
                 lambda n: list(range(n)), 2, 2_000 // q, 2_000 // q),
    ]


def measure(workload: Workload) -> list[Row]:
    rows = workload.rows()
    largest = max(row.items for row in rows)
    items = workload.make_items(largest)
    inputs = {n: items[:n] for n in {row.items for row in rows}}
    expected: dict[int, list[Any]] = {}
    # The loop rows run first in each round: their first output is the reference.
    order = [row for row in rows if row.impl is LOOP] + [row for row in rows if row.impl is not LOOP]
    for row in order:
        if row.impl.warm_up and not row.impl.missing:
            try:
                row.impl.run(workload.fn, items[: 4 * workload.workers], workload.workers)
            except Exception as exc:  # noqa: BLE001 - reported in the table
                row.error = f"{type(exc).__name__}: {exc}"[:60]
    for round_ in range(REPEATS):
        for row in order:
            if row.impl.missing or row.error:
                continue
            if round_ and row.times and row.times[0] > SLOW_ROW_SECONDS:
                continue
            gc.collect()
            gc.disable()  # as timeit does: a cyclic-GC pass over 100,000 decoded dicts is
            try:          # not the pool's cost, and it grows with the number of items
                started = time.perf_counter()
                out = row.impl.run(workload.fn, inputs[row.items], workload.workers)
                took = time.perf_counter() - started
            except Exception as exc:  # noqa: BLE001 - reported in the table
                row.error = f"{type(exc).__name__}: {exc}"[:60]
                continue
            finally:
                gc.enable()
            row.times.append(took)
            if row.impl is LOOP and row.items not in expected:
                expected[row.items] = out
            same = out == expected[row.items]
            row.ok = same if row.ok is None else (row.ok and same)
            del out
    return rows


def print_table(workload: Workload, rows: list[Row]) -> None:
    loop_rate = {row.items: min(row.times) / row.items
                 for row in rows if row.impl is LOOP and row.times}
    headers = ["implementation", "items", "workers", "seconds", "us/item", "speed-up"]
    if workload.efficiency:
        headers.append(f"speed-up/{workload.workers}")
    headers.append("ok")
    table = []
    for row in rows:
        workers = 1 if row.impl is LOOP else workload.workers
        cells = [row.label, f"{row.items:,}", str(workers)]
        if row.impl.missing or row.error or not row.times:
            reason = row.impl.missing or row.error or "not run"
            cells += [f"skipped: {reason}" if row.impl.missing else f"error: {reason}"]
            table.append(cells)
            continue
        best = min(row.times)
        speedup = loop_rate[row.items] / (best / row.items) if row.items in loop_rate else None
        cells += [f"{best:.4f}", f"{best / row.items * 1e6:.3f}",
                  "-" if speedup is None else f"{speedup:.2f}x"]
        if workload.efficiency:
            cells.append("-" if speedup is None else f"{speedup / workers:.2f}")
        cells.append("ok" if row.ok else "WRONG")
        if len(row.times) == 1 and REPEATS > 1:
            cells[3] += "*"
        table.append(cells)
    # A skipped row's reason spans the numeric columns: it does not widen them.
    widths = [max([len(header)] + [len(r[i]) for r in table if i < 3 or len(r) == len(headers)])
              for i, header in enumerate(headers)]
    right = set(range(1, len(headers)))

    def fmt(cells: list[str]) -> str:
        if len(cells) < len(headers):  # a skipped row: the reason spans the numeric columns
            head = [cells[i].ljust(widths[i]) if i == 0 else cells[i].rjust(widths[i])
                    for i in range(len(cells) - 1)]
            return "  ".join(head + [cells[-1]])
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    print(f"\n== {workload.name}: {workload.title}")
    print(fmt(headers))
    print("  ".join("-" * w for w in widths))
    for cells in table:
        print(fmt(cells))


# -- memory ----------------------------------------------------------------------------------

MEMORY_ITEMS = 10_000_000
MEMORY_MARKS = (1_000_000, 5_000_000, 10_000_000)
CHECK_BLOCK = 65_536


def _maxrss_mb() -> float:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes vs KiB


def memory_child() -> int:
    """Iterate orderedtask.map over 10M no-op items; print maxrss at each mark (JSON lines)."""
    def emit(**fields: Any) -> None:
        print(json.dumps(fields), flush=True)

    emit(items=0, maxrss_mb=round(_maxrss_mb(), 1), core=orderedtask.IMPLEMENTATION)
    results: Iterator[int] = orderedtask.map(identity, range(MEMORY_ITEMS), workers=2)
    done = 0
    started = time.perf_counter()
    for mark in MEMORY_MARKS:
        while done < mark:
            block = list(islice(results, min(CHECK_BLOCK, mark - done)))
            if not block or block != list(range(done, done + len(block))):
                emit(error=f"output out of order or short after {done:,} items")
                return 1
            done += len(block)
        emit(items=done, maxrss_mb=round(_maxrss_mb(), 1),
             seconds=round(time.perf_counter() - started, 2))
    return 0


def measure_memory() -> None:
    print(f"\n== memory: peak RSS of orderedtask.map over {MEMORY_ITEMS:,} no-op items, "
          "2 workers (child process; ru_maxrss)")
    for core, env in (("c", {}), ("py", {"ORDEREDTASK_NO_EXTENSIONS": "1"})):
        if core == "c" and orderedtask.IMPLEMENTATION != "c":
            print("  core c: skipped (compiled core not built)")
            continue
        command = [sys.executable, os.path.abspath(__file__), "--memory"]
        if os.path.exists("/bin/sh"):
            # ru_maxrss survives exec: a child exec'd straight from this (large) process would
            # start at this process's peak. A shell that forks first gives it a fresh peak.
            command = ["/bin/sh", "-c", '"$0" "$@"; exit $?', *command]
        proc = subprocess.run(command, env={**os.environ, **env}, capture_output=True,
                              text=True, timeout=300)
        points = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        errors = [p["error"] for p in points if "error" in p]
        if proc.returncode or errors or len(points) != len(MEMORY_MARKS) + 1:
            print(f"  core {core}: FAILED (rc {proc.returncode}) {errors} {proc.stderr[-500:]}")
            continue
        start, *marks = points
        line = ", ".join(f"{p['items'] / 1e6:g}M: {p['maxrss_mb']:.1f} MB" for p in marks)
        growth = marks[-1]["maxrss_mb"] - marks[0]["maxrss_mb"]
        verdict = "flat" if growth <= max(2.0, 0.05 * marks[0]["maxrss_mb"]) else "GROWING"
        print(f"  core {start['core']}: after import {start['maxrss_mb']:.1f} MB; {line}; "
              f"{marks[-1]['seconds']:.1f} s")
        print(f"    {verdict}: +{growth:.1f} MB from {marks[0]['items']:,} to "
              f"{marks[-1]['items']:,} items")


# -- main ------------------------------------------------------------------------------------


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def print_machine() -> None:
    gil = getattr(sys, "_is_gil_enabled", None)
    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    print("orderedtask benchmark comparison")
    print(f"  platform:    {platform.platform()} ({platform.machine()})")
    print(f"  python:      {platform.python_implementation()} {platform.python_version()}"
          f" ({sys.executable})")
    print(f"  cpus:        {cpus} (usable: {usable})")
    print(f"  GIL:         {'on' if gil is None or gil() else 'off'}"
          f"{'' if gil is not None else ' (no sys._is_gil_enabled: standard build)'}")
    print(f"  orderedtask: {orderedtask.__version__}, core {orderedtask.IMPLEMENTATION} "
          f"({os.path.dirname(orderedtask.__file__)})")
    print(f"  peers:       orjson {_version('orjson')}, mpire {_version('mpire')}, "
          f"joblib {_version('joblib')}; multiprocessing start method "
          f"{multiprocessing.get_start_method()}")
    print(f"  timing:      best of {REPEATS} (1 run if the first took > {SLOW_ROW_SECONDS:g} s, "
          "marked *), cyclic GC off while timing;")
    print("               every call starts and shuts down its pool")
    print("               (loky: its reusable executor, warmed up first); speed-up = "
          "loop us/item / row us/item, same item count")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs")
    parser.add_argument("--only", default="",
                        help="comma-separated workloads: noop,orjson,sleep,zlib,python,memory")
    parser.add_argument("--memory", action="store_true",
                        help="child mode: iterate orderedtask.map over 10M items and print "
                             "maxrss at 1M, 5M, 10M as JSON lines")
    args = parser.parse_args(argv)
    if args.memory:
        return memory_child()
    load_peers()

    selected = {name.strip() for name in args.only.split(",") if name.strip()}
    known = {w.name for w in workloads(args.quick)} | {"memory"}
    if selected - known:
        parser.error(f"unknown workload(s) {sorted(selected - known)}; choose from {sorted(known)}")
    print_machine()
    if not selected or "python" in selected:
        print(f"  spin():      {calibrate_spin()} loop iterations per call (~50 us)")
    for workload in workloads(args.quick):
        if selected and workload.name not in selected:
            continue
        if workload.missing:
            print(f"\n== {workload.name}: skipped ({workload.missing})")
            continue
        started = time.perf_counter()
        rows = measure(workload)
        print_table(workload, rows)
        print(f"   ({time.perf_counter() - started:.1f} s for this table)", flush=True)
    if not selected or "memory" in selected:
        measure_memory()
    return 0


if __name__ == "__main__":
    sys.exit(main())
