"""``Dispatcher``: the only way the Kafka layer reaches the workers.

    submit(items[, keys]) --> engine (queue, or one at a time per key) --> a backend's worker:
                              fn(item) for a batch (a thread, a process, an Executor...)
                          --> on_done([(item, output, error), ...]) on that worker's thread,
                              unordered, before the batch's keys are freed

It is the library's own engine in delivery mode (``Engine(on_done=...)``) with the library's
backends, so the Kafka layer gets the same batching, accounting rule and failure handling as
``Pool`` (a dead worker process fails its batch with ``WorkerDied`` and is replaced; items or
outputs that do not pickle fail alone). ``tests/test_kafka_dispatch.py`` is its contract.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from time import monotonic
from typing import Any

from .. import _core
from .._backends import make_backend
from .._errors import PoolClosed
from .._options import check_callable, check_retries, check_workers

__all__ = ["Dispatcher", "DispatcherClosed", "Result"]

Result = tuple[Any, Any, "BaseException | None"]


class DispatcherClosed(RuntimeError):
    """``submit`` after ``close()`` or ``terminate()``."""


class CallItem:
    """The Pool function the engine runs: ``task.output = fn(task.input)``; picklable."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __call__(self, workerlocal: dict[str, Any], task: Any) -> None:
        task.output = self.fn(task.input)

    def __reduce__(self) -> tuple[Any, ...]:
        return (CallItem, (self.fn,))


def _key_of(task: Any) -> Any:
    # submit() parks an item's key in task.output until a worker runs it: the engine reads
    # keys when it accepts, and fn's output replaces the key only after that.
    return task.output


class _Delivery:
    """The engine's on_done: reaches the dispatcher weakly, so its workers never keep it."""

    __slots__ = ("_ref",)

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._ref = weakref.ref(dispatcher)

    def __call__(self, tasks: list[Any]) -> None:
        dispatcher = self._ref()
        if dispatcher is not None:
            dispatcher._on_done([(task.input, task.output, task.error) for task in tasks])


class Dispatcher:
    """Runs fn(item) on workers, unordered; reports every item exactly once to on_done.

    ``Dispatcher(fn, on_done, *, workers, backend="thread", keyed=False, retries=0,
    retry_backoff=0.0)``:

    - ``fn(item) -> output`` runs on ``workers`` workers at once, on the library's backends:
      ``"thread"``, ``"process"`` (``fn`` and the items must pickle), ``"interpreter"``, or an
      ``Executor`` (not shut down here).
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
    (inside ``fn`` or ``on_done``).
    """

    def __init__(self, fn: Callable[[Any], Any], on_done: Callable[[list[Result]], Any], *,
                 workers: int, backend: str | Executor = "thread", keyed: bool = False,
                 retries: int = 0, retry_backoff: float = 0.0) -> None:
        check_callable("fn", fn)
        check_callable("on_done", on_done)
        check_workers(workers)
        retries, retry_backoff = check_retries(retries, retry_backoff)
        self._keyed = keyed
        self._on_done = on_done
        runner = _core.Runner(_core.POOL, CallItem(fn), retries, retry_backoff)
        self._backend = make_backend(backend, runner, None, workers)
        # The caller bounds what is in flight (the consumer pauses partitions): no window.
        # An item is a chunk of records already: on threads a worker takes one at a time, so
        # that one stuck on a record holds back no other chunk (and no other partition or
        # key behind it). Other backends batch chunks to pay for their transport.
        batch_seconds = 0.0 if backend == "thread" else self._backend.batch_seconds
        self._engine = _core.Engine(sys.maxsize, _core.POOL, key=_key_of if keyed else None,
                                    batch_seconds=batch_seconds,
                                    on_terminate=self._backend.stopper(),
                                    on_done=_Delivery(self))
        self._next = 0
        self._finalizer = weakref.finalize(self, self._engine.terminate_soon)
        self._threads = self._backend.start(self._engine, workers, "orderedtask-dispatch")

    @property
    def error(self) -> BaseException | None:
        """What ``on_done`` raised, if it did (the dispatcher then terminated)."""
        error: BaseException | None = self._engine.on_done_error
        return error

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
        task_type, start = _core.Task, self._next
        tasks = [task_type(start + i, item) for i, item in enumerate(items)]
        if keys is not None:
            for task, key in zip(tasks, keys):
                task.output = key  # read by _key_of when the engine accepts the task
        self._next = start + len(tasks)
        try:
            self._engine.put_tasks(tasks)
        except PoolClosed as exc:
            raise DispatcherClosed("submit after close() or terminate()") from exc

    def close(self) -> None:
        """No more submits; queued and running items still finish."""
        self._engine.close()

    def terminate(self) -> int:
        """Drop queued items (on_done is not called for them); return how many.

        Items a worker already took still finish and are reported. No more submits.
        """
        dropped: int = self._engine.terminate()
        return dropped

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the workers exited (after close() or terminate(), once nothing is queued
        or running); True if they did within ``timeout`` seconds (None: no limit)."""
        deadline = None if timeout is None else monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - monotonic()))
            if thread.is_alive():
                return False
        return True
