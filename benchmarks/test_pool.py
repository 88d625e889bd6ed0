"""End-to-end throughput on 20,000 items: ``orderedtask.map`` and ``Pool`` next to baselines.

Two functions: a no-op (identity: pure hand-off overhead) and ``orjson.loads`` of ~200-byte
JSON messages (holds the GIL, so threads cannot beat the loop on a GIL build). Rows:

* ``orderedtask.map(fn, items, workers=2)``, on both reorder-core twins (ids ``c``/``py``,
  by swapping the classes ``orderedtask._core`` hands out);
* ``orderedtask.Pool(2, ...)`` with ``Task`` objects: a producer thread calls
  ``enqueue_many`` then ``close``, the benchmark thread iterates ``results()``; both twins;
* baselines: the plain loop (a list comprehension) and
  ``concurrent.futures.ThreadPoolExecutor(2).map``.

Every round creates and shuts down its own pool (thread start-up is part of the cost) and
asserts that the output is complete and in input order. ``benchmark.pedantic`` keeps the
number of rounds small (the whole file runs in well under a minute on 2 slow cores).

    pytest benchmarks/test_pool.py --benchmark-only
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import orderedtask
from benchmarks.compare import make_messages, run_orderedtask_pool

N = 20_000
WORKERS = 2
ROUNDS = 5


def identity(x: Any) -> Any:
    return x


def _workload(name: str) -> tuple[Callable[[Any], Any], list[Any], list[Any]]:
    if name == "noop":
        items: list[Any] = list(range(N))
        fn: Callable[[Any], Any] = identity
    else:
        orjson = pytest.importorskip("orjson")
        items = make_messages(N)
        fn = orjson.loads
    return fn, items, [fn(x) for x in items]


_CACHE: dict[str, tuple[Callable[[Any], Any], list[Any], list[Any]]] = {}


@pytest.fixture(params=["noop", "orjson"])
def workload(request: pytest.FixtureRequest, benchmark) -> tuple[Callable[[Any], Any], list[Any], list[Any]]:
    """(fn, items, expected output); the benchmark group is ``pool-<workload>``."""
    if request.param not in _CACHE:
        _CACHE[request.param] = _workload(request.param)
    benchmark.group = f"pool-{request.param}"
    benchmark.extra_info["items"] = N
    benchmark.extra_info["workers"] = WORKERS
    return _CACHE[request.param]


def run_map(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    return list(orderedtask.map(fn, items, workers=WORKERS))


def run_pool_tasks(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    return run_orderedtask_pool(fn, items, WORKERS)


def run_loop(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    return [fn(x) for x in items]


def run_thread_pool_executor(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    with ThreadPoolExecutor(WORKERS) as executor:
        return list(executor.map(fn, items))


def _bench(benchmark, runner, workload) -> None:
    fn, items, expected = workload
    out = benchmark.pedantic(runner, args=(fn, items), rounds=ROUNDS, iterations=1)
    assert len(out) == len(expected)
    assert out == expected


def test_orderedtask_map(benchmark, engine_twin: str, workload) -> None:
    _bench(benchmark, run_map, workload)


def test_orderedtask_pool_tasks(benchmark, engine_twin: str, workload) -> None:
    _bench(benchmark, run_pool_tasks, workload)


def test_baseline_loop(benchmark, workload) -> None:
    _bench(benchmark, run_loop, workload)


def test_baseline_thread_pool_executor_map(benchmark, workload) -> None:
    _bench(benchmark, run_thread_pool_executor, workload)
