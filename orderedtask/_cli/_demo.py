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
from collections.abc import Callable
from typing import Any

from .. import IMPLEMENTATION, Pool, Task
from .. import map as ordered_map
from .._core import gil_enabled
from .._decode import pick_decoder
from .._options import MAP_WINDOW, POOL_WINDOW, default_window


GC_HINT_THRESHOLD = 20_000
#: The hint is printed when a slower run had at least one GC pass per this many messages
#: (2 workers on the standard build: ~3.5 per 1,000; an adaptive run at level 0: ~0.01).
GC_HINT_MESSAGES_PER_PASS = 1_000


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


#: The second workload's I/O per message: a wait the GIL is released for.
IO_SECONDS = 0.001


def _level_note(stats: dict[str, Any], workers: int | None) -> str:
    """'level 0: settled: the step did not pay' - where adaptive concurrency ended, and why."""
    if "decisions" not in stats:  # stats()["workers"] counts live threads: 0 once ended
        return f"{workers} workers (fixed)"
    decisions = stats["decisions"]
    why = decisions[-1][4] if decisions else "it never needed to move"
    where = "this thread ran each item itself" if stats["level"] == 0 else "workers"
    return f"level {stats['level']} ({where}); last decision: {why}"


class _CollectorPasses:
    """Counts the cyclic-GC passes that run while it is entered (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.count = 0

    def _seen(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.count += 1

    def __enter__(self) -> _CollectorPasses:
        gc.callbacks.append(self._seen)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self._seen)


def _loop(fn: Any, expected: list[int], bodies: list[bytes]) -> float:
    """The plain loop every variant is compared with: its seconds."""
    check = _OrderCheck(expected)
    started = time.perf_counter()
    for offset, body in zip(expected, bodies):
        check(offset, fn(body))
    elapsed = time.perf_counter() - started
    check.done(len(expected))
    return elapsed


def _drain_pool(workers: int | None, fn: Any, expected: list[int], bodies: list[bytes],
                window: int | None) -> tuple[float, dict[str, Any]]:
    check = _OrderCheck(expected)
    count = len(expected)
    started = time.perf_counter()
    with Pool(workers, fn, window=window) as pool:
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
        stats = pool.stats()
    elapsed = time.perf_counter() - started
    check.done(count)
    return elapsed, stats


def _drain_map(workers: int | None, fn: Any, expected: list[int], bodies: list[bytes],
               window: int | None) -> tuple[float, dict[str, Any]]:
    check = _OrderCheck(expected)
    started = time.perf_counter()
    stream = ordered_map(fn, bodies, workers=workers, window=window)
    for offset, doc in zip(expected, stream):
        check(offset, doc)
    elapsed = time.perf_counter() - started
    check.done(len(expected))
    return elapsed, stream.stats()


def _fastest_of(rounds: int, variants: dict[str, Callable[[], tuple[float, dict[str, Any]]]]
                ) -> dict[str, tuple[float, dict[str, Any], int]]:
    """Each variant run ``rounds`` times, interleaved, so that a slow spell of a shared machine
    hits them alike: its fastest run's (seconds, stats, cyclic-GC passes)."""
    fastest: dict[str, tuple[float, dict[str, Any], int]] = {}
    for _ in range(rounds):
        for label, variant in variants.items():
            with _CollectorPasses() as passes:
                seconds, stats = variant()
            if label not in fastest or seconds < fastest[label][0]:
                fastest[label] = (seconds, stats, passes.count)
    return fastest


def _table(title: str, count: int, rows: list[tuple[str, float, str]]) -> None:
    base = rows[0][1]
    print(f"\n  {title}")
    print(f"  {'':38} {'msg/s':>12} {'us/msg':>8} {'vs loop':>8}")
    for label, seconds, note in rows:
        print(f"  {label:38} {count / seconds:12,.0f} {seconds / count * 1e6:8.2f} "
              f"{base / seconds:7.2f}x")
        if note:
            print(f"  {'':40}{note}")


