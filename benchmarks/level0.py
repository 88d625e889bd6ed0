"""Level 0 (the consumer runs each item itself) against three loops, on GIL-holding decoding.

    python benchmarks/level0.py [--items N] [--repeat N]

What separates adaptive ``map`` settled at level 0 from a plain loop: the loop that drops
each result at once (``for b in bodies: loads(b)``) reuses the memory of one result for the
next, which no iterator can (its consumer holds the last result until it asks for the next
one); a loop that keeps each result in a variable until the next, and the builtin ``map``,
measure that part. Each ratio is the median over repeats of the row's rate against the
dropping loop's in the same repeat (the rows run interleaved).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import orderedtask
from orderedtask._cli._demo import make_messages
from orderedtask._core import gil_enabled

try:
    import orjson
except ImportError:
    orjson = None

LOADS = orjson.loads if orjson is not None and gil_enabled() else json.loads


def rows(bodies: list[bytes]) -> dict[str, Callable[[], None]]:
    loads = LOADS

    def loop_dropping() -> None:
        for body in bodies:
            loads(body)

    def loop_keeping() -> None:
        for body in bodies:
            decoded = loads(body)  # noqa: F841 (held until the next, as an iterator's is)

    def builtin_map() -> None:
        for _ in map(loads, bodies):
            pass

    def adaptive_map() -> None:
        for _ in orderedtask.map(loads, bodies):
            pass

    return {"loop, dropping each result": loop_dropping,
            "loop, keeping each until the next": loop_keeping,
            "builtin map": builtin_map,
            "orderedtask.map (adaptive)": adaptive_map}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    messages = [body for _, body in make_messages(min(args.items, 200_000))]
    bodies = (messages * (args.items // len(messages) + 1))[: args.items]
    print(f"python {sys.version.split()[0]}, GIL {'on' if gil_enabled() else 'off'}, "
          f"core {orderedtask.IMPLEMENTATION}, {LOADS.__module__}.loads, "
          f"{len(bodies):,} items, {args.repeat} interleaved repeats")
    runs = rows(bodies)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeat):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            rates[name].append(len(bodies) / (time.perf_counter() - started))
    base = rates["loop, dropping each result"]
    print(f"  {'':36}{'items/s':>12}  vs the dropping loop (median of paired ratios)")
    for name, values in rates.items():
        ratio = statistics.median(value / b for value, b in zip(values, base))
        print(f"  {name:36}{statistics.median(values):12,.0f}  {ratio:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
