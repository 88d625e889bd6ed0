"""``orderedtask demo``: the motivating job, decoding a Kafka-like JSON stream in offset order."""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import threading
import time
from typing import Any

from .. import IMPLEMENTATION, Pool, Task
from .. import map as ordered_map
from .._core import gil_enabled
from .._decode import pick_decoder
from .._options import MAP_WINDOW, POOL_WINDOW, default_window


GC_HINT_THRESHOLD = 20_000


def make_messages(count: int, seed: int = 7) -> list[tuple[int, bytes]]:
    """Kafka-like (offset, JSON body) pairs of ~200 bytes; offsets have compaction gaps."""
    rng = random.Random(seed)
    events = ["click", "view", "purchase", "signup", "scroll"]
    offset = 1_000_000
    messages = []
    for _ in range(count):
        offset += 1 if rng.random() < 0.9 else rng.randint(2, 50)
        body = {
            "offset": offset,
            "user": f"user-{rng.randint(1, 10**6):07d}",
            "event": rng.choice(events),
            "ts": 1_700_000_000_000 + offset * 17,
            "url": f"https://shop.example.com/p/{rng.randint(1, 10**5)}?ref=kafka",
            "session": f"{rng.getrandbits(64):016x}",
            "props": {"price": round(rng.random() * 100, 2), "qty": rng.randint(1, 9),
                      "tags": ["a", "b", "c"][: rng.randint(0, 3)]},
        }
        messages.append((offset, json.dumps(body, separators=(",", ":")).encode()))
    return messages


class _OrderCheck:
    """Checks, as a stream goes by, that each decoded message is the next expected offset."""

    def __init__(self, expected: list[int]) -> None:
        self.expected = iter(expected)
        self.count = 0

    def __call__(self, offset: int, doc: Any) -> None:
        if offset != next(self.expected, None) or doc["offset"] != offset:
            raise SystemExit(f"demo: ORDER CHECK FAILED at offset {offset}")
        self.count += 1

    def done(self, total: int) -> None:
        if self.count != total:
            raise SystemExit(f"demo: ORDER CHECK FAILED: {self.count} of {total} messages came out")


