"""Level 0 (the consumer runs each item itself) against three loops, on GIL-holding decoding.

    python benchmarks/level0.py [--items N] [--repeat N]
    python benchmarks/level0.py --instructions [--items N]

What separates adaptive ``map`` settled at level 0 from a plain loop: the loop that drops
each result at once (``for b in bodies: loads(b)``) reuses the memory of one result for the
next, which no iterator can (its consumer holds the last result until it asks for the next
one); a loop that keeps each result in a variable until the next, and the builtin ``map``,
measure that part.

Wall time: every repeat runs each row once on ``--items`` items (short, so that a repeat
fits in one spell of a shared machine), in alternating order (forwards, then backwards);
each ratio is the median over repeats of the row's rate against the dropping loop's in the
same repeat.

``--instructions``: instructions executed per item, counted by valgrind's callgrind, which
no other load on the machine sways. Each row runs in a child under callgrind twice (1x and
4x ``--items``, the same 5,000 messages repeated), with ``PYTHONHASHSEED=0`` (dict probing depends on the
hash seed); the difference, divided by the extra items, is the row's cost per item, start-up
and set-up cancelled. Under callgrind the pool runs ~50x slower, so the child scales the
controller's two clock-based constants to match: ``READING_SECONDS`` x50 (the consumer then
reads as often per item as it does at full speed, once every ``MAX_UNREAD`` items) and
``CHEAP_RATE`` /50 (decoding still counts as too cheap for a hand-off, and settles at level 0,
as it does at full speed). Instructions are not time (cache misses and the memory effect
above are not counted): they measure level 0's own code, not the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
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
#: How much slower a pool runs under callgrind than at full speed (measured here: 40-60x).
CALLGRIND_SLOWDOWN = 50.0
#: Distinct messages under callgrind: each run makes them, and both sizes must make the same.
DISTINCT_UNDER_CALLGRIND = 5_000


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
        stream = orderedtask.map(loads, bodies)
        for _ in stream:
            pass
        assert stream.stats()["level"] == 0, stream.stats()

    return {"loop, dropping each result": loop_dropping,
            "loop, keeping each until the next": loop_keeping,
            "builtin map": builtin_map,
            "orderedtask.map (adaptive)": adaptive_map}


def bodies_for(items: int, distinct: int = 200_000) -> list[bytes]:
    messages = [body for _, body in make_messages(min(items, distinct))]
    return (messages * (items // len(messages) + 1))[:items]


def wall(items: int, repeat: int) -> None:
    bodies = bodies_for(items)
    print(f"python {sys.version.split()[0]}, GIL {'on' if gil_enabled() else 'off'}, "
          f"core {orderedtask.IMPLEMENTATION}, {LOADS.__module__}.loads, "
          f"{len(bodies):,} items, {repeat} repeats in alternating order")
    runs = rows(bodies)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for repeat_index in range(repeat):
        order = list(runs.items())
        for name, run in order if repeat_index % 2 == 0 else reversed(order):
            started = time.perf_counter()
            run()
            rates[name].append(len(bodies) / (time.perf_counter() - started))
    base = rates["loop, dropping each result"]
    print(f"  {'':36}{'items/s':>12}  vs the dropping loop (median of paired ratios)")
    for name, values in rates.items():
        ratio = statistics.median(value / b for value, b in zip(values, base))
        print(f"  {name:36}{statistics.median(values):12,.0f}  {ratio:.3f}x")


def child(name: str, items: int) -> None:
    """Run one row once (under callgrind, from ``instructions``)."""
    from orderedtask import _adaptive

    _adaptive.READING_SECONDS *= CALLGRIND_SLOWDOWN
    _adaptive.CHEAP_RATE /= CALLGRIND_SLOWDOWN
    # The same messages at every size (making them is not the row's cost): a set of
    # DISTINCT_UNDER_CALLGRIND, repeated.
    run = rows(bodies_for(items, DISTINCT_UNDER_CALLGRIND))[name]
    run()


def instructions(items: int) -> None:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("--instructions needs valgrind (Debian: apt-get install valgrind)")
    env = dict(os.environ, PYTHONHASHSEED="0")
    print(f"python {sys.version.split()[0]}, GIL {'on' if gil_enabled() else 'off'}, "
          f"core {orderedtask.IMPLEMENTATION}, {LOADS.__module__}.loads, instructions per "
          f"item (callgrind; {4 * items:,} items minus {items:,})")
    per_item: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in rows([]):
            counts = []
            for size in (items, 4 * items):
                out = os.path.join(scratch, "callgrind.out")
                done = subprocess.run(
                    [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}",
                     sys.executable, __file__, "--child", name, "--items", str(size)],
                    env=env, capture_output=True, text=True, check=True)
                counts.append(_total_instructions(done.stderr))
            per_item[name] = (counts[1] - counts[0]) / (3 * items)
    base = per_item["loop, dropping each result"]
    print(f"  {'':36}{'instr/item':>12}  vs the dropping loop (instructions: loop / row)")
    for name, count in per_item.items():
        print(f"  {name:36}{count:12,.0f}  {base / count:.3f}x")


def _total_instructions(stderr: str) -> int:
    for line in stderr.splitlines():
        if "I   refs:" in line:
            return int(line.split(":")[-1].replace(",", ""))
    raise RuntimeError(f"no instruction count in callgrind's output:\n{stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=None,
                        help="items a run (default 100,000; --instructions: 10,000)")
    parser.add_argument("--repeat", type=int, default=41)
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions per item under callgrind instead of timing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.items)
    elif args.instructions:
        instructions(args.items or 10_000)
    else:
        wall(args.items or 100_000, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
