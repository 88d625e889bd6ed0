"""Worker threads, batched hand-off, backpressure and lifecycle shared by Pool and map.

Everything that crosses threads lives on one ``Engine`` and is guarded by ``Engine.lock``.
Work moves in batches: a worker takes a fair share of the queue at once, finishes the whole
batch into the reorder core under one lock acquisition, and the consumer takes every released
task at once. A lone task is never held back: workers take whatever is queued.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from time import monotonic, perf_counter
from typing import Any

from ._backends import Backend
from ._compat import ReorderBuffer
from ._errors import PoolClosed, WorkerInitError
from ._task import Task

# A worker's batch aims at about this much work, so that hand-off stays a small fraction of it
# while slow tasks still spread over every worker.
TARGET_BATCH_SECONDS = 0.002
MAX_BATCH = 4096


def check_workers(workers: object) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers must be an int, not {type(workers).__name__}")
    if workers <= 0:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return workers


def check_window(window: object, default: int) -> int:
    if window is None:
        return default
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"window must be an int or None, not {type(window).__name__}")
    if window <= 0:
        raise ValueError(f"window must be >= 1, got {window}")
    return window


def check_callable(name: str, fn: object, optional: bool = False) -> None:
    if fn is None and optional:
        return
    if not callable(fn):
        raise TypeError(f"{name} must be callable, not {type(fn).__name__}")


class Engine:
    """Shared state of one pool; ``backend`` says how a worker runs a batch of tasks."""

    def __init__(
        self,
        workers: int,
        backend: Backend,
        window: int,
        name: str,
        weight_of: Callable[[Task], int] | None = None,
    ) -> None:
        self.workers = workers
        self.window = window
        self.backend = backend
        self.weight_of = weight_of
        # lock guards every attribute below; the three conditions share it.
        self.lock = threading.Lock()
        self.work_ready = threading.Condition(self.lock)
        self.space_free = threading.Condition(self.lock)
        self.results_ready = threading.Condition(self.lock)
        self.buffer = ReorderBuffer()
        self.queue: deque[Task] = deque()  # accepted, not yet taken by a worker
        self.ready: list[Task] = []  # released in order, not yet taken by the consumer
        self.outstanding = 0  # weight accepted and not yet handed to the consumer
        self.closed = False
        self.stopping = False  # terminate(): drop what is queued, workers leave
        self.init_error: BaseException | None = None
        self.idle = 0  # workers waiting on work_ready
        self.wakeups = 0  # notified workers that have not woken yet
        self.producers_waiting = 0
        self.consumer_waiting = False
        self.consumer: int | None = None  # thread id of the active results iterator
        self.live = workers
        self.max_batch = 1  # until a batch is measured, tasks may be slow: spread them out
        self.cost = 0.0  # seconds per unit of weight, moving average
        # Written by the consumer thread alone; read anywhere.
        self.watermark: int | None = None
        self.threads = [
            threading.Thread(target=self._worker_main, name=f"{name}-worker-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self.threads:
            thread.start()

    # -- producer side -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            if self.init_error is not None:
                raise PoolClosed("the pool is closed: worker_init failed") from self.init_error
            raise PoolClosed("the pool is closed and accepts no more tasks")

    def put(self, task: Task, weight: int = 1, timeout: float | None = None) -> None:
        """Accept ``task``; wait while the window is full. Raises before any change on error."""
        with self.lock:
            self._check_open()
            if self.outstanding and self.outstanding + weight > self.window:
                self._wait_for_space(weight, timeout)
            self.buffer.accept(task.index)
            self.queue.append(task)
            self.outstanding += weight
            if self.idle > self.wakeups:
                self.wakeups += 1
                self.work_ready.notify()

    def _wait_for_space(self, weight: int, timeout: float | None) -> None:
        if self.consumer == threading.get_ident():
            raise RuntimeError(
                f"enqueue would wait forever: the window of {self.window} tasks is full and "
                "this thread is the one iterating results(); enqueue from another thread, "
                "use orderedtask.map, or use a larger window")
        deadline = None if timeout is None else monotonic() + timeout
        self.producers_waiting += 1
        try:
            while self.outstanding and self.outstanding + weight > self.window:
                remaining = None if deadline is None else deadline - monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"enqueue timed out after {timeout} s: the window of {self.window} "
                        "tasks stayed full")
                self.space_free.wait(remaining)
                self._check_open()
        finally:
            self.producers_waiting -= 1

    # -- workers -----------------------------------------------------------------------

    def _worker_main(self) -> None:
        try:
            state = self.backend.start_worker()
        except BaseException as exc:  # noqa: BLE001 - reported on every task it affects
            self._fail_init(exc)
            self._worker_exit()
            return
        try:
            self._work(state)
        except BaseException as exc:  # noqa: BLE001 - a backend could not restart a worker
            self._fail_init(exc)
        finally:
            try:
                self.backend.stop_worker(state)
            finally:
                self._worker_exit()

    def _work(self, state: Any) -> None:
        lock, queue, run_batch, buffer = self.lock, self.queue, self.backend.run_batch, self.buffer
        while True:
            with lock:
                while not queue:
                    if self.closed:
                        return
                    self.idle += 1
                    self.work_ready.wait()
                    self.idle -= 1
                    if self.wakeups:
                        self.wakeups -= 1
                if self.stopping:
                    return
                share = -(-len(queue) // self.workers)
                count = share if share < self.max_batch else self.max_batch
                if count >= len(queue):
                    batch = list(queue)
                    queue.clear()
                else:
                    batch = [queue.popleft() for _ in range(count)]
                if queue and self.idle > self.wakeups:
                    self.wakeups += 1
                    self.work_ready.notify()
            started = perf_counter()
            broken = None
            try:
                run_batch(state, batch)
            except BaseException as exc:  # noqa: BLE001 - the backend set every task's error
                broken = exc
            elapsed = perf_counter() - started
            with lock:
                if self.stopping:
                    return
                finish = buffer.finish
                for task in batch:
                    finish(task.index, task)
                released = buffer.release()
                if released:
                    self.ready.extend(released)
                    if self.consumer_waiting:
                        self.results_ready.notify()
                self._learn_cost(batch, elapsed)
            if broken is not None:
                raise broken

    def _learn_cost(self, batch: list[Task], elapsed: float) -> None:
        weight = len(batch) if self.weight_of is None else sum(map(self.weight_of, batch))
        if weight:
            self.cost = 0.8 * self.cost + 0.2 * (elapsed / weight) if self.cost else elapsed / weight
            per_task = self.cost if self.weight_of is None else elapsed / len(batch)
            self.max_batch = max(1, min(MAX_BATCH, int(TARGET_BATCH_SECONDS / max(per_task, 1e-9))))

    def _fail_init(self, exc: BaseException) -> None:
        # Every task that no worker has taken fails with the init error, in its place.
        with self.lock:
            if self.init_error is None:
                self.init_error = exc
            self.closed = True
            error = WorkerInitError(f"worker_init failed: {exc!r}")
            error.__cause__ = exc
            while self.queue:
                task = self.queue.popleft()
                task.error = error
                self.buffer.finish(task.index, task)
            self.ready.extend(self.buffer.release())
            self._notify_all()

    def _worker_exit(self) -> None:
        with self.lock:
            self.live -= 1
            if not self.live:
                self.results_ready.notify_all()

    # -- consumer side -----------------------------------------------------------------

    def batches(self) -> Iterator[list[Task]]:
        """Yield released tasks in order, a batch at a time; one consumer at a time.

        Leaving early (close, exception, garbage collection) terminates the engine.
        """
        with self.lock:
            if self.consumer is not None:
                raise RuntimeError("results() is already being iterated by another consumer")
            self.consumer = threading.get_ident()
        handed = 0
        completed = False
        try:
            while True:
                with self.lock:
                    if handed:
                        self.outstanding -= handed
                        handed = 0
                        if self.producers_waiting:
                            self.space_free.notify_all()
                    while not self.ready:
                        if self.stopping or (self.closed and not len(self.buffer)):
                            completed = True
                            return
                        if not self.live and not self.queue and len(self.buffer):
                            raise RuntimeError("every worker exited with tasks unfinished")
                        self.consumer_waiting = True
                        try:
                            self.results_ready.wait()
                        finally:
                            self.consumer_waiting = False
                    batch = self.ready
                    self.ready = []
                handed = len(batch) if self.weight_of is None else sum(map(self.weight_of, batch))
                yield batch
        finally:
            with self.lock:
                self.consumer = None
            if not completed:
                self.terminate()

    # -- lifecycle ---------------------------------------------------------------------

    def _notify_all(self) -> None:
        self.wakeups = 0
        self.work_ready.notify_all()
        self.space_free.notify_all()
        self.results_ready.notify_all()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self._notify_all()

    def terminate(self) -> None:
        with self.lock:
            self.closed = True
            self.stopping = True
            self.queue.clear()
            self.ready = []
            self.buffer.clear()
            self._notify_all()
        self.backend.shutdown()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker threads to exit; True when all have."""
        if threading.current_thread() in self.threads:
            raise RuntimeError("a worker cannot join its own pool")
        deadline = None if timeout is None else monotonic() + timeout
        for thread in self.threads:
            thread.join(None if deadline is None else max(0.0, deadline - monotonic()))
        return not any(thread.is_alive() for thread in self.threads)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "accepted": self.buffer.accepted,
                "queued": len(self.queue),
                "pending": len(self.buffer),
                "ready": len(self.ready),
                "outstanding": self.outstanding,
                "watermark": self.watermark,
                "closed": self.closed,
            }
