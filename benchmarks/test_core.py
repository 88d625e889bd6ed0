"""The reorder core alone: accept / finish / release of N indices, both twins and heapq.

Each round builds a fresh ``ReorderBuffer``, accepts indices ``0..N-1``, then finishes them
one by one (ascending, or in a shuffled order) and calls ``release()`` after every
``finish`` (the engine calls it once per batch, so this is the core's worst case). The
released items must be exactly ``0..N-1`` in order.

The baseline is what the core does at minimum with ``heapq``: push the same N ints (in the
same order as the finishes) and pop them all.

    pytest benchmarks/test_core.py --benchmark-only
"""

from __future__ import annotations

import random
from heapq import heappop, heappush

import pytest

N = 10_000
EXPECTED = list(range(N))
ORDERS = {
    "in_order": list(range(N)),
    "shuffled": random.Random(20240601).sample(range(N), N),
}


def reorder_cycle(buffer_class: type, order: list[int]) -> list[int]:
    buffer = buffer_class()
    accept, finish, release = buffer.accept, buffer.finish, buffer.release
    for index in range(N):
        accept(index)
    out: list[int] = []
    extend = out.extend
    for index in order:
        finish(index, index)
        extend(release())
    return out


def heapq_cycle(order: list[int]) -> list[int]:
    heap: list[int] = []
    for index in order:
        heappush(heap, index)
    return [heappop(heap) for _ in range(N)]


@pytest.mark.parametrize("order", list(ORDERS))
def test_reorder_cycle(benchmark, reorder_buffer: type, order: str) -> None:
    benchmark.group = f"core-{order}"
    benchmark.extra_info["items"] = N
    out = benchmark(reorder_cycle, reorder_buffer, ORDERS[order])
    assert out == EXPECTED


@pytest.mark.parametrize("order", list(ORDERS))
def test_heapq_baseline(benchmark, order: str) -> None:
    benchmark.group = f"core-{order}"
    benchmark.extra_info["items"] = N
    out = benchmark(heapq_cycle, ORDERS[order])
    assert out == EXPECTED
