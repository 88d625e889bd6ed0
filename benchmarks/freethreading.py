"""The headline workload: JSON decode plus a ~20 us pure-Python transform per message.

    python benchmarks/freethreading.py [--messages N] [--workers W ...] [--transform-us US]
                                       [--window N]

Run it on a free-threaded build (3.13t) to see threads scale, and on the standard build for
the contrast. Prints the interpreter, whether the GIL is on, the plain loop, and
``orderedtask.map`` / ``orderedtask.Pool`` for each worker count, with speed-ups against the
loop of the same interpreter; every output is checked complete and in order.
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
from orderedtask._core import gil_enabled  # noqa: E402
from orderedtask._cli._demo import make_messages  # noqa: E402

ROUNDS = 40  # transform loop length per round; calibrated to --transform-us


def transform(doc: dict, rounds: int) -> dict:
    """Stand-in for per-message business logic: validate, hash, enrich."""
    h = 0
    text = doc["user"] + doc["url"] + doc["session"]
    for _ in range(rounds):
        for ch in text:
            h = (h * 31 + ord(ch)) & 0xFFFFFFFF
    doc["hash"] = h
    doc["amount"] = doc["props"]["price"] * doc["props"]["qty"]
    return doc


def calibrate(bodies: list[bytes], target_us: float) -> int:
    docs = [json.loads(b) for b in bodies[:2000]]
    started = time.perf_counter()
    for doc in docs:
        transform(doc, 1)
    per_round = (time.perf_counter() - started) / len(docs) * 1e6
    return max(1, round(target_us / per_round))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, os.cpu_count() or 2])
    parser.add_argument("--transform-us", type=float, default=20.0)
    parser.add_argument("--window", type=int, default=None,
                        help="window for map and Pool (default: the library's default)")
    args = parser.parse_args()

    messages = make_messages(args.messages)
    offsets = [off for off, _ in messages]
    bodies = [body for _, body in messages]
    rounds = calibrate(bodies, args.transform_us)
    loads = json.loads

    def work(body: bytes) -> dict:
        return transform(loads(body), rounds)

    print(f"python {sys.version.split()[0]} ({'GIL on' if gil_enabled() else 'free-threaded, GIL off'}), "
          f"{os.cpu_count()} CPUs, core {orderedtask.IMPLEMENTATION}, decoder json, "
          f"{args.messages:,} messages, transform ~{args.transform_us:.0f} us, "
          f"window {args.window or 'default'}, gc threshold {gc.get_threshold()[0]}")

    def check(docs) -> None:
        count = 0
        for off, doc in zip(offsets, docs):
            if doc["offset"] != off:
                raise SystemExit(f"ORDER CHECK FAILED at {off}")
            count += 1
        if count != len(offsets):
            raise SystemExit("ORDER CHECK FAILED: missing messages")

    started = time.perf_counter()
    check(work(b) for b in bodies)
    base = time.perf_counter() - started
    print(f"  {'plain loop':28} {base:7.2f} s {args.messages / base:10,.0f} msg/s   1.00x")

    for workers in args.workers:
        # The ceiling: plain threads on contiguous slices, no ordering, no hand-off.
        slices = [bodies[k * len(bodies) // workers:(k + 1) * len(bodies) // workers]
                  for k in range(workers)]
        outputs: list = [None] * workers

        def run_slice(k: int) -> None:
            outputs[k] = [work(b) for b in slices[k]]

        threads = [threading.Thread(target=run_slice, args=(k,)) for k in range(workers)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        check(doc for part in outputs for doc in part)
        print(f"  {'raw threads, %d (ceiling)' % workers:28} {elapsed:7.2f} s "
              f"{args.messages / elapsed:10,.0f} msg/s {base / elapsed:6.2f}x")

        started = time.perf_counter()
        check(orderedtask.map(work, bodies, workers=workers, window=args.window))
        elapsed = time.perf_counter() - started
        print(f"  {'map, %d workers' % workers:28} {elapsed:7.2f} s {args.messages / elapsed:10,.0f} msg/s "
              f"{base / elapsed:6.2f}x")

        def fn(workerlocal, task):
            task.output = work(task.input)

        def one_by_one(pool: orderedtask.Pool) -> None:
            for off, body in messages:
                pool.enqueue(orderedtask.Task(off, body))

        def in_lists(pool: orderedtask.Pool) -> None:
            for start in range(0, len(messages), 256):
                pool.enqueue_many([orderedtask.Task(off, body)
                                   for off, body in messages[start:start + 256]])

        for label, feed in (("Pool, %d workers", one_by_one),
                            ("Pool+enqueue_many, %d", in_lists)):
            started = time.perf_counter()
            with orderedtask.Pool(workers, fn, window=args.window) as pool:
                def produce(pool: orderedtask.Pool = pool, feed=feed) -> None:
                    feed(pool)
                    pool.close()
                producer = threading.Thread(target=produce)
                producer.start()
                check(task.output for task in pool.results())
                producer.join()
            elapsed = time.perf_counter() - started
            print(f"  {label % workers:28} {elapsed:7.2f} s "
                  f"{args.messages / elapsed:10,.0f} msg/s {base / elapsed:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
