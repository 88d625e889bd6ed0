"""Accepted tasks waiting for a worker, and the rule for which ones a worker may take.

Both queues are guarded by the engine's lock. ``take`` hands a worker a batch; ``done`` is
called when that batch is finished.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Any

from ._task import Task


class FifoQueue:
    """Tasks are taken in arrival order, any number at once."""

    __slots__ = ("tasks",)

    def __init__(self) -> None:
        self.tasks: deque[Task] = deque()

    def available(self) -> int:
        return len(self.tasks)

    def waiting(self) -> int:
        return len(self.tasks)

    def put(self, task: Task, key: Any) -> None:
        self.tasks.append(task)

    def take(self, count: int) -> list[Task]:
        tasks = self.tasks
        if count >= len(tasks):
            batch = list(tasks)
            tasks.clear()
            return batch
        return [tasks.popleft() for _ in range(count)]

    def done(self, batch: list[Task]) -> int:
        return 0

    def remove_all(self) -> list[Task]:
        batch = list(self.tasks)
        self.tasks.clear()
        return batch


class KeyedQueue:
    """Tasks of one key run one at a time, in arrival order; different keys run in parallel.

    A key belongs to the batch (one worker) holding one of its tasks; a task whose key belongs
    to another batch is parked until that batch is done, then goes back to the front.
    """

    __slots__ = ("tasks", "parked", "owner", "held", "count")

    def __init__(self) -> None:
        self.tasks: deque[tuple[Task, Hashable]] = deque()
        self.parked: dict[Hashable, deque[Task]] = {}
        self.owner: dict[Hashable, int] = {}  # key -> id of the batch that holds it
        self.held: dict[int, list[Hashable]] = {}  # id of a batch in flight -> its keys
        self.count = 0  # queued plus parked

    def available(self) -> int:
        return len(self.tasks)

    def waiting(self) -> int:
        return self.count

    def put(self, task: Task, key: Hashable) -> None:
        self.tasks.append((task, key))
        self.count += 1

    def take(self, count: int) -> list[Task]:
        batch: list[Task] = []
        keys: list[Hashable] = []
        token = id(batch)
        tasks, owner, parked = self.tasks, self.owner, self.parked
        while tasks and len(batch) < count:
            task, key = tasks.popleft()
            holder = owner.get(key)
            if holder is None:
                owner[key] = token
                keys.append(key)
            elif holder != token:
                parked.setdefault(key, deque()).append(task)
                continue
            batch.append(task)
        self.count -= len(batch)
        if batch:
            self.held[token] = keys
        return batch

    def done(self, batch: list[Task]) -> int:
        """Free the batch's keys; return how many parked tasks became available."""
        keys = self.held.pop(id(batch), ())
        freed = 0
        for key in keys:
            del self.owner[key]
            waiting = self.parked.pop(key, None)
            if waiting:
                # They arrived before any same-key task still queued: the front keeps the order.
                self.tasks.extendleft((task, key) for task in reversed(waiting))
                freed += len(waiting)
        return freed

    def remove_all(self) -> list[Task]:
        batch = [task for task, _ in self.tasks]
        for waiting in self.parked.values():
            batch.extend(waiting)
        self.tasks.clear()
        self.parked.clear()
        self.count = 0
        return batch

