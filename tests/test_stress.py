"""Stress: a million tasks with random latency and random index gaps through 32 workers."""

from __future__ import annotations

import random
import threading
import time

import orderedtask
from orderedtask import Pool, Task

TASKS = 1_000_000
WORKERS = 32


def test_a_million_tasks_exactly_once_in_order(twin, no_thread_leak) -> None:
    rng = random.Random(20261127)
    # Gaps like a compacted Kafka partition: mostly +1, sometimes a jump.
    steps = rng.choices([1, 2, 3, 17, 1000], weights=[90, 5, 3, 1.5, 0.5], k=TASKS)
    slow = set(rng.sample(range(TASKS), 300))  # a few sleep, so heads stall at random

    def fn(workerlocal: dict, task: Task) -> None:
        if task.input in slow:
            time.sleep(0.0005)
        task.output = task.index

    produced_last = [0]

    def produce(pool: Pool) -> None:
        index = 0
        for position, step in enumerate(steps):
            index += step
            pool.enqueue(Task(index, position))
        produced_last[0] = index
        pool.close()

    count = 0
    previous = -1
    mismatches = 0
    with Pool(WORKERS, fn, window=8192) as pool:
        producer = threading.Thread(target=produce, args=(pool,))
        producer.start()
        expected = 0
        for position, task in enumerate(pool.results()):
            expected += steps[position]
            if task.index != expected or task.output != expected or task.input != position:
                mismatches += 1
            if task.index <= previous:
                mismatches += 1
            previous = task.index
            count += 1
        producer.join()
    assert mismatches == 0
    assert count == TASKS
    assert pool.watermark == produced_last[0]


def test_map_over_a_million_items_with_random_cost() -> None:
    rng = random.Random(3)
    data = [rng.random() for _ in range(TASKS)]

    def fn(x: float) -> float:
        if x < 0.0002:
            time.sleep(0.0002)
        return x * 2

    total = 0
    for i, value in enumerate(orderedtask.map(fn, data, workers=WORKERS, window=4096)):
        assert value == data[i] * 2
        total += 1
    assert total == TASKS
