"""Worker threads, batched hand-off, backpressure and lifecycle shared by Pool and map.

Everything that crosses threads lives on one ``Engine`` and is guarded by ``Engine.lock``.
Work moves in batches: a worker takes a fair share of the queue at once, finishes the whole
batch into the reorder core under one lock acquisition, and the consumer takes every released
task at once. A lone task is never held back: workers take whatever is queued.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Generator, Hashable, Iterator
from time import monotonic, perf_counter
from typing import Any

from ._backends import Backend
from ._compat import ReorderBuffer, gil_enabled
from ._dispatch import FifoQueue, KeyedQueue
from ._errors import PoolClosed, WorkerInitError
from ._task import Task

MAX_BATCH = 4096


def check_workers(workers: object) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers must be an int, not {type(workers).__name__}")
    if workers <= 0:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return workers


# With the GIL off, every cyclic-GC pass stops all threads and walks the whole heap. A loop frees
# each result before the next allocation and never triggers one; results waiting in a window
# that holds more containers than the first GC threshold trigger passes all the time: at the
# default threshold (2,000) a 512 window ran 1.2-1.7x faster than 2,048 on 2 cores, and with
# the threshold at 20,000 the 2,048 window ran 1.5x faster than 512 (benchmarks/window.py,
# the demo). So the default follows the threshold, assuming a few containers per result, but
# keeps a couple of chunks in reach of every worker.
FREE_THREADED_WINDOW_PER_WORKER = 256


def default_window(base: int, workers: int) -> int:
    """``base`` on the standard build or with the GC off; else sized from the GC threshold."""
    if gil_enabled() or not gc.isenabled():
        return base
    threshold = gc.get_threshold()[0]
    if threshold <= 0:  # collections off
        return base
    return min(base, max(FREE_THREADED_WINDOW_PER_WORKER * workers, threshold // 4))


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
        key: Callable[[Task], Hashable] | None = None,
    ) -> None:
        self.workers = workers
        self.window = window
        self.backend = backend
        self.weight_of = weight_of
        self.key = key
        # lock guards every attribute below; the three conditions share it. An RLock because
        # it knows its owner: see _wait.
        self.lock = threading.RLock()
        self.work_ready = threading.Condition(self.lock)
        self.space_free = threading.Condition(self.lock)
        self.results_ready = threading.Condition(self.lock)
        self.buffer = ReorderBuffer()
        self.queue = FifoQueue() if key is None else KeyedQueue()  # accepted, not yet taken
        self.ready: list[Task] = []  # released in order, not yet taken by the consumer
        self.outstanding = 0  # weight accepted and not yet handed to the consumer
        self.running = 0  # tasks taken by workers and not yet finished
        self.closed = False
        self.stopping = False  # terminate(): drop what is queued, workers leave
        self.init_error: BaseException | None = None
        self.idle = 0  # workers waiting on work_ready
        self.wakeups = 0  # notified workers that have not woken yet
        self.producers_waiting = 0
        self.consumer_waiting = False
        self.waker: Callable[[], Any] | None = None  # an async consumer's wake-up, one-shot
        self.consumer: int | None = None  # thread id of the active results iterator
        self.live = workers
        self.max_batch = 1  # until a batch is measured, tasks may be slow: spread them out
        self.cost = 0.0  # seconds per unit of weight, moving average
        self.started = monotonic()
        self.progress_time = self.started  # last release, or arrival into an empty pool
        # Written by the consumer thread alone; read anywhere.
        self.watermark: int | None = None
        self.yielded = 0
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
        key = None if self.key is None else self.key(task)
        with self.lock:
            if self.closed:
                self._check_open()
            outstanding = self.outstanding
            if outstanding and outstanding + weight > self.window:
                self._wait_for_space(weight, timeout)
                outstanding = self.outstanding
            self.buffer.accept(task.index)
            if not outstanding:
                self.progress_time = monotonic()
            self.queue.put(task, key)
            self.outstanding = outstanding + weight
            if self.idle > self.wakeups:
                self._wake_worker()

    def put_many(self, tasks: list[Task], timeout: float | None = None) -> int:
        """Accept tasks in order, a window's room at a time under one lock acquisition.

        Returns how many were accepted; on an error the tasks before the bad one stay accepted.
        """
        keys = None if self.key is None else [self.key(task) for task in tasks]
        done = 0
        with self.lock:
            try:
                while done < len(tasks):
                    self._check_open()
                    if self.outstanding and self.outstanding >= self.window:
                        self._wait_for_space(1, timeout)
                    room = max(1, self.window - self.outstanding)
                    if not self.outstanding:
                        self.progress_time = monotonic()
                    accept, put = self.buffer.accept, self.queue.put
                    for task in tasks[done:done + room]:
                        accept(task.index)
                        put(task, None if keys is None else keys[done])
                        self.outstanding += 1
                        done += 1
                    self._wake_worker()
            finally:
                if done:
                    self._wake_worker()
        return done

    def _wait(self, condition: threading.Condition, timeout: float | None = None) -> None:
        """``condition.wait`` for the consumer and producers, whose thread may get Ctrl-C.

        A KeyboardInterrupt can land while ``Condition.wait`` takes the lock back, leaving it
        unheld, and the caller's ``with self.lock`` would then release a lock it does not own.
        Take it back first, so that the exception leaves the lock as ``with`` expects.
        """
        try:
            condition.wait(timeout)
        except BaseException:
            if not self.lock._is_owned():  # type: ignore[attr-defined]
                self.lock.acquire()
            raise

    def _wake_worker(self) -> None:
        # Wake a sleeping worker only for a batch's worth of queued work per worker already on
        # its way (or when nobody would otherwise see the queue): workers that are running take
        # the rest when they come back. Waking one per task makes them race for single tasks
        # and turns a fast producer into a notify loop. Cost: behind a worker stuck on a slow
        # task, less than a batch (~batch_seconds of work) waits for it; those tasks come after
        # the slow one in order, so their output was held back by it anyway.
        if self.idle > self.wakeups and (
                (not self.wakeups and not self.running)
                or self.queue.available() >= (self.wakeups + 1) * self.max_batch):
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
                self._wait(self.space_free, remaining)
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

    def _take(self) -> list[Task] | None:
        """Wait for work and take a batch (lock held); None when the worker should exit."""
        queue = self.queue
        while True:
            while not queue.available():
                # Parked (keyed) tasks become available when the batch holding their key ends.
                if self.stopping or (self.closed and not queue.waiting()):
                    return None
                self.idle += 1
                self.work_ready.wait()
                self.idle -= 1
                if self.wakeups:
                    self.wakeups -= 1
            if self.stopping:
                return None
            # Take up to a measured batch at once (one wake-up, one lock round per batch);
            # max_batch is sized to a few ms of work, which bounds the imbalance at the tail.
            batch = queue.take(self.max_batch)
            if batch:
                self.running += len(batch)
                if queue.available():
                    self._wake_worker()
                return batch

    def _work(self, state: Any) -> None:
        lock, run_batch, buffer = self.lock, self.backend.run_batch, self.buffer
        while True:
            with lock:
                batch = self._take()
                if batch is None:
                    return
            indices = [task.index for task in batch]  # fn may not move a task elsewhere
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
                for task, index in zip(batch, indices):
                    task.index = index
                    finish(index, task)
                self.running -= len(batch)
                if self.queue.done(batch):
                    self._wake_worker()
                released = buffer.release()
                if released:
                    self.ready.extend(released)
                    self.progress_time = monotonic()
                    self._wake_consumer()
                self._learn_cost(batch, elapsed)
            if broken is not None:
                raise broken

    def _wake_consumer(self) -> None:
        if self.consumer_waiting:
            self.results_ready.notify()
        if self.waker is not None:
            waker, self.waker = self.waker, None
            waker()

    def _learn_cost(self, batch: list[Task], elapsed: float) -> None:
        weight = len(batch) if self.weight_of is None else sum(map(self.weight_of, batch))
        if weight:
            self.cost = 0.8 * self.cost + 0.2 * (elapsed / weight) if self.cost else elapsed / weight
            per_task = self.cost if self.weight_of is None else elapsed / len(batch)
            # A batch aims at the backend's batch_seconds of work: hand-off stays a small part
            # of it while slow tasks still spread over every worker.
            target = self.backend.batch_seconds / max(per_task, 1e-9)
            self.max_batch = max(1, min(MAX_BATCH, int(target)))

    def _fail_init(self, exc: BaseException) -> None:
        # Every task that no worker has taken fails with the init error, in its place.
        with self.lock:
            if self.init_error is None:
                self.init_error = exc
            self.closed = True
            error = WorkerInitError(f"worker_init failed: {exc!r}")
            error.__cause__ = exc
            for task in self.queue.remove_all():
                task.error = error
                self.buffer.finish(task.index, task)
            self.ready.extend(self.buffer.release())
            self._notify_all()

    def _worker_exit(self) -> None:
        with self.lock:
            self.live -= 1
            if not self.live:
                self._notify_all()

    # -- consumer side -----------------------------------------------------------------

    def claim(self) -> None:
        """Become the one consumer (raises RuntimeError if another is active)."""
        with self.lock:
            if self.consumer is not None:
                raise RuntimeError("results() is already being iterated by another consumer")
            self.consumer = threading.get_ident()

    def unclaim(self, completed: bool) -> None:
        with self.lock:
            self.consumer = None
            self.waker = None
        if not completed:
            self.terminate()

    def next_batch(self, handed: int, waker: Callable[[], Any] | None = None) -> list[Task] | None:
        """Return the next released tasks, in order; None once everything has been yielded.

        ``handed`` is the weight the consumer took last time (it frees the window). Blocks
        while nothing is ready; with ``waker``, returns [] instead and calls ``waker`` (from
        another thread) once something may be ready.
        """
        with self.lock:
            if handed:
                self.outstanding -= handed
                if self.producers_waiting:
                    self.space_free.notify_all()
            while not self.ready:
                if self.stopping or (self.closed and not len(self.buffer)):
                    return None
                if not self.live and len(self.buffer):
                    raise RuntimeError("every worker exited with tasks unfinished")
                if waker is not None:
                    self.waker = waker
                    return []
                self.consumer_waiting = True
                try:
                    self._wait(self.results_ready)
                finally:
                    self.consumer_waiting = False
            batch = self.ready
            self.ready = []
            return batch

    def weigh(self, batch: list[Task]) -> int:
        return len(batch) if self.weight_of is None else sum(map(self.weight_of, batch))

    def batches(self) -> Generator[list[Task], None, None]:
        """Yield released tasks in order, a batch at a time; one consumer at a time.

        Leaving early (close, exception, garbage collection) terminates the engine.
        """
        self.claim()
        handed = 0
        completed = False
        try:
            while True:
                batch = self.next_batch(handed)
                if batch is None:
                    completed = True
                    return
                handed = self.weigh(batch)
                yield batch
        finally:
            self.unclaim(completed)

    # -- lifecycle ---------------------------------------------------------------------

    def _notify_all(self) -> None:
        self.wakeups = 0
        self.work_ready.notify_all()
        self.space_free.notify_all()
        self.results_ready.notify_all()
        if self.waker is not None:
            waker, self.waker = self.waker, None
            waker()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self._notify_all()

    def terminate(self) -> None:
        with self.lock:
            self.closed = True
            self.stopping = True
            self.queue.remove_all()
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
            now = monotonic()
            pending = len(self.buffer)
            head_blocked = pending and not self.ready
            elapsed = now - self.started
            return {
                "accepted": self.buffer.accepted,
                "completed": self.buffer.finished,
                "yielded": self.yielded,
                "queued": self.queue.waiting(),
                "in_flight": self.running,
                "reorder_depth": self.buffer.ready,
                "pending": pending,
                "ready": len(self.ready),
                "outstanding": self.outstanding,
                "window": self.window,
                "head": self.buffer.head,
                "head_wait_seconds": now - self.progress_time if head_blocked else 0.0,
                "throughput_per_second": self.yielded / elapsed if elapsed > 0 else 0.0,
                "watermark": self.watermark,
                "closed": self.closed,
            }

