"""``Dispatcher``: the only way the Kafka layer reaches the workers.

    submit(items[, keys]) --> queue (FIFO, or per key) --> worker thread: fn(item) for a batch
                                                            (here, or in an executor)
                                                        --> on_done([(item, output, error), ...])
                                                            on that same worker thread

This is a small thread-based implementation of the interface; an engine-backed one with the
same interface and docstrings replaces it later, and ``tests/test_kafka_dispatch.py`` is the
contract both must pass.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

__all__ = ["Dispatcher", "DispatcherClosed", "Result"]

Result = tuple[Any, Any, "BaseException | None"]

# A worker takes at most this many items at once: more amortises the lock and on_done, fewer
# keeps the other workers busy and reports sooner.
MAX_BATCH = 64


class DispatcherClosed(RuntimeError):
    """``submit`` after ``close()`` or ``terminate()``."""


def _call_batch(fn: Callable[[Any], Any], items: Sequence[Any], retries: int,
                retry_backoff: float) -> list[tuple[Any, BaseException | None]]:
    """Run ``fn`` on each item (retrying an ``Exception`` ``retries`` times); never raises
    for one item's failure. Module-level so that it pickles for worker processes."""
    out: list[tuple[Any, BaseException | None]] = []
    append = out.append
    for item in items:
        try:
            append((fn(item), None))
        except Exception as first:  # noqa: BLE001 - reported with the item
            error: BaseException = first
            for _ in range(retries):
                if retry_backoff:
                    time.sleep(retry_backoff)
                try:
                    append((fn(item), None))
                    break
                except Exception as exc:  # noqa: BLE001
                    error = exc
            else:
                append((None, error))
        except BaseException as exc:  # noqa: BLE001 - SystemExit & co: reported, not retried
            append((None, exc))
    return out


