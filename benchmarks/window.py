"""How the window size changes throughput: the measurement behind the default windows.

    python benchmarks/window.py [--items N] [--repeat R]

For Pool (one Task per item, per-task enqueue from a producer thread) and map, on four
workloads: a no-op, decoding ~200-byte messages (orjson, or stdlib json where orjson is
missing, as on 3.13t), the same plus a ~20 us pure-Python transform (the free-threading
headline), and time.sleep(1 ms) (releases the GIL, 12 workers); prints the speed-up against a
plain loop for each window. The cyclic GC keeps the interpreter's default settings: what the
window costs in collections is part of what this measures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # measure this checkout (its in-place build), as compare.py does

import orderedtask  # noqa: E402
from freethreading import calibrate, transform  # noqa: E402
from orderedtask._core import gil_enabled  # noqa: E402
from orderedtask._cli._demo import make_messages  # noqa: E402

WINDOWS = [256, 512, 1024, 2048, 4096, 16384]


def pool_run(fn, items, workers: int, window: int) -> float:
    def work(workerlocal, task):
        task.output = fn(task.input)

    started = time.perf_counter()
    with orderedtask.Pool(workers, work, window=window) as pool:
        def produce():
            for i, item in enumerate(items):
                pool.enqueue(orderedtask.Task(i, item))
            pool.close()
        producer = threading.Thread(target=produce)
        producer.start()
        count = sum(1 for _ in pool.results())
        producer.join()
    assert count == len(items)
    return time.perf_counter() - started


def map_run(fn, items, workers: int, window: int) -> float:
    started = time.perf_counter()
    count = sum(1 for _ in orderedtask.map(fn, items, workers=workers, window=window))
    assert count == len(items)
    return time.perf_counter() - started


def loop_run(fn, items) -> float:
    started = time.perf_counter()
    for item in items:
        fn(item)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    try:
        import orjson
        loads = orjson.loads
    except ImportError:
        loads = json.loads
    bodies = [body for _, body in make_messages(args.items)]
    rounds = calibrate(bodies, 20.0)

    def decode_transform(body: bytes) -> dict:
        return transform(json.loads(body), rounds)

    workloads = [
        ("no-op", lambda x: x, list(range(args.items)), 2),
        ("decode", loads, bodies, 2),
        ("json+20us", decode_transform, bodies, 2),
        ("sleep 1 ms", lambda x: time.sleep(0.001), list(range(2000)), 12),
    ]
    print(f"python {sys.version.split()[0]}, GIL {'on' if gil_enabled() else 'off'}, "
          f"gc threshold {gc.get_threshold()[0]}, core {orderedtask.IMPLEMENTATION}, "
          f"decoder {loads.__module__}; speed-up vs plain loop, best of {args.repeat}")
    print(f"{'workload':12} {'api':5} " + " ".join(f"{w:>7}" for w in WINDOWS), flush=True)
    for name, fn, items, workers in workloads:
        base = min(loop_run(fn, items) for _ in range(args.repeat))
        for api, run in (("Pool", pool_run), ("map", map_run)):
            cells = []
            for window in WINDOWS:
                best = min(run(fn, items, workers, window) for _ in range(args.repeat))
                cells.append(f"{base / best:6.2f}x")
            print(f"{name:12} {api:5} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