def run(count: int, workers: int, decoder: str, window: int | None) -> int:
    name, loads = pick_decoder(decoder)
    messages = make_messages(count)
    # Two flat lists (ints and bytes are not tracked by the cyclic GC) instead of a list of
    # tuples: a consumer holds one fetch batch, not the whole partition, and on 3.13t every
    # collection walks all tracked objects, so 300,000 tuples would tax the pool, not the loop.
    expected = [off for off, _ in messages]
    bodies = [body for _, body in messages]
    del messages
    size = sum(map(len, bodies)) / len(bodies)
    print(f"orderedtask demo: {count:,} Kafka-like messages (~{size:.0f} B, offsets with gaps)")
    print(f"  python {sys.version.split()[0]}, GIL {'on' if gil_enabled() else 'off'}, "
          f"decoder {name}, core {IMPLEMENTATION}, {workers} workers, {os.cpu_count()} CPUs, "
          f"gc threshold {gc.get_threshold()[0]}")
    pool_window = window or default_window(POOL_WINDOW, workers)
    map_window = window or default_window(MAP_WINDOW, workers)
    print(f"  window {pool_window:,} (Pool), {map_window:,} (map)"
          f"{'' if window else ', the defaults for this build and GC threshold'}")
    # Every variant streams: decode, check order, drop, as a consumer that commits offsets would.
    rows = []

    check = _OrderCheck(expected)
    started = time.perf_counter()
    for offset, body in zip(expected, bodies):
        check(offset, loads(body))
    base = time.perf_counter() - started
    check.done(count)
    rows.append(("plain loop (sequential)", base))

    def decode(workerlocal: dict[str, Any], task: Task) -> None:
        task.output = loads(task.input)

    check = _OrderCheck(expected)
    started = time.perf_counter()
    with Pool(workers, decode, window=window) as pool:
        def produce() -> None:
            # Lists of a few hundred: one lock round each, and no list that keeps every
            # decoded message alive until the end.
            for start in range(0, count, 256):
                pool.enqueue_many([Task(off, body) for off, body in
                                   zip(expected[start:start + 256], bodies[start:start + 256])])
            pool.close()

        producer = threading.Thread(target=produce)
        producer.start()
        for task in pool.results():
            check(task.index, task.output)
        producer.join()
    elapsed = time.perf_counter() - started
    check.done(count)
    rows.append(("orderedtask.Pool (Task per message)", elapsed))

    check = _OrderCheck(expected)
    started = time.perf_counter()
    for offset, doc in zip(expected, ordered_map(loads, bodies, workers=workers, window=window)):
        check(offset, doc)
    elapsed = time.perf_counter() - started
    check.done(count)
    rows.append(("orderedtask.map", elapsed))

    print(f"  {'':38} {'msg/s':>12} {'us/msg':>8} {'vs loop':>8}")
    for label, seconds in rows:
        print(f"  {label:38} {count / seconds:12,.0f} {seconds / count * 1e6:8.2f} "
              f"{base / seconds:7.2f}x")
    print("  order check: every message came out once, in offset order, decoded body matching")
    if gil_enabled():
        print(f"  note: the GIL is on, and {name}.loads holds it, so the decoding itself ran on "
              "one core at a time;\n  the pool can only cost little here. Parallel speed-up "
              "needs work that releases the GIL,\n  a free-threaded Python (3.13t) or processes.")
    else:
        print(f"  note: the GIL is off; {name}.loads ran on {workers} threads at once.")
    if gc.get_threshold()[0] < GC_HINT_THRESHOLD and min(rows[1][1], rows[2][1]) > base:
        print(f"  note: decoded messages waiting in the window survive cyclic-GC passes that the "
              f"loop never triggers;\n  a long-running consumer raises the first threshold: "
              f"rerun with --gc-threshold {GC_HINT_THRESHOLD} (README, Performance)")
    return 0


def _kafka_demo(messages: int, workers: int) -> int:
    """The same stream through a real consumer group (orderedtask/kafka/_demo.py)."""
    try:
        from ..kafka._demo import run_demo
    except ImportError:
        print("\norderedtask demo, Kafka: skipped: pip install 'orderedtask[kafka]'")
        return 0
    return run_demo(messages, workers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orderedtask demo", description=__doc__)
    parser.add_argument("--messages", type=int, default=300_000, help="stream length")
    parser.add_argument("--workers", type=int, default=None,
                        help="default: every CPU with the GIL off; 2 with it on, since "
                             "GIL-holding decoding gains nothing from more threads")
    parser.add_argument("--window", type=int, default=None, help="default: the library's")
    parser.add_argument("--decoder", choices=["auto", "orjson", "json"], default="auto",
                        help="auto: orjson with the GIL on, stdlib json on free-threaded builds")
    parser.add_argument("--gc-threshold", type=int, default=None, metavar="N",
                        help="first cyclic-GC threshold for the whole run (default: CPython's)")
    args = parser.parse_args(argv)
    if args.gc_threshold is not None:
        if args.gc_threshold < 1:
            parser.error("--gc-threshold must be >= 1")
        gc.set_threshold(args.gc_threshold, *gc.get_threshold()[1:])
    if args.workers is None:
        cpus = os.cpu_count() or 2
        args.workers = min(2, cpus) if gil_enabled() else cpus
    if args.messages < 1 or args.workers < 1:
        parser.error("--messages and --workers must be >= 1")
    if args.window is not None and args.window < 1:
        parser.error("--window must be >= 1")
    try:
        status = run(args.messages, args.workers, args.decoder, args.window)
        status = max(status, _kafka_demo(args.messages, args.workers))
        sys.stdout.flush()  # a block-buffered pipe fails here, not at print()
        return status
    except BrokenPipeError:
        # The reader left (`orderedtask demo | head`): quietly, as SIGPIPE would. Point stdout
        # at /dev/null so that the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