def run(count: int, workers: int | None, decoder: str, window: int | None,
        rounds: int = 3) -> int:
    name, loads = pick_decoder(decoder)
    messages = make_messages(count)
    # Two flat lists (ints and bytes are not tracked by the cyclic GC) instead of a list of
    # tuples: a consumer holds one fetch batch, not the whole partition, and on 3.13t every
    # collection walks all tracked objects, so 300,000 tuples would tax the pool, not the loop.
    expected = [off for off, _ in messages]
    bodies = [body for _, body in messages]
    del messages
    size = sum(map(len, bodies)) / len(bodies)
    how = "adaptive workers" if workers is None else f"{workers} workers"
    print(f"orderedtask demo: {count:,} Kafka-like messages (~{size:.0f} B, offsets with gaps)")
    print(f"  python {sys.version.split()[0]}, GIL {'on' if gil_enabled() else 'off'}, "
          f"decoder {name}, core {IMPLEMENTATION}, {how}, {os.cpu_count()} CPUs, "
          f"gc threshold {gc.get_threshold()[0]}")
    sizing = workers or os.cpu_count() or 1
    pool_window = window or default_window(POOL_WINDOW, sizing)
    map_window = window or default_window(MAP_WINDOW, sizing)
    print(f"  window {pool_window:,} (Pool), {map_window:,} (map)"
          f"{'' if window else ', the defaults for this build and GC threshold'}")

    # 1. Decoding only: every variant streams (decode, check order, drop), as a consumer
    # that commits offsets would.
    def decode(workerlocal: dict[str, Any], task: Task) -> None:
        task.output = loads(task.input)

    fastest = _fastest_of(rounds, {
        "loop": lambda: (_loop(loads, expected, bodies), {}),
        "Pool": lambda: _drain_pool(workers, decode, expected, bodies, window),
        "map": lambda: _drain_map(workers, loads, expected, bodies, window),
    })
    base, _, loop_passes = fastest["loop"]
    pool_seconds, pool_stats, pool_passes = fastest["Pool"]
    map_seconds, map_stats, map_passes = fastest["map"]
    print(f"  each variant below: the fastest of {rounds} interleaved run(s)")
    _table(f"1. decode only ({name}.loads)", count, [
        ("plain loop (sequential)", base, ""),
        ("orderedtask.Pool (Task per message)", pool_seconds, _level_note(pool_stats, workers)),
        ("orderedtask.map", map_seconds, _level_note(map_stats, workers)),
    ])
    print(f"  cyclic-GC passes during the runs: loop {loop_passes:,}, "
          f"Pool {pool_passes:,}, map {map_passes:,}")
    if gil_enabled():
        print(f"  the GIL is on and {name}.loads holds it: more threads cannot decode faster, "
              "so adaptive\n  concurrency settles low (level 0: the consumer decodes "
              "inline, like the loop).")
    else:
        print(f"  the GIL is off: {name}.loads runs on several threads at once.")

    # 2. Decoding plus ~1 ms of I/O per message (a lookup, a write): parallelism pays here
    # on any build, and adaptive concurrency climbs to many threads.
    small = min(count, 2_000)  # the loop takes ~2.5 s; adaptive needs ~0.3 s to climb
    expected_io, bodies_io = expected[:small], bodies[:small]

    def decode_and_wait(body: bytes) -> Any:
        doc = loads(body)
        time.sleep(IO_SECONDS)
        return doc

    io_base = _loop(decode_and_wait, expected_io, bodies_io)
    io_seconds, io_stats = _drain_map(workers, decode_and_wait, expected_io, bodies_io, window)
    _table(f"2. decode + {IO_SECONDS * 1000:g} ms of I/O per message ({small:,} messages)", small,
           [("plain loop (sequential)", io_base, ""),
            ("orderedtask.map", io_seconds, _level_note(io_stats, workers))])
    print("\n  order check: every message came out once, in offset order, decoded body matching")
    slower = [(label, passes) for label, seconds, passes in
              (("Pool", pool_seconds, pool_passes), ("map", map_seconds, map_passes))
              if seconds > base and passes > loop_passes
              and passes * GC_HINT_MESSAGES_PER_PASS >= count]
    if gc.get_threshold()[0] < GC_HINT_THRESHOLD and slower:
        label, passes = max(slower, key=lambda row: row[1])
        print(f"  note: {label} ran {passes:,} cyclic-GC passes: decoded messages waiting in the "
              f"window survive them,\n  and a loop never triggers one; a long-running consumer "
              f"raises the first threshold:\n  rerun with --gc-threshold {GC_HINT_THRESHOLD} "
              f"(README, Performance)")
    return 0


def _kafka_demo(messages: int, workers: int | None) -> int:
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
                        help="a fixed number of workers (default: adaptive, as the library's)")
    parser.add_argument("--window", type=int, default=None, help="default: the library's")
    parser.add_argument("--decoder", choices=["auto", "orjson", "json"], default="auto",
                        help="auto: orjson with the GIL on, stdlib json on free-threaded builds")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each decode-only variant, interleaved; the fastest is shown")
    parser.add_argument("--gc-threshold", type=int, default=None, metavar="N",
                        help="first cyclic-GC threshold for the whole run (default: CPython's)")
    args = parser.parse_args(argv)
    if args.gc_threshold is not None:
        if args.gc_threshold < 1:
            parser.error("--gc-threshold must be >= 1")
        gc.set_threshold(args.gc_threshold, *gc.get_threshold()[1:])
    if (args.messages < 1 or args.rounds < 1
            or (args.workers is not None and args.workers < 1)):
        parser.error("--messages, --rounds and --workers must be >= 1")
    if args.window is not None and args.window < 1:
        parser.error("--window must be >= 1")
    try:
        status = run(args.messages, args.workers, args.decoder, args.window, args.rounds)
        status = max(status, _kafka_demo(args.messages, args.workers))
        sys.stdout.flush()  # a block-buffered pipe fails here, not at print()
        return status
    except BrokenPipeError:
        # The reader left (`orderedtask demo | head`): quietly, as SIGPIPE would. Point stdout
        # at /dev/null so that the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
