"""The engine: window, work queue, reorder, release and waits; the specification of ``_engine.pxi``.

One ``Engine`` per ``Pool`` or ``map`` call. Data flow::

      producers                        workers                          consumer
      ---------                        -------                          --------
   put_task(s) (Pool) / put, feed (map)
        | (wait while the window is full)
        v
     accept --> queue (FIFO, or one-at-a-time per key) --take--> run --finish/fail--+
        |                                                                           |
        +--> pending, sorted by index: the head and the finished run behind it <----+
                    | release: while the head is finished
                    v
                 released --> Cursor (expands items, owns watermark and yielded count)
                                  | credits the window when it takes the next batch

A slot holds one task (Pool engines) or, in map engines, a chunk: consecutive items that
joined the newest slot while no worker had taken it. A fast source thus fills chunks (one
lock round, one release, one hand-off per chunk) and a slow one hands items on one by one.
Map engines order by position; ``indexed`` sources give each item a label (its ``index``).

*Accounting rule*: every accepted item leaves through the cursor exactly once, with the output
``fn`` gave it or an error saying what happened to it: ``fn``'s own error (kept by the
``Runner``), the failure of its whole batch (``fail``: a dead worker, a refusing executor, a
pickling failure), a failed worker start (``fail_init``), or termination, which the cursor
reports as ``PoolTerminated`` at the first item it can no longer yield. No other path
finishes an item.

Locking: ``_lock`` guards every field; the three conditions share it. Code under the lock
runs no user code, so finalizers cannot re-enter mid-update; a ``BaseException`` (Ctrl-C)
that still lands inside an update terminates the engine (``_break``), so the engine is never
left half-changed: every call either takes effect, or not at all, or terminates the pool.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any

from .._errors import PoolClosed, PoolTerminated, WorkerInitError
from .. import _core as _selected  # the process's Task: _selected.Task, read at call time

if TYPE_CHECKING:
    from ._task_py import Task
from ._reorder_py import as_index
from ._runner_py import MAP, POOL, Runner

__all__ = ["Batch", "Cursor", "Engine", "MAX_BATCH", "NOT_READY", "PULL_BATCH", "as_timeout"]


def _index_of_pair(pair: object, position: int) -> int:
    if type(pair) is not tuple or len(pair) != 2:
        raise TypeError(f"indexed=True: the iterable must yield (index, input) pairs, got "
                        f"{type(pair).__name__} at position {position}")
    return as_index(pair[0])


def as_timeout(timeout: object) -> float | None:
    """``timeout=`` of a blocking call: None (no limit) or seconds >= 0."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if not timeout >= 0:  # also rejects NaN
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout}")
    return float(timeout)


#: The most items a worker takes at once, whatever the measured cost.
MAX_BATCH = 4096
#: How many items the feeder pulls at once from a source whose pulls never block.
PULL_BATCH = 256
#: The most items the consumer runs at once at level 0 (whole slots): no other thread to hand
#: them to, so nothing to amortize but a lock round, and outputs made in one go stay alive
#: until yielded, where a cyclic-GC pass would find them (a loop's outputs die at once).
INLINE_BATCH = 32
# Iterators whose next() never waits for anything: the feeder may pull many in a row.
_SOURCES: tuple[Any, ...] = ([], (), range(0), range(2**64), "", b"", bytearray(), {}, {}.values(),
                             {}.items(), set(), frozenset())
NEVER_BLOCKING = frozenset(type(iter(items)) for items in _SOURCES) | {
    type(reversed([])), type(reversed(range(0)))}
#: ``Cursor.poll`` returns this when nothing is released yet (the waker will be called).
NOT_READY: Any = type("NotReady", (), {"__slots__": (), "__repr__": lambda self: "NOT_READY"})()
_STOPPED = object()  # _next_released: the engine was terminated
_NOTHING = object()  # Cursor._bypass: not possible now
_PULL = object()  # _next_released: level 0, nothing in flight: the consumer pulls itself
# Who may pull the source of a map engine.
_FEEDER, _CONSUMER = "feeder", "consumer"
#: A level that parks no worker (fixed pools).
UNLIMITED = sys.maxsize

# Cursor states.
_NEW, _ACTIVE, _DONE, _REFUSED = range(4)


class _Slot:
    """One task (Pool engines), or a chunk of consecutive items (map engines)."""

    __slots__ = ("index", "weight", "item", "items", "outputs", "errors", "labels", "keyhash",
                 "done")

    def __init__(self, index: int, item: Any = None, keyhash: int = 0) -> None:
        self.index = index  # the task's index; a chunk's first position
        self.weight = 1  # items in it
        self.item = item  # the task (Pool engines)
        self.items: list[Any] = []  # map engines: the inputs
        self.outputs: list[Any] = []  # map engines: one per item once run
        self.errors: list[BaseException | None] = []  # map engines: empty, or one per item
        self.labels: list[int] = []  # map engines with indexed=True: the source's index
        self.keyhash = keyhash
        self.done = False

    def size_outcomes(self) -> None:
        if len(self.outputs) != self.weight:
            self.outputs = [None] * self.weight

    def set_outcome(self, position: int, output: Any, error: BaseException | None) -> None:
        self.outputs[position] = output
        if error is None and not self.errors:
            return
        if not self.errors:
            self.errors = [None] * self.weight
        self.errors[position] = error


def _weight(slots: Iterable[_Slot]) -> int:
    # A plain loop: a generator expression would add frames a Ctrl-C could land in.
    total = 0
    for slot in slots:
        total += slot.weight
    return total


def _fail_slots(slots: list[_Slot], kind: int, error: BaseException) -> None:
    """Every item of ``slots`` gets ``error``: the accounting rule's batch failure."""
    for slot in slots:
        if kind == POOL:
            try:
                slot.item.output = None
                slot.item.error = error
            except BaseException:  # noqa: BLE001 - a task that refuses: the cursor still yields it
                pass
            continue
        slot.size_outcomes()
        for position in range(slot.weight):
            slot.set_outcome(position, None, error)