class Dispatcher:
    """Runs fn(item) on workers, unordered; reports every item exactly once to on_done.

    ``Dispatcher(fn, on_done, *, workers, backend="thread", keyed=False, retries=0,
    retry_backoff=0.0)``:

    - ``fn(item) -> output`` runs on ``workers`` workers at once. ``backend="thread"``: worker
      threads; ``"process"``: a process pool of ``workers`` processes (``fn`` and the items
      must pickle); an ``Executor``: each batch is one ``submit`` to it (not shut down here).
    - ``on_done(results)`` is called on a worker thread, never on the thread that submitted,
      with a list of ``(item, output, error)`` triples; every submitted item appears exactly
      once over all calls unless ``terminate()`` dropped it first. ``error`` is None, or the
      ``Exception`` ``fn`` raised on its last attempt (after ``retries`` retries with
      ``retry_backoff`` seconds between; a ``BaseException`` that is not an ``Exception`` is
      reported at once, not retried), or an error of the batch as a whole (a worker process
      that died, an item or output that did not pickle): then ``output`` is None.
    - ``keyed=True``: every ``submit`` gives a key per item; items of equal key run one at a
      time in submit order, and a key is released only after ``on_done`` returned for its
      item, so the ``on_done`` calls of one key are ordered too; different keys run in
      parallel.
    - If ``on_done`` raises, the exception is stored on ``error`` and the dispatcher
      terminates (as ``terminate()``); items already being run still get their ``on_done``.

    Thread safety: every method may be called from any thread except ``join`` from a worker
    (inside ``fn`` or ``on_done``); one lock guards the queues and counters.
    """

    def __init__(self, fn: Callable[[Any], Any], on_done: Callable[[list[Result]], Any], *,
                 workers: int, backend: str | Executor = "thread", keyed: bool = False,
                 retries: int = 0, retry_backoff: float = 0.0) -> None:
        if not callable(fn) or not callable(on_done):
            raise TypeError("fn and on_done must be callable")
        if type(workers) is not int or workers < 1:
            raise ValueError(f"workers must be an int >= 1, not {workers!r}")
        if type(retries) is not int or retries < 0:
            raise ValueError(f"retries must be an int >= 0, not {retries!r}")
        if not isinstance(retry_backoff, (int, float)) or retry_backoff < 0:
            raise ValueError(f"retry_backoff must be a number >= 0, not {retry_backoff!r}")
        self._executor: Executor | None = None
        self._owns_executor = False
        if isinstance(backend, Executor):
            self._executor = backend
        elif backend == "process":
            self._owns_executor = True
            self._executor = self._new_process_pool(workers)
        elif backend != "thread":
            raise ValueError(f"backend must be 'thread', 'process' or an Executor, not "
                             f"{backend!r}")
        self._fn = fn
        self._on_done = on_done
        self._workers = workers
        self._keyed = keyed
        self._retries = retries
        self._retry_backoff = float(retry_backoff)
        self.error: BaseException | None = None
        # _cond's lock guards every field below.
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[Any] = deque()  # unkeyed items; with keyed=True: ready keys
        self._pending: dict[Hashable, deque[Any]] = {}  # keyed: key -> its queued items
        self._held: set[Hashable] = set()  # keyed: keys whose items a worker is running
        self._queued = 0  # items submitted and not yet taken (both modes)
        self._closed = False
        self._threads = [threading.Thread(target=self._work, daemon=True,
                                          name=f"orderedtask-dispatch-{i}")
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    # -- the submitting side --------------------------------------------------------------
    def submit(self, items: Sequence[Any], keys: Sequence[Hashable] | None = None) -> None:
        """Never blocks (the caller bounds what is in flight). With keyed=True, items of equal
        key run one at a time in submit order; different keys in parallel.

        ``keys`` is required with keyed=True (one per item) and refused without. Raises
        ``DispatcherClosed`` after ``close()`` or ``terminate()``.
        """
        if self._keyed:
            if keys is None or len(keys) != len(items):
                raise ValueError("a keyed Dispatcher needs one key per item")
        elif keys is not None:
            raise ValueError("keys given to a Dispatcher made without keyed=True")
        if not items:
            return
        with self._cond:
            if self._closed:
                raise DispatcherClosed("submit after close() or terminate()")
            if not self._keyed:
                self._queue.extend(items)
            else:
                pending, held, ready = self._pending, self._held, self._queue
                for item, key in zip(items, keys):  # type: ignore[arg-type]
                    waiting = pending.get(key)
                    if waiting is None:
                        pending[key] = deque((item,))
                        if key not in held:
                            ready.append(key)
                    else:
                        waiting.append(item)
            self._queued += len(items)
            self._cond.notify(min(len(items), self._workers))

    def close(self) -> None:
        """No more submits; queued and running items still finish."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def terminate(self) -> int:
        """Drop queued items (on_done is not called for them); return how many.

        Items a worker already took still finish and are reported. No more submits.
        """
        with self._cond:
            self._closed = True
            dropped = self._queued
            self._queue.clear()
            self._pending.clear()
            self._queued = 0
            self._cond.notify_all()
        return dropped

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the workers exited (after close() or terminate(), once nothing is queued
        or running); True if they did within ``timeout`` seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)
            if thread.is_alive():
                return False
        if self._owns_executor and self._executor is not None:
            self._executor.shutdown(wait=True)
        return True

    # -- the worker side ------------------------------------------------------------------
    def _take(self) -> tuple[list[Any], list[Hashable]]:
        """Under the lock: the next batch, and (keyed) the keys it now holds."""
        count = max(1, min(MAX_BATCH, self._queued // self._workers))
        if not self._keyed:
            queue = self._queue
            if count >= len(queue):
                batch = list(queue)
                queue.clear()
            else:
                batch = [queue.popleft() for _ in range(count)]
            self._queued -= len(batch)
            return batch, []
        batch, keys = [], []
        ready, pending, held = self._queue, self._pending, self._held
        while ready and len(batch) < count:
            key = ready.popleft()
            waiting = pending[key]
            while waiting and len(batch) < count:
                batch.append(waiting.popleft())
            if not waiting:
                del pending[key]
            held.add(key)
            keys.append(key)
        self._queued -= len(batch)
        return batch, keys

    def _release(self, keys: list[Hashable]) -> None:
        """Under the lock: free ``keys``; one with queued items becomes ready again."""
        held, pending, ready = self._held, self._pending, self._queue
        woken = 0
        for key in keys:
            held.discard(key)
            if key in pending:
                ready.append(key)
                woken += 1
        if woken:
            self._cond.notify(woken)
        elif self._closed:
            self._cond.notify_all()  # the last release may let waiting workers exit

    def _work(self) -> None:
        """One worker: take a batch, run fn on it, report it, release its keys; repeat."""
        cond = self._cond
        while True:
            with cond:
                while not self._queue:
                    if self._closed and not self._pending and not self._queued:
                        return
                    cond.wait()
                batch, keys = self._take()
            try:
                results = self._run(batch)
                try:
                    self._on_done(results)
                except BaseException as exc:  # noqa: BLE001 - recorded for the owner
                    with cond:
                        if self.error is None:
                            self.error = exc
                    self.terminate()
            finally:
                if keys:
                    with cond:
                        self._release(keys)

    def _run(self, batch: list[Any]) -> list[Result]:
        executor = self._executor
        if executor is None:
            pairs = _call_batch(self._fn, batch, self._retries, self._retry_backoff)
        else:
            try:
                pairs = executor.submit(_call_batch, self._fn, batch, self._retries,
                                        self._retry_backoff).result()
            except BaseException as exc:  # noqa: BLE001 - the batch as a whole failed
                if isinstance(exc, BrokenProcessPool) and self._owns_executor:
                    self._replace_process_pool(executor)
                return [(item, None, exc) for item in batch]
        return [(item, output, error) for item, (output, error) in zip(batch, pairs)]

    @staticmethod
    def _new_process_pool(workers: int) -> ProcessPoolExecutor:
        methods = multiprocessing.get_all_start_methods()
        method = "forkserver" if "forkserver" in methods else "spawn"
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))

    def _replace_process_pool(self, broken: Executor) -> None:
        """A worker process died: the pool is unusable, start a new one (once per break)."""
        with self._cond:
            if self._executor is not broken:
                return
            self._executor = self._new_process_pool(self._workers)
        broken.shutdown(wait=False)
