"""Soak: stream many tasks through Pool (or map) and print peak RSS as it goes; it must stay flat.

    python benchmarks/soak.py [--tasks 10000000] [--seconds 600] [--api pool|map] [--workers 4]

Bounded by both --tasks and --seconds. Exits 1 if peak RSS grew by more than --max-growth-mb
between the first report (after warm-up) and the end, or if order was ever broken.
"""

from __future__ import annotations

import argparse
import resource
import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # measure this checkout (its in-place build), as compare.py does

import orderedtask  # noqa: E402
from orderedtask import Pool, Task  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000_000)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--api", choices=["pool", "map"], default="pool")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--report-every", type=int, default=1_000_000)
    parser.add_argument("--max-growth-mb", type=float, default=5.0)
    args = parser.parse_args()

    deadline = time.monotonic() + args.seconds
    stop = threading.Event()
    started = time.perf_counter()
    print(f"soak: {args.api}, up to {args.tasks:,} tasks or {args.seconds:.0f} s, "
          f"{args.workers} workers, core {orderedtask.IMPLEMENTATION}", flush=True)

    def payloads():
        for i in range(args.tasks):
            if stop.is_set() or (i % 65536 == 0 and time.monotonic() > deadline):
                return
            yield i

    if args.api == "pool":
        def fn(workerlocal: dict, task: Task) -> None:
            task.output = {"offset": task.index, "body": b"x" * 64}

        pool = Pool(args.workers, fn)

        def produce() -> None:
            for i in payloads():
                pool.enqueue(Task(i, None))
            pool.close()

        threading.Thread(target=produce, daemon=True).start()
        stream = (task.index for task in pool.results())
    else:
        stream = orderedtask.map(lambda i: i, payloads(), workers=args.workers)

    first = None
    count = 0
    for count, value in enumerate(stream, 1):
        if value != count - 1:
            print(f"soak: ORDER BROKEN at {count - 1}: got {value}", flush=True)
            return 1
        if count % args.report_every == 0:
            rss = peak_rss_mb()
            first = rss if first is None else first
            rate = count / (time.perf_counter() - started)
            print(f"  {count:>12,} tasks  peak RSS {rss:7.1f} MB  {rate:11,.0f} tasks/s", flush=True)
    elapsed = time.perf_counter() - started
    rss = peak_rss_mb()
    growth = rss - (first if first is not None else rss)
    print(f"soak: {count:,} tasks in order in {elapsed:.1f} s; peak RSS {rss:.1f} MB, "
          f"growth after the first report {growth:+.1f} MB", flush=True)
    return 1 if growth > args.max_growth_mb else 0


if __name__ == "__main__":
    sys.exit(main())