class Batch:
    """Items a worker took at once; the worker hands it back to ``finish`` or ``fail``."""

    __slots__ = ("_engine", "_slots", "_keys", "_open")

    def __init__(self, engine: Engine, slots: list[_Slot], keys: list[int]) -> None:
        self._engine = engine
        self._slots = slots
        self._keys = keys
        self._open = True

    def __del__(self) -> None:
        # A batch must never vanish unfinished: its items would never come out.
        if getattr(self, "_open", False):
            self._open = False
            _fail_slots(self._slots, self._engine._kind,
                        RuntimeError("a worker dropped its batch before finishing it"))
            self._engine._complete(self._slots, self._keys, 0.0)

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("this batch was already finished")

    @property
    def indices(self) -> list[int]:
        """The items' indices, in the order the worker took them.

        A task's index; an item's position, or the index its source gave (``indexed``).
        """
        if self._engine._kind == POOL:
            return [slot.index for slot in self._slots]
        indices: list[int] = []
        for slot in self._slots:
            indices.extend(slot.labels or range(slot.index, slot.index + slot.weight))
        return indices

    @property
    def items(self) -> list[Any]:
        """The items: the tasks of a POOL engine, the inputs of a MAP engine."""
        if self._engine._kind == POOL:
            return [slot.item for slot in self._slots]
        return [item for slot in self._slots for item in slot.items]

    @property
    def inputs(self) -> list[Any]:
        """What crosses to a worker process: ``task.input`` (POOL) or the item itself (MAP)."""
        if self._engine._kind == POOL:
            return [slot.item.input for slot in self._slots]
        return self.items

    def __len__(self) -> int:
        """How many items the batch holds."""
        return _weight(self._slots)


