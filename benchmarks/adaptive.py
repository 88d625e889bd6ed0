"""Adaptive concurrency (``workers=None``) against every fixed count and a plain loop.

    python benchmarks/adaptive.py [--quick] [--repeat N]

Each workload runs as a plain loop, as ``orderedtask.map`` with ``workers`` fixed at 1, 2, 4 ...
64, and adaptive; every cell is the median of ``--repeat`` runs, interleaved so that a slow
spell of the machine hits every cell alike. Where a cell would be short at high counts (1 ms
sleeps), a fixed count of c runs c times the loop's items (up to the adaptive run's), so that
every cell lasts about as long; the adaptive run is long enough to pay for its climb, as a
stream of a consumer is, and the loop runs the same stream (but for the sleeps), just before
and just after the adaptive run (its cell is the mean rate of the two; the ratio to the loop
is the median of each repeat's own ratio, as the machine's speed drifts between repeats). Then a stream whose
first half waits 1 ms per item and whose second half holds the GIL, with the trace of the
levels the controller chose.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import orderedtask
from orderedtask._cli._demo import make_messages
from orderedtask._core import gil_enabled

try:
    import orjson
except ImportError:  # 3.13t: no orjson (it would turn the GIL back on)
    orjson = None

LOADS = orjson.loads if orjson is not None and gil_enabled() else json.loads
FIXED = [1, 2, 4, 8, 16, 32, 64]


def sleep_1ms(x: Any) -> Any:
    time.sleep(0.001)
    return x


def compress(chunk: bytes) -> int:
    return len(zlib.compress(chunk, 6))


def transform(doc: dict[str, Any]) -> int:
    # ~20 us of pure Python on this machine's standard build: what a handler does per message.
    total = 0
    for _ in range(40):
        for key, value in doc.items():
            total += len(key) + (len(value) if isinstance(value, str) else 1)
    return total


def decode_and_transform(body: bytes) -> int:
    return transform(LOADS(body))


def pure_python_50us(x: int) -> int:
    total = 0
    for i in range(1_000):
        total += i * x % 7
    return total


def workloads(quick: bool) -> list[tuple[str, Callable[[Any], Any], list[Any], int, str,
                                         list[int]]]:
    """(name, fn, items, share, backend, fixed counts): the adaptive run takes every item; the
    loop and a fixed count c take ``share`` items (c x ``share`` if the name says I/O), or all
    of them if ``share`` is 0."""
    scale = 4 if quick else 1
    bodies = [body for _, body in make_messages(200_000 // scale)]
    distinct = [os.urandom(16_384) * 4 for _ in range(50)]  # 64 KB, compressible
    chunks = [distinct[i % 50] for i in range(18_000 // scale)]
    cpus = os.cpu_count() or 1
    process_counts = sorted({1, 2, cpus})
    # The adaptive run takes the whole (long) stream, the loop and the fixed counts a part.
    rows = [
        (f"{LOADS.__module__}.loads, ~200 B", LOADS, bodies * 5, len(bodies), "thread", FIXED),
        ("time.sleep(1 ms)", sleep_1ms, list(range(120_000 // scale)), 500 // scale, "thread",
         FIXED),
        ("zlib.compress 64 KB", compress, chunks, 2_000 // scale, "thread", FIXED),
        ("50 us pure Python, processes", pure_python_50us, list(range(40_000 // scale)),
         20_000 // scale, "process", process_counts),
    ]
    if not gil_enabled():
        rows.insert(3, ("json.loads + 20 us transform (GIL off)", decode_and_transform,
                        bodies[: 150_000 // scale], 50_000 // scale, "thread", FIXED))
    return rows


def run_loop(fn: Callable[[Any], Any], items: list[Any]) -> float:
    started = time.perf_counter()
    for item in items:
        fn(item)
    return time.perf_counter() - started


def run_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int | None,
            backend: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    stream = orderedtask.map(fn, items, workers=workers, backend=backend)
    for _ in stream:
        pass
    return time.perf_counter() - started, stream.stats()


def measure(name: str, fn: Callable[[Any], Any], items: list[Any], share: int, backend: str,
            counts: list[int], repeat: int) -> dict[str, Any]:
    cells: dict[str, list[float]] = {"loop": []}  # items per second, each run
    levels: list[int] = []
    paired: list[float] = []  # adaptive / loop within one repeat (one spell of the machine)

    def part(workers: int) -> list[Any]:
        if not share:
            return items
        return items[: min(len(items), share * (workers if "sleep" in name else 1))]

    # The loop runs the adaptive run's whole stream (the same items, the same length), but
    # for waits, where that would take minutes: its rate is known.
    looped = part(1) if "sleep" in name else items
    for _ in range(repeat):
        for workers in counts:
            cells.setdefault(str(workers), []).append(
                len(part(workers)) / run_map(fn, part(workers), workers, backend)[0])
        # The loop brackets the adaptive run (its mean rate, just before and just after): on
        # a shared VM whose speed drifts by 10-40%, the ratio the targets speak of is then
        # measured in one spell, and after the same fixed-count runs.
        before = run_loop(fn, looped)
        seconds, stats = run_map(fn, items, None, backend)
        after = run_loop(fn, looped)
        cells["loop"].append(2 * len(looped) / (before + after))
        cells.setdefault("adaptive", []).append(len(items) / seconds)
        levels.append(stats["level"])
        paired.append(cells["adaptive"][-1] / cells["loop"][-1])
    rates = {key: statistics.median(values) for key, values in cells.items()}
    best_fixed = max((key for key in rates if key.isdigit()), key=rates.__getitem__)
    return {"workload": name, "items": len(items), "rates": rates, "best_fixed": best_fixed,
            "adaptive_levels": levels,
            "adaptive_vs_best": rates["adaptive"] / rates[best_fixed],
            "adaptive_vs_loop": statistics.median(paired)}


def mixed_trace(quick: bool) -> dict[str, Any]:
    """First half: 1 ms waits; second half: GIL-bound decoding. The levels over time."""
    waits = 20_000 // (4 if quick else 1)
    bodies = [body for _, body in make_messages(400_000 // (4 if quick else 1))]
    half = {"changed": None}

    def items() -> Iterable[tuple[bool, Any]]:
        for i in range(waits):
            yield True, i
        half["changed"] = time.perf_counter()
        for body in bodies:
            yield False, body

    def fn(item: tuple[bool, Any]) -> Any:
        waits_, value = item
        if waits_:
            time.sleep(0.001)
            return value
        return LOADS(value)

    trace = []
    started = time.perf_counter()
    stream = orderedtask.map(fn, items())
    for count, _ in enumerate(stream):
        if count % 500 == 0:
            trace.append((round(time.perf_counter() - started, 3), count, stream.stats()["level"]))
    total = time.perf_counter() - started
    changed = half["changed"] - started if half["changed"] is not None else None
    return {"seconds": total, "change_at": changed, "trace": trace,
            "decisions": stream.stats()["decisions"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the items")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--only", metavar="TEXT",
                        help="only the workloads whose name contains TEXT (\"mixed\": the "
                             "mixed stream), to re-measure one cell")
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, GIL {'on' if gil_enabled() else 'off'}, "
          f"core {orderedtask.IMPLEMENTATION}, {os.cpu_count()} CPUs, median of {args.repeat}")
    results = []
    for name, fn, items, share, backend, counts in workloads(args.quick):
        if args.only is not None and args.only not in name:
            continue
        row = measure(name, fn, items, share, backend, counts, args.repeat)
        results.append(row)
        rates = row["rates"]
        print(f"\n{name} ({row['items']:,} items, backend {backend})")
        print("  " + "  ".join(f"{key:>9}" for key in rates))
        print("  " + "  ".join(f"{rate:9,.0f}" for rate in rates.values()) + "  items/s")
        print(f"  adaptive: {row['adaptive_vs_best']:.2f}x the best fixed count "
              f"({row['best_fixed']}), {row['adaptive_vs_loop']:.2f}x the loop; "
              f"settled at levels {row['adaptive_levels']}")
    mixed = mixed_trace(args.quick) if args.only in (None, "mixed") else None
    if mixed is not None:
        print(f"\nmixed stream: 1 ms waits, then GIL-bound decoding (changes at "
              f"{mixed['change_at']:.3f} s, ends at {mixed['seconds']:.3f} s)")
        print("  (seconds, items yielded, level): " + ", ".join(
            str(point) for point in mixed["trace"][:: max(1, len(mixed["trace"]) // 40)]))
        print("  last decisions (time, from, to, rate, why):")
        for decision in mixed["decisions"]:
            print(f"    {decision}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"workloads": results, "mixed": mixed}, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
