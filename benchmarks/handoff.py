"""The hand-off cost per item: what the pool adds around a function that does nothing.

    python benchmarks/handoff.py [ITEMS]

Rows: a plain loop calling the no-op; ``map`` of it (fixed 1 and 2 workers, and adaptive);
a ``Pool`` fed one ``enqueue(Task)`` per item, and ``enqueue_many`` lists of 256, from a
producer thread. Microseconds per item, best of 3, cyclic GC off while timing (it would
measure the collector, not the hand-off).
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable

import orderedtask
from orderedtask import Pool, Task


def noop(x: object) -> object:
    return x


def pool_noop(workerlocal: dict, task: Task) -> None:
    pass


def best(run: Callable[[], float], times: int = 3) -> float:
    return min(run() for _ in range(times))


def per_item(items: int, body: Callable[[], int]) -> float:
    started = time.perf_counter()
    count = body()
    elapsed = time.perf_counter() - started
    assert count == items, (count, items)
    return elapsed / items * 1e6


def loop(items: int) -> float:
    def body() -> int:
        count = 0
        for x in range(items):
            noop(x)
            count += 1
        return count
    return per_item(items, body)


def mapped(items: int, workers: int | None) -> float:
    return per_item(items, lambda: sum(1 for _ in orderedtask.map(noop, range(items),
                                                                  workers=workers)))


def pooled(items: int, workers: int | None, many: bool) -> float:
    def body() -> int:
        with Pool(workers, pool_noop) as pool:
            def produce() -> None:
                if many:
                    for start in range(0, items, 256):
                        pool.enqueue_many([Task(i) for i in range(start, min(items, start + 256))])
                else:
                    enqueue = pool.enqueue
                    for i in range(items):
                        enqueue(Task(i))
                pool.close()

            producer = threading.Thread(target=produce)
            producer.start()
            count = sum(1 for _ in pool.results())
            producer.join()
        return count
    return per_item(items, body)


def main() -> int:
    items = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
    gc.disable()
    print(f"python {sys.version.split()[0]}, core {orderedtask.IMPLEMENTATION}, "
          f"{items:,} items, µs per item (best of 3)")
    print(f"  plain loop                     {best(lambda: loop(items)):6.3f}")
    for workers in (1, 2, None):
        label = "adaptive" if workers is None else f"{workers} workers"
        print(f"  map, {label:25} {best(lambda: mapped(items, workers)):6.3f}")
    for workers in (1, 2, None):
        label = "adaptive" if workers is None else f"{workers} workers"
        print(f"  Pool enqueue, {label:16} {best(lambda: pooled(items, workers, False)):6.3f}")
        print(f"  Pool enqueue_many, {label:11} {best(lambda: pooled(items, workers, True)):6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