class Engine:
    """Shared state of one pool: window, queue, reorder, release, counters and waits.

    ``kind`` is ``POOL`` (items are ``Task`` objects, whose ``fn`` writes ``task.output``) or
    ``MAP`` (items are inputs; the outcome is kept beside them). With ``key``, items of equal
    ``key(item)`` run one at a time, in arrival order (``key`` runs in the producer's thread,
    before anything is accepted; what it raises propagates). ``batch_seconds`` is the work a batch
    should hold: the engine measures the cost per item and sizes batches to it.
    ``on_terminate()`` is called once, after ``terminate`` (it stops what the workers wait
    on, such as child processes; it must not reach the user's function).

    With ``on_done`` (POOL engines), results are not ordered and no cursor takes them: each
    finished batch is handed to ``on_done(tasks)`` on the worker thread that finished it,
    before its keys are freed, and then leaves the engine (and the window). Termination
    drops what is queued; a batch already taken is still handed over. If ``on_done`` raises,
    the error is kept (``on_done_error``) and the engine terminates.
    """

    def __init__(self, window: int, kind: int = POOL, *,
                 key: Callable[[Any], Any] | None = None, batch_seconds: float = 0.002,
                 on_terminate: Callable[[], Any] | None = None,
                 on_done: Callable[[list[Any]], Any] | None = None) -> None:
        self._window = window
        self._on_done = on_done
        self._on_done_error: BaseException | None = None
        self._kind = kind
        self._key = key
        self._keyed = key is not None
        self._batch_seconds = batch_seconds
        self._on_terminate = on_terminate
        self._lock = threading.RLock()  # an RLock knows its owner: see _wait and terminate_soon
        self._work = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)
        self._results = threading.Condition(self._lock)
        self._queue: deque[_Slot] = deque()
        self._queued = 0  # items in _queue (not parked)
        self._parked: dict[int, deque[_Slot]] = {}  # keyed: key -> slots behind a running one
        self._parked_count = 0
        self._key_owner: dict[int, int] = {}  # keyed: key -> id of the batch that holds it
        self._next_batch = 1
        self._next_position = 0  # map engines: the next item's position
        self._pending: deque[_Slot] = deque()  # accepted, unreleased, ascending index
        self._pending_index: dict[int, _Slot] = {}  # Pool engines: duplicates are refused
        self._released: deque[_Slot] = deque()
        self._last_released: int | None = None
        self._accepted = 0
        self._finished = 0
        self._held = 0  # finished items waiting behind an unfinished head
        self._outstanding = 0  # accepted and not yet credited back by the cursor
        self._running = 0
        self._dropped = 0
        self._closed = False
        self._stopping = False
        self._end_error: BaseException | None = None
        self._init_error: BaseException | None = None
        self._terminated_head: int | None = None
        self._idle = 0
        self._idle_seconds = 0.0  # workers' waits for work, ended
        self._idle_since = 0.0  # ... and the start times of those going on
        self._wakeups = 0
        self._waker: Callable[[], Any] | None = None
        self._consumer: int | None = None
        self._feeder: int | None = None
        self._owned: set[int] = set()
        self._live = 0
        self._ranks = 0  # worker_enter hands out 0, 1, 2...
        self._level = UNLIMITED  # workers ranked below it take work; 0: the consumer runs it
        self._feed = threading.Condition(self._lock)  # the feeder waits here at level 0
        self._parked_cv = threading.Condition(self._lock)  # workers ranked above the level
        self._source: Iterator[Any] | None = None
        self._indexed = False
        self._buffered: Callable[[], int] | None = None
        self._source_owner = _FEEDER
        self._consumer_pulling = False
        self._max_batch = 1  # until a batch is measured, items may be slow: spread them out
        self._cost = 0.0
        self._started = monotonic()
        self._progress_time = self._started
        # Written by the consumer's cursor alone, read anywhere.
        self._watermark: int | None = None
        self._yielded = 0

    # -- properties ----------------------------------------------------------------------

    @property
    def window(self) -> int:
        """Items accepted and not yet consumed, at most."""
        return self._window

    @property
    def kind(self) -> int:
        """``POOL`` or ``MAP``."""
        return self._kind

    @property
    def closed(self) -> bool:
        """True once the engine accepts nothing more (closed, failed or terminated)."""
        return self._closed

    @property
    def stopping(self) -> bool:
        """True once the engine was terminated."""
        return self._stopping

    @property
    def watermark(self) -> int | None:
        """Highest index such that every accepted item at or below it was yielded, or None."""
        return self._watermark

    @property
    def yielded(self) -> int:
        """How many items the cursors yielded."""
        return self._yielded

    @property
    def level(self) -> int:
        """How many workers may take work (``set_level``); 0: the consumer runs it itself."""
        return self._level

    @property
    def completed(self) -> int:
        """How many items were finished so far (the rate a concurrency controller reads)."""
        return self._finished

    @property
    def idle_seconds(self) -> float:
        """How long workers waited for work so far, summed over them (a controller reads it:
        the workers wait for work, not work for them)."""
        with self._lock:
            return self._idle_seconds + self._idle * monotonic() - self._idle_since

    @property
    def on_done_error(self) -> BaseException | None:
        """What ``on_done`` raised, if it did (the engine then terminated)."""
        return self._on_done_error

    @property
    def cost(self) -> float:
        """Measured seconds of work per item (moving average); 0.0 before the first batch."""
        return self._cost

    @property
    def max_batch(self) -> int:
        """The most items a worker takes at once now (sized from ``cost``)."""
        return self._max_batch

    # -- producers -----------------------------------------------------------------------

    def put(self, item: Any, timeout: float | None = None) -> None:
        """Accept ``item`` at the next position of a MAP engine; wait while the window is full.

        Raises, with the engine unchanged: ``TypeError``/``ValueError`` for a bad timeout,
        ``PoolClosed`` once closed, ``TimeoutError`` after ``timeout`` seconds of a full window,
        ``RuntimeError`` when the caller is a thread that the wait would deadlock (the
        consumer, or one of the engine's workers).
        """
        self._append_run([item], None, as_timeout(timeout))

    def put_task(self, task: Task, timeout: float | None = None) -> None:
        """``put(task.index, task, timeout)`` for a POOL engine; ``TypeError`` for a non-Task."""
        if not isinstance(task, _selected.Task):
            raise TypeError(f"enqueue() takes an orderedtask.Task, not {type(task).__name__}")
        value = as_index(task.index)
        seconds = as_timeout(timeout)
        keyhash = hash(self._key(task)) if self._key is not None else 0
        self._put_run([value], [task], [keyhash], seconds)

    def put_tasks(self, tasks: Sequence[Task], timeout: float | None = None) -> int:
        """Accept ``tasks`` in order, a window's room at a time; return how many were accepted.

        Every task's type and index are checked first (and ``key`` applied to each): a bad
        one raises before anything is accepted. A task refused by the engine's state (a
        duplicate index, one not above the last released, the pool closed) raises after the
        tasks before it were accepted.
        """
        seconds = as_timeout(timeout)
        tasks = list(tasks)
        values = []
        for position, task in enumerate(tasks):
            if not isinstance(task, _selected.Task):
                raise TypeError(f"enqueue_many() takes orderedtask.Task items, not "
                                f"{type(task).__name__} (at position {position})")
            values.append(as_index(task.index))
        key = self._key
        hashes = [hash(key(task)) for task in tasks] if key is not None else None
        return self._put_run(values, tasks, hashes, seconds)

    def _put_run(self, values: list[int], tasks: Sequence[Any], hashes: list[int] | None,
                 timeout: float | None) -> int:
        """Accept ``tasks`` in order, a window's room at a time; return how many (all, unless
        it raises: then those before the refused one stay accepted)."""
        done, count = 0, len(values)
        updating = False
        try:
            with self._lock:
                while done < count:
                    self._check_accepts(values[done])  # the first refused raises
                    if self._outstanding >= self._window:
                        self._wait_for_room(timeout)
                        continue
                    updating = True
                    while (done < count and self._outstanding < self._window
                           and self._accepts(values[done])):
                        self._accept_task(values[done], tasks[done],
                                          0 if hashes is None else hashes[done])
                        done += 1
                    self._wake_workers()
                    updating = False
        except BaseException:
            if updating:
                self._break()
            raise
        return done

    def set_source(self, source: Iterator[Any], indexed: bool = False,
                   buffered: Callable[[], int] | None = None) -> None:
        """A MAP engine's items: ``feed`` pulls them on the feeder thread (and, at level 0,
        the consumer pulls them itself). ``indexed``: the source yields ``(index, item)``
        pairs; ``buffered()``: how many items it can give now without blocking."""
        with self._lock:
            self._source = source
            self._indexed = indexed
            self._buffered = buffered
            self._source_owner = _CONSUMER if self._level == 0 else _FEEDER

    def feed(self) -> None:
        """Pull the source into the engine until it ends, then close: the feeder thread's job.

        Each item is accepted as soon as it is pulled, so none waits for the next pull. Items
        are pulled one at a time, or up to ``PULL_BATCH`` at once when no pull can block (a
        list, tuple, range, str, bytes, dict or set iterator) or ``buffered()`` says how many
        are ready. Whatever ends the feed early (the source raising, a malformed pair, an
        index the engine refuses) closes the engine with that error, which the consumer
        raises after every item before it; termination ends the feed quietly. At level 0 the
        feeder parks and leaves the source to the consumer.
        """
        with self._lock:
            self._feeder = threading.get_ident()
            source, indexed, buffered = self._source, self._indexed, self._buffered
        if source is None:
            raise RuntimeError("feed() needs set_source() first")
        never_blocks = type(source) in NEVER_BLOCKING
        ended = False
        failure: BaseException | None = None
        while not ended and failure is None:
            if not self._may_pull():
                return
            want = PULL_BATCH if never_blocks else 1
            if buffered is not None and not never_blocks:
                try:
                    want = max(1, min(PULL_BATCH, buffered()))
                except BaseException as exc:  # noqa: BLE001 - raised to the consumer in place
                    failure = exc
                    break
            items: list[Any] = []
            labels: list[int] = []
            position = self._next_position
            while len(items) < want:
                try:
                    item = next(source)
                except StopIteration:
                    ended = True
                    break
                except BaseException as exc:  # noqa: BLE001 - raised to the consumer in place
                    failure = exc
                    break
                if indexed:
                    try:
                        labels.append(_index_of_pair(item, position + len(items)))
                    except BaseException as exc:  # noqa: BLE001 - raised in place
                        failure = exc
                        break
                    item = item[1]
                items.append(item)
            if not items:
                break
            try:
                self._append_run(items, labels if indexed else None, None)
            except PoolClosed:
                if self._closed:
                    return  # terminated, or a worker failed to start: nobody wants more
                raise
            except BaseException as exc:  # noqa: BLE001 - raised to the consumer in place
                failure = exc
        self.close(failure)

    def _claim_pull(self) -> int | None:
        """Level 0, a map engine with nothing in flight: the consumer may pull one item.

        Returns the item's position, or None when it may not.
        """
        with self._lock:
            if (self._level == 0 and self._source_owner == _CONSUMER
                    and self._source is not None and not self._consumer_pulling
                    and not self._pending and not self._released and not self._closed):
                self._consumer_pulling = True
                return self._next_position
            return None

    def _end_pull(self, position: int) -> None:
        """The consumer stops pulling; ``position`` is the next item's."""
        with self._lock:
            self._next_position = position
            self._consumer_pulling = False
            if self._level > 0:
                self._feed.notify_all()

    def _may_pull(self) -> bool:
        """The feeder, before each pull: park while the level is 0; False once closed."""
        with self._lock:
            while (self._level == 0 or self._consumer_pulling) and not self._closed:
                if self._source_owner != _CONSUMER:
                    self._source_owner = _CONSUMER
                    self._results.notify()  # the consumer may be waiting for this
                self._feed.wait()
            self._source_owner = _FEEDER
            return not self._closed

    def _append_run(self, items: list[Any], labels: list[int] | None,
                    timeout: float | None) -> int:
        """MAP engines: accept ``items`` in order, a window's room at a time. Each joins the
        newest chunk while no worker has taken it and it has room, so a fast source fills
        chunks and a slow one hands items on one by one."""
        done, count = 0, len(items)
        updating = False
        try:
            with self._lock:
                while done < count:
                    if self._closed:
                        self._raise_closed()
                    if self._outstanding >= self._window:
                        self._wait_for_room(timeout)
                        continue
                    updating = True
                    # A chunk never outgrows a batch, nor a share of the window per worker.
                    cap = min(self._max_batch, max(1, self._window // (2 * max(1, self._live))))
                    while done < count and self._outstanding < self._window:
                        # The newest slot takes more only while it waits in the queue.
                        slot = self._queue[-1] if self._queue else None
                        if slot is None or slot is not self._pending[-1] or slot.weight >= cap:
                            slot = _Slot(self._next_position)
                            slot.weight = 0
                            self._pending.append(slot)
                            self._queue.append(slot)
                        slot.items.append(items[done])
                        if labels is not None:
                            slot.labels.append(labels[done])
                        slot.weight += 1
                        self._next_position += 1
                        self._queued += 1
                        if not self._outstanding:
                            self._progress_time = monotonic()
                        self._outstanding += 1
                        self._accepted += 1
                        done += 1
                    self._wake_workers()
                    updating = False
        except BaseException:
            if updating:
                self._break()
            raise
        return done

    def _check_accepts(self, value: int) -> None:
        if self._closed:
            self._raise_closed()
        if self._last_released is not None and value <= self._last_released:
            raise ValueError(f"task index {value} is not greater than the last released index "
                             f"{self._last_released}")
        if value in self._pending_index:
            raise ValueError(f"task index {value} is already pending (duplicate index)")

    def _accepts(self, value: int) -> bool:
        return not (self._closed or value in self._pending_index or (
            self._last_released is not None and value <= self._last_released))

    def _raise_closed(self) -> None:
        if self._init_error is not None:
            raise PoolClosed("the pool is closed: worker_init failed") from self._init_error
        if self._stopping:
            raise PoolClosed("the pool was terminated and accepts no more tasks")
        raise PoolClosed("the pool is closed and accepts no more tasks")

    def _accept_task(self, value: int, task: Any, keyhash: int) -> None:
        slot = _Slot(value, task, keyhash)
        pending = self._pending
        if self._on_done is not None:
            pass  # delivered unordered: nothing to keep in index order
        elif not pending or value > pending[-1].index:
            pending.append(slot)
        else:  # out of order: insert from the right, where it usually belongs
            position = len(pending) - 1
            while position >= 0 and pending[position].index > value:
                position -= 1
            pending.insert(position + 1, slot)
        if self._on_done is None:
            self._pending_index[value] = slot
        self._queue.append(slot)
        self._queued += 1
        if not self._outstanding:
            self._progress_time = monotonic()
        self._outstanding += 1
        self._accepted += 1

    def _wait_for_room(self, timeout: float | None) -> None:
        me = threading.get_ident()
        if me == self._consumer or me in self._owned:
            who = ("the one iterating results()" if me == self._consumer
                   else "one of the pool's own workers")
            raise RuntimeError(
                f"enqueue would wait forever: the window of {self._window} tasks is full and "
                f"this thread is {who}; enqueue from another thread, use orderedtask.map, or "
                "use a larger window")
        deadline = None if timeout is None else monotonic() + timeout
        while self._outstanding >= self._window:
            if self._closed:
                self._raise_closed()
            remaining = None if deadline is None else deadline - monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"enqueue timed out after {timeout} s: the window of "
                                   f"{self._window} tasks stayed full")
            self._wait(self._room, remaining)

    def _wait(self, condition: threading.Condition, timeout: float | None = None) -> None:
        """``condition.wait`` for threads that may get Ctrl-C (the consumer, producers).

        A KeyboardInterrupt can land while ``Condition.wait`` takes the lock back, leaving it
        unheld; the caller's ``with self._lock`` would then release a lock it does not own.
        """
        try:
            condition.wait(timeout)
        except BaseException:
            if not self._lock._is_owned():  # type: ignore[attr-defined]
                self._lock.acquire()
            raise

    def _wake_workers(self) -> None:
        # One idle worker per batch's worth of queued work not already promised to a woken
        # one: a lone item wakes a worker even while others run slow items, and a fast
        # producer does not turn into a notify per item. At level 0 the worker is the consumer.
        if not self._level:
            self._results.notify()
            return
        if self._idle > self._wakeups and self._queued > self._wakeups * self._max_batch:
            self._wakeups += 1
            self._work.notify()

    # -- workers -------------------------------------------------------------------------

    def set_level(self, level: int) -> None:
        """Let the workers ranked below ``level`` take work; park the others.

        At 0 no worker takes work: the consumer runs queued batches itself, and (map engines)
        pulls and runs the source's items itself once the feeder parks. Batches already taken
        run to their end.
        """
        if level < 0:
            raise ValueError(f"level must be >= 0, got {level}")
        with self._lock:
            self._level = level
            self._wakeups = 0
            self._work.notify_all()
            self._parked_cv.notify_all()
            if level > 0:
                self._source_owner = _FEEDER
                self._feed.notify_all()
            elif self._feeder is None:  # no feeder to park: the source is the consumer's now
                self._source_owner = _CONSUMER
            if level == 0 and self._queued:
                self._results.notify()

    def worker_enter(self) -> int:
        """A worker thread starts: count it, know it (it must never wait for room), rank it.

        Returns its rank: workers ranked at or above the level park.
        """
        with self._lock:
            self._owned.add(threading.get_ident())
            self._live += 1
            rank = self._ranks
            self._ranks += 1
            return rank

    def worker_exit(self) -> None:
        """A worker thread ends; the last one fails what no worker is left to run."""
        with self._lock:
            self._owned.discard(threading.get_ident())
            self._live -= 1
            if self._live or self._stopping or not (self._queued or self._parked_count):
                self._notify_all()
                return
            batch = self._take_all_queued()
        self.fail(batch, RuntimeError("every worker of the pool exited before running it"))

    def fail_init(self, error: BaseException) -> None:
        """A worker could not start: close, and fail every item no worker has taken."""
        failure = WorkerInitError(f"worker_init failed: {error!r}")
        failure.__cause__ = error
        with self._lock:
            if self._init_error is None:
                self._init_error = error
            self._closed = True
            batch = self._take_all_queued()
            self._notify_all()
            waker = self._take_waker()
        self.fail(batch, failure)
        if waker is not None:
            waker()

    def _take_all_queued(self) -> Batch:
        slots = list(self._queue)
        self._queue.clear()
        self._queued = 0
        for waiting in self._parked.values():
            slots.extend(waiting)
        self._parked.clear()
        self._parked_count = 0
        self._running += _weight(slots)
        return Batch(self, slots, [])

    def take(self, worker: int = 0) -> Batch | None:
        """Wait for work and take a batch; None when the worker should exit.

        ``worker`` is the rank ``worker_enter`` gave: at or above the level, it waits.
        """
        with self._lock:
            while True:
                if self._stopping:
                    return None
                if self._queued and worker < self._level:
                    batch = self._take_batch()
                    if batch is not None:
                        return batch
                    continue  # every queued item was parked behind a running key
                if self._closed and not self._parked_count and not self._queued:
                    return None
                if worker >= self._level:  # parked: only set_level (or the end) wakes it
                    if self._queued:
                        # It may have been woken (and counted) for this work: pass it on to
                        # a worker that may take it, or to the consumer at level 0.
                        self._wake_workers()
                    self._parked_cv.wait()
                    continue
                self._idle += 1
                waited = monotonic()
                self._idle_since += waited
                try:
                    self._work.wait()
                finally:
                    self._idle -= 1
                    self._idle_since -= waited
                    self._idle_seconds += monotonic() - waited
                    if self._wakeups:
                        self._wakeups -= 1

    def _take_batch(self) -> Batch | None:
        # Lock held, something queued: a batch sized to the cost, a fair share left to the idle.
        limit = self._max_batch
        if self._idle:
            limit = min(limit, (self._queued + self._idle) // (self._idle + 1))
        batch = self._take_slots(limit)
        if batch is not None and self._queued:
            self._wake_workers()
        return batch

    def _take_slots(self, limit: int) -> Batch | None:
        # Whole slots, up to ``limit`` items (at least one slot: a chunk is never split).
        queue, slots, taken = self._queue, [], 0
        if not self._keyed:
            while queue and (not taken or taken + queue[0].weight <= limit):
                slot = queue.popleft()
                slots.append(slot)
                taken += slot.weight
            self._queued -= taken
            self._running += taken
            return Batch(self, slots, [])
        batch_id = self._next_batch
        self._next_batch += 1
        owner, keys = self._key_owner, []
        while queue and taken < limit:
            slot = queue.popleft()
            self._queued -= 1
            holder = owner.get(slot.keyhash)
            if holder is None:
                owner[slot.keyhash] = batch_id
                keys.append(slot.keyhash)
            elif holder != batch_id:
                self._parked.setdefault(slot.keyhash, deque()).append(slot)
                self._parked_count += 1
                continue
            slots.append(slot)
            taken += 1
        if not slots:
            return None
        self._running += taken
        return Batch(self, slots, keys)

    def finish(self, batch: Batch, outcomes: Sequence[tuple[Any, BaseException | None]],
               elapsed: float = 0.0) -> None:
        """Store one ``(output, error)`` per item of ``batch`` (in its order) and finish it."""
        batch._check_open()
        count = len(batch)
        if len(outcomes) != count:
            self.fail(batch, RuntimeError(
                f"the backend returned {len(outcomes)} outcomes for a batch of {count}"),
                elapsed)
            return
        batch._open = False
        at = 0
        try:
            for slot in batch._slots:
                if self._kind == POOL:
                    task = slot.item
                    task.output, task.error = outcomes[at]
                    at += 1
                    continue
                slot.size_outcomes()
                for position in range(slot.weight):
                    output, error = outcomes[at]
                    slot.set_outcome(position, output, error)
                    at += 1
        except BaseException as exc:  # noqa: BLE001 - a malformed outcome fails the batch
            batch._open = True
            self.fail(batch, exc)
            return
        self._complete(batch._slots, batch._keys, elapsed)

    def fail(self, batch: Batch, error: BaseException, elapsed: float = 0.0) -> None:
        """Finish every item of ``batch`` with ``error``: the batch failed as a whole."""
        batch._check_open()
        batch._open = False
        _fail_slots(batch._slots, self._kind, error)
        self._complete(batch._slots, batch._keys, 0.0)

    def _complete(self, slots: list[_Slot], keys: list[int], elapsed: float) -> None:
        """The one way a taken batch comes back."""
        if self._on_done is not None:
            self._deliver(slots, keys, elapsed)
            return
        count = _weight(slots)
        waker = None
        updating = False
        try:
            with self._lock:
                updating = True
                self._running -= count
                if self._stopping:
                    return  # terminated meanwhile: these were dropped and counted then
                for slot in slots:
                    slot.done = True
                self._finished += count
                self._held += count
                if keys:
                    self._free_keys(keys)
                released = self._release_run()
                if elapsed > 0 and count:
                    self._learn(count, elapsed)
                if self._queued:
                    self._wake_workers()
                if released:
                    waker = self._take_waker()
                if self._closed and self._idle:
                    self._work.notify_all()  # workers waiting for parked keys may now exit
                if self._closed and not self._queued and self._level < UNLIMITED:
                    self._parked_cv.notify_all()  # parked workers: nothing left, exit
                updating = False
        except BaseException:
            if updating:
                self._break()
            raise
        if waker is not None:
            waker()

    def _deliver(self, slots: list[_Slot], keys: list[int], elapsed: float) -> None:
        """Delivery mode: hand the batch to on_done, then let it leave and free its keys."""
        assert self._on_done is not None
        failure: BaseException | None = None
        try:
            self._on_done([slot.item for slot in slots])
        except BaseException as exc:  # noqa: BLE001 - kept, and the engine terminates
            failure = exc
        count = len(slots)
        updating = False
        try:
            with self._lock:
                updating = True
                self._running -= count
                self._finished += count
                self._outstanding -= count
                if keys and not self._stopping:
                    self._free_keys(keys)
                if elapsed > 0 and count:
                    self._learn(count, elapsed)
                if self._queued:
                    self._wake_workers()
                self._room.notify_all()
                if self._closed and self._idle:
                    self._work.notify_all()
                if failure is not None and self._on_done_error is None:
                    self._on_done_error = failure
                updating = False
        except BaseException:
            if updating:
                self._break()
            raise
        if failure is not None:
            self.terminate()

    def _free_keys(self, keys: list[int]) -> None:
        for keyhash in keys:
            del self._key_owner[keyhash]
            waiting = self._parked.pop(keyhash, None)
            if waiting:
                # They were taken off the front before any same-key item still queued.
                self._queue.extendleft(reversed(waiting))
                self._parked_count -= len(waiting)
                self._queued += len(waiting)

    def _release_run(self) -> int:
        pending, released, count = self._pending, self._released, 0
        slot = None
        while pending and pending[0].done:
            slot = pending.popleft()
            if self._kind == POOL:
                del self._pending_index[slot.index]
            released.append(slot)
            count += slot.weight
        if slot is not None:
            self._held -= count
            self._last_released = slot.index + slot.weight - 1
            self._progress_time = monotonic()
            self._results.notify()  # no waiter count to keep: a Ctrl-C could skew it
        return count

    def _learn(self, count: int, elapsed: float) -> None:
        per_item = elapsed / count
        self._cost = per_item if not self._cost else 0.8 * self._cost + 0.2 * per_item
        # A batch aims at batch_seconds of work: the hand-off stays a small part of it while
        # slow items still spread over every worker.
        self._max_batch = max(1, min(MAX_BATCH, int(self._batch_seconds / max(self._cost, 1e-9))))

    def run_worker(self, context_ref: Callable[[], Any], worker: int) -> None:
        """A thread worker's life: take a batch, run it, finish it, until the engine ends.

        ``context_ref()`` (a weak reference) gives the object holding ``runner`` and
        ``workerlocals``; it is looked up per batch, so an idle worker holds nothing that
        the pool's own function could make into a cycle with the pool.
        """
        while True:
            batch = self.take(worker)
            if batch is None:
                return
            try:
                elapsed = self._run_batch(batch, context_ref, worker)
            except BaseException as exc:  # noqa: BLE001 - whatever broke, the batch fails
                self.fail(batch, exc)
                continue
            batch._open = False
            if elapsed is None:
                self._complete(batch._slots, batch._keys, 0.0)  # terminated: only counted back
                return
            self._complete(batch._slots, batch._keys, elapsed)

    def _run_batch(self, batch: Batch, context_ref: Callable[[], Any], worker: int
                   ) -> float | None:
        context = context_ref()
        if context is None:  # the pool was garbage-collected: nobody will consume
            self.terminate()
            return None
        runner: Runner = context.runner
        workerlocal = context.workerlocals[worker]
        del context
        return self._run_slots(batch, runner, workerlocal)

    def _run_slots(self, batch: Batch, runner: Runner, workerlocal: Any) -> float:
        started = perf_counter()
        if self._kind == POOL:
            for slot in batch._slots:
                runner.run_task(workerlocal, slot.item)
        else:
            for slot in batch._slots:
                slot.size_outcomes()
                labels = slot.labels
                for position, item in enumerate(slot.items):
                    output, error = runner.run_value(
                        labels[position] if labels else slot.index + position, item)
                    slot.set_outcome(position, output, error)
        return perf_counter() - started

    # -- the consumer (through Cursor) ---------------------------------------------------

    def _claim(self, cursor: Cursor) -> None:
        # The cursor's state changes here, under the lock with the claim itself: no Ctrl-C
        # can fall between them.
        with self._lock:
            me = threading.get_ident()
            if self._consumer is not None:
                cursor._state = _REFUSED
                raise RuntimeError("results() is already being iterated by another consumer")
            if me in self._owned or me == self._feeder:
                cursor._state = _REFUSED
                raise RuntimeError("a thread of the pool itself (a worker or the feeder) cannot "
                                   "iterate its results: it would wait for itself")
            self._consumer = me
            cursor._state = _ACTIVE

    def _release(self, cursor: Cursor, terminate: bool, unyielded: int) -> None:
        """The cursor leaves, ``unyielded`` items still in hand: unclaim and, if asked,
        terminate, in one locked step."""
        dropped: list[_Slot] = []
        waker = None
        first = False
        with self._lock:
            if cursor._state != _ACTIVE:
                return
            self._dropped += unyielded
            if self._released and cursor._buffer:
                # Interrupted between moving slots to the cursor and clearing them here:
                # they are the cursor's (counted in ``unyielded``), not the engine's.
                held = {id(slot) for slot in cursor._buffer}
                self._released = deque(s for s in self._released if id(s) not in held)
            if terminate:
                first = not self._stopping
                dropped = self._terminate_locked()
            self._consumer = None
            self._waker = None
            cursor._state = _DONE
        self._after_terminate(first, dropped, waker)

    def _next_released(self, credit: int, buffer: deque[_Slot],
                       waker: Callable[[], Any] | None = None,
                       inline: bool = False) -> bool | Batch | None | object:
        """Move the released slots, in order, into the cursor's ``buffer``: True; None at the
        end; _STOPPED once terminated. (Moved under the lock, so that a Ctrl-C never finds a
        slot in neither place; one in both is counted once, see ``_release``.)

        ``credit`` items were consumed since the last call: they leave the window. With
        ``waker``, returns False instead of waiting and calls ``waker`` once something changes.
        With ``inline`` at level 0, returns a queued ``Batch`` for the consumer to run
        instead of waiting for workers that are parked.
        """
        with self._lock:
            if credit:
                self._outstanding -= credit
                self._room.notify_all()
            while not self._released:
                if self._stopping:
                    return _STOPPED
                if self._closed and not self._pending:
                    return None
                if inline and self._level == 0:
                    if self._queued:
                        batch = self._take_slots(INLINE_BATCH)
                        if batch is not None:
                            return batch
                        continue  # every queued item was parked behind a running key
                    if (self._source_owner == _CONSUMER and self._source is not None
                            and not self._pending):
                        return _PULL  # the same test as _claim_pull's
                if waker is not None:
                    self._waker = waker
                    return False
                self._wait(self._results)
            buffer.extend(self._released)
            self._released.clear()
            return True

    def _take_waker(self) -> Callable[[], Any] | None:
        waker, self._waker = self._waker, None
        return waker

    # -- lifecycle -----------------------------------------------------------------------

    def _notify_all(self) -> None:
        self._wakeups = 0
        self._work.notify_all()
        self._room.notify_all()
        self._results.notify_all()
        self._parked_cv.notify_all()

    def close(self, error: BaseException | None = None) -> None:
        """Accept nothing more; accepted items still run and are yielded. Idempotent.

        ``error`` (the feeder's: the source failed) is raised by the consumer after every
        item accepted before it.
        """
        with self._lock:
            if error is not None and not self._closed:
                self._end_error = error
            self._closed = True
            self._notify_all()
            self._feed.notify_all()
            waker = self._take_waker()
        if waker is not None:
            waker()

    def terminate(self) -> int:
        """Stop now: drop every item not yet yielded; workers exit after their batch.

        Returns how many items this call dropped.
        """
        with self._lock:
            first = not self._stopping
            before = self._dropped
            dropped = self._terminate_locked()
            count = self._dropped - before
            waker = self._take_waker()
        self._after_terminate(first, dropped, waker)
        return count

    def _after_terminate(self, first: bool, dropped: list[_Slot],
                         waker: Callable[[], Any] | None) -> None:
        del dropped  # outside the lock: an item's finalizer may call back in
        if waker is not None:
            waker()
        if first and self._on_terminate is not None:
            self._on_terminate()

    def terminate_soon(self) -> None:
        """``terminate``, from a finalizer: on another thread if this one holds the lock."""
        if self._lock._is_owned():  # type: ignore[attr-defined]
            threading.Thread(target=self.terminate, name="orderedtask-terminate",
                             daemon=True).start()
        else:
            self.terminate()

    def _terminate_locked(self) -> list[_Slot]:
        # The flags first and the waiters woken next, with no call of this module in between:
        # whatever happens after that, every thread sees the engine stopped.
        if self._stopping:
            return []
        self._closed = True
        self._stopping = True
        self._wakeups = 0
        self._work.notify_all()
        self._room.notify_all()
        self._results.notify_all()
        self._feed.notify_all()
        self._parked_cv.notify_all()
        self._consumer = None  # a new cursor may claim it, to hear that it was terminated
        if self._released or self._pending:  # the first item dropped: released come first
            head = self._released[0] if self._released else self._pending[0]
            self._terminated_head = head.labels[0] if head.labels else head.index
        dropped = list(self._pending)  # queued, parked, running and finished slots
        dropped.extend(self._released)
        if self._on_done is not None:  # delivery mode keeps no pending run: what waits
            dropped = list(self._queue)
            for waiting in self._parked.values():
                dropped.extend(waiting)
        self._dropped += _weight(dropped)
        self._queue.clear()
        self._queued = 0
        self._parked.clear()
        self._parked_count = 0
        self._key_owner.clear()
        self._pending.clear()
        self._pending_index.clear()
        self._released.clear()
        self._held = 0
        return dropped

    def _break(self) -> None:
        """An exception landed mid-update (Ctrl-C): terminate rather than run half-changed.

        Called after the update's ``with self._lock`` ended. (No ``try`` sits directly inside
        a ``with`` here: an exception raised at a ``try`` line by a trace function escapes an
        enclosing ``with`` without releasing its lock, in CPython 3.11 to 3.13.)
        """
        self.terminate()

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters (README, "Observability")."""
        with self._lock:
            now = monotonic()
            pending = self._queued + self._parked_count + self._running + self._held
            released = _weight(self._released)
            elapsed = now - self._started
            head = None
            wait = 0.0
            if self._pending:
                front = self._pending[0]
                head = front.labels[0] if front.labels else front.index
                if not self._released:
                    wait = now - self._progress_time
            return {
                "accepted": self._accepted,
                "completed": self._finished,
                "yielded": self._yielded,
                "queued": self._queued + self._parked_count,
                "in_flight": self._running,
                "reorder_depth": self._held,
                "pending": pending,
                "released": released,
                "outstanding": self._outstanding,
                "window": self._window,
                "head": head if pending else None,
                "head_wait_seconds": wait,
                "throughput_per_second": self._yielded / elapsed if elapsed > 0 else 0.0,
                "watermark": self._watermark,
                "closed": self._closed,
                "dropped": self._dropped,
                "workers": self._live,
                "level": self._level if self._level < UNLIMITED else self._live,
                "batch": self._max_batch,
                "seconds_per_item": self._cost,
            }


class Cursor:
    """The consumer's side: yields released items in order, one at a time.

    ``mode`` says what the consumer sees, the one expansion rule for every API, sync or
    async: ``POOL`` yields the tasks (``task.error`` holds an ``Exception``; any other
    ``BaseException`` is raised); ``MAP`` yields each output and raises an item's error at
    its position; ``MAP_TASKS`` yields a new ``Task`` per item with ``output`` or ``error``
    set. The cursor owns the watermark and the yielded count. It claims the engine on the
    first ``next`` (one consumer at a time: a refused cursor stays refused) and calls
    ``on_start`` then. Leaving before the end (``close``, an error, garbage collection)
    terminates the engine; termination from elsewhere raises ``PoolTerminated``.
    """

    POOL = 0
    MAP = 1
    MAP_TASKS = 2

    __slots__ = ("_engine", "_mode", "_buffer", "_pos", "_credit", "_state", "_on_start",
                 "_keepalive", "_helper", "_untuned", "_tune_every", "_pull_next",
                 "_inline", "__weakref__")

    def __init__(self, engine: Engine, mode: int, on_start: Callable[[], Any] | None = None,
                 keepalive: Any = None, helper: Any = None) -> None:
        if mode not in (Cursor.POOL, Cursor.MAP, Cursor.MAP_TASKS):
            raise ValueError(f"mode must be Cursor.POOL, MAP or MAP_TASKS, not {mode!r}")
        self._engine = engine
        self._mode = mode
        self._buffer: deque[_Slot] = deque()  # released slots; the front is current
        self._pos = 0  # the front slot's next item
        self._credit = 0  # items yielded since the last refill
        self._state = _NEW
        self._on_start = on_start
        self._keepalive = keepalive  # what the workers reach by weak reference
        # With a helper (adaptive concurrency), the consumer runs work itself at level 0:
        # helper.inline_context() gives (runner, workerlocal), helper.tune(completed) is
        # shown the progress every refill (and, for items run here, as often as it asks).
        self._helper = helper
        self._untuned = 0
        self._tune_every = 1  # items between readings; helper.tune says
        self._pull_next: int | None = None  # level 0: the claim on the source, its position
        self._inline: tuple[Any, Any] | None = None  # helper.inline_context(), taken once

    @property
    def engine(self) -> Engine:
        """The engine this cursor consumes."""
        return self._engine

    def __iter__(self) -> Cursor:
        return self

    def __next__(self) -> Any:
        # __next__ and poll are the cursor's only frames between the caller and the work:
        # whatever escapes below them ends the iteration, like a generator's, and a Ctrl-C
        # that lands after an item was marked yielded but before it was handed over un-marks
        # it, so the watermark never covers an item the consumer did not get.
        buffer = self._buffer  # the mark is inline: a call here would be a point to interrupt
        marked = (self._engine._watermark, self._engine._yielded,
                  buffer[0] if buffer else None, self._pos)
        try:
            if self._state != _ACTIVE:
                self._begin()
            return self._step(None)
        except BaseException:
            self._abandon(marked)
            raise

    def poll(self, waker: Callable[[], Any]) -> Any:
        """``next`` that never waits: the next item, or ``NOT_READY`` and ``waker()`` later.

        Raises ``StopIteration`` at the end, like ``next``. A ``NOT_READY`` poll takes
        nothing, so abandoning the wait (a cancelled ``await``) loses nothing.
        """
        buffer = self._buffer  # the mark is inline: a call here would be a point to interrupt
        marked = (self._engine._watermark, self._engine._yielded,
                  buffer[0] if buffer else None, self._pos)
        try:
            if self._state != _ACTIVE:
                self._begin()
            return self._step(waker)
        except BaseException:
            self._abandon(marked)
            raise

    def _abandon(self, marked: tuple[int | None, int, _Slot | None, int]) -> None:
        # Undo a half-done step wholly: the item is then the cursor's to drop, not lost
        # between "taken from the buffer" and "counted as yielded".
        if self._state == _ACTIVE:
            engine = self._engine
            engine._watermark, engine._yielded, front, pos = marked
            # A front popped since the mark was wholly yielded; its successor had started at 0.
            self._pos = pos if self._buffer and self._buffer[0] is front else 0
            self._leave(terminate=True)

    def _step(self, waker: Callable[[], Any] | None) -> Any:
        engine = self._engine
        if engine._stopping:
            self._report_termination()
        buffer, helper = self._buffer, self._helper
        while True:
            if buffer:
                slot = buffer[0]
                if self._pos < slot.weight:
                    break
                buffer.popleft()
                self._pos = 0
                continue
            if helper is not None:
                if waker is None and self._mode != Cursor.POOL:
                    self._untuned += 1
                    if self._untuned >= self._tune_every:
                        self._untuned = 0
                        self._fold()
                        self._tune_every = helper.tune(engine._finished)
                    value = self._bypass()
                    if value is not _NOTHING:
                        return value
                    self._fold()
                helper.tune(engine._finished)
            got = engine._next_released(self._credit, buffer, waker,
                                        helper is not None and waker is None)
            self._credit = 0
            if got is True:
                continue
            if isinstance(got, Batch):
                self._run_inline(got)
                continue
            if got is _PULL:
                continue
            if got is None:
                self._leave(terminate=False)
                error = engine._end_error
                if error is not None:
                    raise error
                raise StopIteration
            if got is _STOPPED:
                self._report_termination()
            if got is False:
                return NOT_READY
        position = self._pos
        self._pos += 1
        self._credit += 1
        return self._expand(slot, position)

    def _run_inline(self, batch: Batch) -> None:
        """Level 0: run a queued batch here, as a worker would."""
        engine = self._engine
        try:
            runner, workerlocal = self._helper.inline_context()
        except BaseException as exc:  # noqa: BLE001 - worker_init failed here
            batch._open = False
            _fail_slots(batch._slots, engine._kind, exc)
            engine._complete(batch._slots, batch._keys, 0.0)
            engine.fail_init(exc)
            return
        batch._open = False
        elapsed = engine._run_slots(batch, runner, workerlocal)
        engine._complete(batch._slots, batch._keys, elapsed)

    def _bypass(self) -> Any:
        """Level 0, a map engine with nothing in flight: pull, run and yield one item here,
        the way a plain loop would, with no slot and no other thread. The claim on the
        source lasts until the next reading (``_fold``); the consumer is then the only
        writer of the counters it bumps."""
        engine = self._engine
        if self._pull_next is None:
            self._pull_next = engine._claim_pull()
            if self._pull_next is None:
                return _NOTHING
            if self._inline is None:  # before the pull: a failure loses nothing
                try:
                    self._inline = self._helper.inline_context()
                except BaseException:
                    self._fold()
                    raise
        position = self._pull_next
        try:
            item = next(engine._source)  # type: ignore[arg-type]
        except StopIteration:
            self._fold()
            engine.close()
            return _NOTHING
        except BaseException as exc:  # noqa: BLE001 - raised at its position, as the feeder's
            self._fold()
            engine.close(exc)
            return _NOTHING
        label = position
        if engine._indexed:
            try:
                label = _index_of_pair(item, position)
            except BaseException as exc:  # noqa: BLE001 - raised at its position
                self._fold()
                engine.close(exc)
                return _NOTHING
            item = item[1]
        self._pull_next = position + 1
        engine._accepted += 1
        runner = self._inline[0]  # type: ignore[index]  # set with the claim
        output, error = runner.run_value(label, item)
        engine._finished += 1
        slot = _Slot(position)
        slot.items, slot.outputs = [item], [output]
        if error is not None:
            slot.errors = [error]
        if engine._indexed:
            slot.labels = [label]
        return self._expand(slot, 0)

    def _fold(self) -> None:
        # End the claim on the source: the feeder (or the next claim) goes on from here.
        if self._pull_next is not None:
            position, self._pull_next = self._pull_next, None
            self._engine._end_pull(position)

    def _begin(self) -> None:
        if self._state == _DONE:
            raise StopIteration
        if self._state == _REFUSED:
            raise RuntimeError("results() is already being iterated by another consumer")
        self._engine._claim(self)
        on_start, self._on_start = self._on_start, None
        if on_start is not None:
            try:
                on_start()
            except BaseException:
                self._leave(terminate=True)
                raise

    def _expand(self, slot: _Slot, position: int) -> Any:
        # What the consumer sees of one item, and the watermark moving past it.
        engine, mode = self._engine, self._mode
        if mode == Cursor.POOL:
            task, slot.item = slot.item, None
            error = task.error
            if error is not None and not isinstance(error, Exception):
                self._leave(terminate=True)
                raise error
            engine._watermark = slot.index
            engine._yielded += 1
            return task
        index = slot.labels[position] if slot.labels else slot.index + position
        error = slot.errors[position] if slot.errors else None
        if error is not None and (mode == Cursor.MAP or not isinstance(error, Exception)):
            self._leave(terminate=True)
            if mode == Cursor.MAP and isinstance(error, StopIteration):
                # It would end the caller's loop silently.
                raise RuntimeError("fn raised StopIteration") from error
            raise error
        output = slot.outputs[position] if slot.outputs else None
        if slot.outputs:
            slot.outputs[position] = None
        engine._watermark = index
        engine._yielded += 1
        if mode == Cursor.MAP:
            return output
        task = _selected.Task(index, slot.items[position])
        task.output = output
        task.error = error
        return task

    def _report_termination(self) -> None:
        engine = self._engine
        dropped = engine._accepted - engine._yielded
        first = engine._terminated_head
        if self._buffer and self._pos < self._buffer[0].weight:
            slot = self._buffer[0]
            if engine._kind == POOL:
                first = slot.index
            else:
                first = slot.labels[self._pos] if slot.labels else slot.index + self._pos
        self._leave(terminate=False)
        if dropped:
            raise PoolTerminated(dropped, first)
        raise StopIteration

    def _leave(self, terminate: bool) -> None:
        self._fold()
        if self._state != _ACTIVE:
            self._state = _DONE
            return
        unyielded = _weight(self._buffer) - self._pos
        self._engine._release(self, terminate, unyielded)
        self._buffer.clear()
        self._pos = 0

    def close(self) -> None:
        """Stop consuming; if the iteration had started and not ended, terminate the engine."""
        self._leave(terminate=True)

    def stats(self) -> dict[str, Any]:
        """The engine's counters (with a helper: the level and its decisions too)."""
        stats = self._engine.stats()
        if self._helper is not None:
            stats.update(self._helper.stats())
        return stats

    def __del__(self) -> None:
        if self._state == _ACTIVE:
            try:
                if self._engine._lock._is_owned():  # type: ignore[attr-defined]  # a finalizer
                    self._state = _DONE
                    self._engine.terminate_soon()
                else:
                    self._engine._release(self, True, _weight(self._buffer) - self._pos)
            except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to stop
                pass
