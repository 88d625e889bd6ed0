"""``ParallelConsumer``: consume Kafka topics in parallel, keep order, commit safely.

    poll thread (run())                        workers (Dispatcher)
    -------------------                        --------------------
    consume(num_messages) --> Records --> chunks per partition (or per key) --> fn(record)
       ^   |                  tracker.receive                                   |
       |   +-- pause/resume by in-flight count                                  v
       |   +-- commit(offset + metadata) <-- tracker <-- done <-- handle(record, output)
       +-- rebalance callbacks: assign (read commit + metadata), revoke (drain, commit), lost

Every call on the confluent-kafka ``Consumer`` happens on the poll thread, inside ``run()``.
The poll thread never waits for user code: a full window pauses partitions and polling goes
on, so a slow handler cannot get the consumer evicted from its group (except while a revoked
partition drains, see ``_on_revoke``). ``handle`` runs on the worker that finished ``fn``:
with ``ordering="partition"`` one worker at a time per partition hands the released run of a
``ReorderBuffer`` to ``handle`` while the others go on; with ``"key"`` and ``"unordered"``
right after ``fn``, on the same worker.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from operator import itemgetter
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from .._core import ReorderBuffer
from ._dispatch import Dispatcher, Result
from ._metadata import decode as decode_metadata
from ._metadata import encode as encode_metadata
from ._offsets import OffsetTracker, SkipRanges
from ._record import Record, records_of

__all__ = ["ParallelConsumer"]

log = logging.getLogger("orderedtask.kafka")

ORDERINGS = ("partition", "key", "unordered")
# consume() returns at most this many messages at once: one lock round and one submit per
# batch, small enough to spread over the workers at once.
MAX_POLL_BATCH = 500
# A chunk (the unit handed to a worker) holds at most this many records of one partition.
MAX_CHUNK = 64
POLL_TIMEOUT = 0.1  # seconds: how fast run() notices stop() and commit deadlines
PAUSED_POLL_TIMEOUT = 0.01  # while partitions are paused: resume soon after workers catch up
SYNC_COMMIT_TRIES = 3  # a synchronous commit (revoke, stop) is tried at least this often,
SYNC_COMMIT_PATIENCE = 3.0  # and for this many seconds while the error is retriable (a
# rebalance in progress: the mock cluster refuses commits then)

_offset_of = itemgetter(2)  # Record.offset, at C speed


class _Chunk(list):  # type: ignore[type-arg]
    """Records of one partition (one key with ordering="key"), ascending offsets.

    Crosses to a worker process as a plain list: ``state`` stays in this process.
    """

    __slots__ = ("state", "offsets")
    state: _Partition
    offsets: list[int]

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (list, (list(self),))


class _Partition:
    """One assignment of one partition. A new one per assignment (its ``generation``): a late
    completion for a partition that was revoked or lost updates an object no longer in the
    consumer's table, so it is never committed."""

    __slots__ = ("topic", "partition", "generation", "lock", "tracker", "skip", "reorder",
                 "handling", "paused", "active", "committed", "sent")

    def __init__(self, topic: str, partition: int, generation: int, start: int | None,
                 skip: list[tuple[int, int]], ordered: bool) -> None:
        self.topic = topic
        self.partition = partition
        self.generation = generation
        # lock guards tracker, reorder and handling (workers and the poll thread).
        self.lock = threading.Lock()
        self.tracker = OffsetTracker(start)
        self.skip = SkipRanges(skip)  # poll thread only
        self.reorder = ReorderBuffer() if ordered else None
        self.handling = False  # a worker is handing this partition's released run to handle
        self.paused = False  # poll thread only
        self.active = True  # False once revoked or lost: nothing more is handled for it
        self.committed: int | None = start  # last commit the broker acknowledged
        self.sent: tuple[int, str] | None = None  # last (offset, metadata) sent

    def tp(self, offset: int = -1001, metadata: str | None = None) -> TopicPartition:
        if metadata is None:
            return TopicPartition(self.topic, self.partition, offset)
        return TopicPartition(self.topic, self.partition, offset, metadata)


def _run_records(fn: Callable[[Record], Any], retries: int, retry_backoff: float,
                 records: list[Record]) -> tuple[list[Any], dict[int, BaseException] | None]:
    """Worker side: ``fn`` on each record of a chunk, each retried on its own.

    Returns the outputs and, if any record failed, ``{index: last error}``. Module-level so
    that it pickles for process backends. (The Dispatcher's own retries would rerun the
    whole chunk, hence retries here.)
    """
    outputs: list[Any] = []
    append = outputs.append
    errors: dict[int, BaseException] | None = None
    for record in records:
        try:
            append(fn(record))
        except Exception as first:  # noqa: BLE001 - kept with its record
            error: BaseException = first
            for _ in range(retries):
                if retry_backoff:
                    time.sleep(retry_backoff)
                try:
                    append(fn(record))
                    break
                except Exception as exc:  # noqa: BLE001
                    error = exc
            else:
                if errors is None:
                    errors = {}
                errors[len(outputs)] = error
                append(None)
        except BaseException as exc:  # noqa: BLE001 - not retried: stops the consumer
            if errors is None:
                errors = {}
            errors[len(outputs)] = exc
            append(None)
    return outputs, errors


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes", "on")


class ParallelConsumer:
    """Consumes ``topics`` with a confluent-kafka consumer group; ``fn`` runs in parallel.

    ``ParallelConsumer(config, topics, fn, handle=None, *, ordering="partition",
    workers=None, window=None, commit_every=1000, commit_interval=5.0, retries=0,
    retry_backoff=0.0, on_error=None, backend="thread")``

    - ``fn(record) -> output`` runs on ``workers`` workers (``backend``: ``"thread"``,
      ``"process"`` or an ``Executor``); ``handle(record, output)`` runs after it, on a worker
      thread of this process: with ``"partition"`` in offset order per partition, with
      ``"key"`` in offset order per key (``fn`` too runs one at a time per key), with
      ``"unordered"`` as soon as ``fn`` returns. A record is *handled* when ``handle``
      returned (without ``handle``: when ``fn`` did).
    - ``fn`` or ``handle`` raising an ``Exception`` is retried ``retries`` times with
      ``retry_backoff`` seconds between; then ``on_error(record, exc)`` is called and the
      record counts as handled; with ``on_error=None`` (or if ``on_error`` raises) ``run()``
      commits what was handled and raises the error.
    - ``window``: records in flight (received, not yet handled) across all partitions; a
      partition above its share is paused until it is down to half of it.
    - Commits: the next offset to read (everything below it handled; offsets that do not
      exist count as done), plus, for ``"key"`` and ``"unordered"``, the handled records
      above it in the commit metadata; every ``commit_every`` handled records or
      ``commit_interval`` seconds when something changed, on revoke and on stop.

    ``run()`` blocks until ``stop()``; ``stop()`` and ``stats()`` may be called from any
    thread, ``stop()`` also from a signal handler.
    """

    def __init__(self, config: Mapping[str, Any], topics: str | Iterable[str],
                 fn: Callable[[Record], Any],
                 handle: Callable[[Record, Any], Any] | None = None, *,
                 ordering: str = "partition", workers: int | None = None,
                 window: int | None = None, commit_every: int | None = 1000,
                 commit_interval: float | None = 5.0, retries: int = 0,
                 retry_backoff: float = 0.0,
                 on_error: Callable[[Record, Exception], Any] | None = None,
                 backend: str | Executor = "thread") -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        for name, callback in (("handle", handle), ("on_error", on_error)):
            if callback is not None and not callable(callback):
                raise TypeError(f"{name} must be callable or None, not "
                                f"{type(callback).__name__}")
        if ordering not in ORDERINGS:
            raise ValueError(f"ordering must be one of {ORDERINGS}, not {ordering!r}")
        workers = (os.cpu_count() or 1) if workers is None else workers
        for name, value, low in (("workers", workers, 1), ("window", window, 1),
                                 ("commit_every", commit_every, 1), ("retries", retries, 0)):
            if value is None and name in ("window", "commit_every"):
                continue
            if type(value) is not int:
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, not {value}")
        for name, number in (("commit_interval", commit_interval),
                             ("retry_backoff", retry_backoff)):
            if number is None and name == "commit_interval":
                continue
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise TypeError(f"{name} must be a number, not {type(number).__name__}")
            if number < 0 or (name == "commit_interval" and number == 0):
                raise ValueError(f"{name} must be {'>' if name == 'commit_interval' else '>='}"
                                 f" 0, not {number}")
        if not (backend in ("thread", "process") or isinstance(backend, Executor)):
            raise ValueError(f"backend must be 'thread', 'process' or an Executor, not "
                             f"{backend!r}")
        self._topics = [topics] if isinstance(topics, str) else list(topics)
        if not self._topics or not all(isinstance(t, str) and t for t in self._topics):
            raise ValueError(f"topics must be a topic name or a list of them, not {topics!r}")
        self._config = self._checked_config(config)
        self._fn = fn
        self._handle = handle
        self._ordering = ordering
        self._workers = workers
        self._window = window if window is not None else max(2048, 64 * workers)
        self._commit_every = commit_every
        self._commit_interval = commit_interval
        self._retries = retries
        self._retry_backoff = float(retry_backoff)
        self._on_error = on_error
        self._backend = backend
        # "key" and "unordered" on threads: handle runs right after fn, record by record, on
        # the same worker (in _run_and_handle). Elsewhere fn's outputs come back per chunk and
        # handle runs in on_done (in this process, whatever the backend).
        self._inline = ordering != "partition" and backend == "thread"
        # One topic (not a pattern): the poll thread need not ask each message for its topic.
        self._single_topic = (self._topics[0] if len(self._topics) == 1
                              and not self._topics[0].startswith("^") else None)
        self._poll_interval_s = int(self._config.get("max.poll.interval.ms", 300_000)) / 1000
        # Poll thread only (run() and the rebalance callbacks it serves):
        self._consumer: Any = None
        self._dispatcher: Dispatcher | None = None
        self._generation = 0
        self._handled_at_commit = 0
        self._last_commit = time.monotonic()
        # Read by stats() on any thread; the poll thread replaces entries, never mutates a
        # shared dict in place from two threads.
        self._states: dict[tuple[str, int], _Partition] = {}
        self._retired = [0, 0]  # handled, skipped: of partitions no longer assigned
        # Backpressure (poll thread): since when the window is full, and how long to hold
        # the poll loop before pausing (the group waits that long for a rebalance).
        self._full_since: float | None = None
        self._hold_limit = min(1.0, self._poll_interval_s / 4)
        # _holding is written by the poll thread and read by workers without a lock: a stale
        # read only costs the poll loop its 5 ms wait; _room (an Event) has its own lock.
        self._room = threading.Event()  # set by a worker that finished records while held
        self._holding = False
        self._stopping = False  # a plain flag: safe to set from a signal handler
        self._fatal: BaseException | None = None  # first error that stops the consumer
        self._fatal_lock = threading.Lock()
        self._running = False
        self._run_thread: threading.Thread | None = None
        self._ran = threading.Event()  # set when run() has returned
        self._ran.set()
        self._closed = False

    # -- configuration --------------------------------------------------------------------
    @staticmethod
    def _checked_config(config: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping of consumer settings, not "
                            f"{type(config).__name__}")
        settings = dict(config)
        if not settings.get("group.id"):
            raise ValueError("config needs 'group.id': offsets are committed to a group")
        for name in ("enable.auto.commit", "auto.commit.enable"):
            if name in settings and _truthy(settings[name]):
                raise ValueError(f"config {name!r}={settings[name]!r} would commit offsets of "
                                 "records not yet handled; ParallelConsumer commits itself")
        if "on_commit" in settings:
            raise ValueError("config 'on_commit' is taken: ParallelConsumer tracks its own "
                             "commits (see stats())")
        settings["enable.auto.commit"] = False
        # Offsets are committed explicitly, never from the store.
        settings["enable.auto.offset.store"] = False
        return settings

    # -- public API -----------------------------------------------------------------------
    def stop(self) -> None:
        """Ask ``run()`` to finish what is in flight, commit, close and return. Idempotent;
        callable from any thread and from a signal handler."""
        self._stopping = True

    def close(self) -> None:
        """Stop and wait for ``run()`` to return (if it runs on another thread)."""
        self._stopping = True
        self._closed = True
        if self._running and threading.current_thread() is not self._run_thread:
            self._ran.wait()

    def __enter__(self) -> ParallelConsumer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """A snapshot: per assigned partition its committed offset (last acknowledged commit),
        handled and skipped counts, in flight, the head's wait and whether it is paused; and
        the totals. Callable from any thread."""
        now = time.monotonic()
        partitions: list[dict[str, Any]] = []
        for state in list(self._states.values()):
            with state.lock:
                tracker = state.tracker
                partitions.append({
                    "topic": state.topic, "partition": state.partition,
                    "generation": state.generation, "committed": state.committed,
                    "handled": tracker.handled, "skipped": tracker.skipped,
                    "in_flight": tracker.in_flight,
                    "head_wait_seconds": tracker.head_wait(now), "paused": state.paused,
                })
        partitions.sort(key=itemgetter("topic", "partition"))
        return {
            "running": self._running, "ordering": self._ordering, "workers": self._workers,
            "window": self._window, "partitions": partitions,
            "in_flight": sum(p["in_flight"] for p in partitions),
            "handled": sum(p["handled"] for p in partitions),
            # Over the whole run, partitions revoked or lost since included.
            "handled_total": self._retired[0] + sum(p["handled"] for p in partitions),
            "skipped_total": self._retired[1] + sum(p["skipped"] for p in partitions),
            "paused": sum(1 for p in partitions if p["paused"]),
        }

    def run(self) -> None:
        """Consume until ``stop()``; then finish what is in flight, commit, close, return.

        Raises the error that stopped the consumer (``on_error=None``), after committing what
        was handled. Every Consumer call happens on the thread that runs this.
        """
        if self._running or self._consumer is not None:
            raise RuntimeError("run() may be called once per ParallelConsumer")
        self._run_thread = threading.current_thread()
        self._ran.clear()
        self._running = True
        # Checked after _running is set (close() sets _closed, then reads _running): a
        # close() on another thread either waits for this run or is seen here.
        if self._closed:
            self._running = False
            self._ran.set()
            raise RuntimeError("this ParallelConsumer is closed")
        config = dict(self._config, on_commit=self._on_commit)
        try:
            self._consumer = Consumer(config)
            if self._inline:
                run_chunk: Callable[[Any], Any] = self._run_and_handle
            else:
                run_chunk = functools.partial(_run_records, self._fn, self._retries,
                                              self._retry_backoff)
            self._dispatcher = Dispatcher(run_chunk, self._on_done, workers=self._workers,
                                          backend=self._backend, keyed=self._ordering == "key")
            self._consumer.subscribe(self._topics, on_assign=self._on_assign,
                                     on_revoke=self._on_revoke, on_lost=self._on_lost)
            try:
                while not self._stopping and self._fatal is None:
                    self._poll(POLL_TIMEOUT)
            except BaseException as exc:  # KeyboardInterrupt, a fatal consumer error
                self._fail(exc)
            self._drain()
            self._commit(list(self._states.values()), sync=True)
            self._consumer.close()  # leaves the group (its revoke commits nothing new)
        finally:
            if self._dispatcher is not None:
                self._dispatcher.terminate()
                self._dispatcher.join(timeout=5.0)
            self._running = False
            self._ran.set()
        if self._fatal is not None:
            raise self._fatal

    # -- the poll loop --------------------------------------------------------------------
    def _poll(self, timeout: float) -> None:
        """One round of the poll loop: backpressure, consume, submit, commit."""
        in_flight = self._apply_backpressure()
        if in_flight >= self._window:
            now = time.monotonic()
            if self._full_since is None:
                self._full_since = now
            if now - self._full_since < self._hold_limit:
                # Hold: no consume() until a worker makes room (briefly: the group waits for
                # a rebalance meanwhile). Cheaper than a pause, which drops librdkafka's
                # prefetched records and costs 0.5-1 s of refetching on resume.
                self._room.clear()
                self._holding = True
                self._room.wait(0.005)
                self._holding = False
                self._after_poll()
                return
            count = 1  # full for long: stalled partitions are paused now; stay in the group
        else:
            self._full_since = None
            count = min(MAX_POLL_BATCH, self._window - in_flight)
        if any(state.paused for state in self._states.values()):
            timeout = min(timeout, PAUSED_POLL_TIMEOUT)
        messages = self._consumer.consume(count, timeout)
        if messages:
            self._accept(messages)
        self._after_poll()

    def _after_poll(self) -> None:
        dispatcher = self._dispatcher
        if dispatcher is not None and dispatcher.error is not None:
            self._fail(dispatcher.error)
        self._maybe_commit()

    def _accept(self, messages: list[Message]) -> None:
        """Poll thread: turn consumed messages into chunks and submit them, per partition."""
        errors = list(map(Message.error, messages))
        if errors.count(None) != len(errors):
            messages = self._without_errors(messages)
            if not messages:
                return
        # Consumed messages always name their partition and topic (only errors lack them).
        partitions = cast("list[int]", list(map(Message.partition, messages)))
        topic = self._single_topic
        if topic is not None and partitions.count(partitions[0]) == len(partitions):
            groups: dict[tuple[str, int], list[Message]] = {(topic, partitions[0]): messages}
        else:
            topics = ([topic] * len(messages) if topic is not None
                      else cast("list[str]", list(map(Message.topic, messages))))
            groups = {}
            for key, message in zip(zip(topics, partitions), messages):
                group = groups.get(key)
                if group is None:
                    groups[key] = [message]
                else:
                    group.append(message)
        chunks: list[_Chunk] = []
        keys: list[Any] | None = [] if self._ordering == "key" else None
        for (topic_name, partition), group in groups.items():
            state = self._states.get((topic_name, partition))
            if state is None:
                continue  # fetched just before its revocation: its next owner reads it
            records = records_of(topic_name, partition, group)
            offsets = list(map(_offset_of, records))
            with state.lock:
                state.tracker.receive(offsets)
            if state.skip:
                run, skipped = state.skip.split(offsets)
                if skipped:
                    with state.lock:
                        state.tracker.done([offsets[i] for i in skipped], skipped=True)
                    records = [records[i] for i in run]
                    offsets = [offsets[i] for i in run]
            if records:
                self._chunk(state, records, offsets, chunks, keys)
        if chunks:
            assert self._dispatcher is not None
            self._dispatcher.submit(chunks, keys)

    def _chunk(self, state: _Partition, records: list[Record], offsets: list[int],
               chunks: list[_Chunk], keys: list[Any] | None) -> None:
        if keys is not None:  # ordering="key": one chunk per key, offset order within it
            by_key: dict[Any, list[int]] = {}
            for index, record in enumerate(records):
                indices = by_key.get(record[3])
                if indices is None:
                    by_key[record[3]] = [index]
                else:
                    indices.append(index)
            for key, indices in by_key.items():
                for start in range(0, len(indices), MAX_CHUNK):
                    part = indices[start:start + MAX_CHUNK]
                    chunk = _Chunk(records[i] for i in part)
                    chunk.state = state
                    chunk.offsets = [offsets[i] for i in part]
                    chunks.append(chunk)
                    keys.append((state.topic, state.partition, key))
            return
        # Spread one poll's records of a partition over the workers.
        size = max(1, min(MAX_CHUNK, -(-len(records) // self._workers)))
        reorder = state.reorder
        for start in range(0, len(records), size):
            chunk = _Chunk(records[start:start + size])
            chunk.state = state
            chunk.offsets = offsets[start:start + size]
            if reorder is not None:
                reorder.accept(chunk.offsets[0])
            chunks.append(chunk)

    def _without_errors(self, messages: list[Message]) -> list[Message]:
        kept = []
        for message in messages:
            error = message.error()
            if error is None:
                kept.append(message)
            elif error.code() == KafkaError._PARTITION_EOF:
                continue
            elif error.fatal():
                raise KafkaException(error)
            else:
                log.warning("consumer error (librdkafka retries): %s", error)
        return kept

    def _apply_backpressure(self) -> int:
        """Poll thread: pause the partitions that hold their share of the window and are
        stuck (the head waited ``_hold_limit`` seconds, or the window has been full that
        long); resume paused ones down to half their share. Return the records in flight.

        Pausing is kept for stalls: librdkafka drops a paused partition's prefetched records
        and refetches them on resume, 0.5-1 s later. A window that fills because the workers
        are merely busy holds the poll loop instead (``_poll``).
        """
        states = list(self._states.values())
        if not states:
            return 0
        share = max(1, self._window // len(states))
        low = share // 2
        now = time.monotonic()
        full_too_long = (self._full_since is not None
                         and now - self._full_since >= self._hold_limit)
        total = 0
        pause, resume = [], []
        for state in states:
            with state.lock:
                count = state.tracker.in_flight
                stuck = count >= share and (full_too_long or
                                            state.tracker.head_wait(now) >= self._hold_limit)
            total += count
            if not state.paused and stuck:
                pause.append(state)
            elif state.paused and count <= low:
                resume.append(state)
        for states_, paused, call in ((pause, True, self._consumer.pause),
                                      (resume, False, self._consumer.resume)):
            if states_:
                try:
                    call([state.tp() for state in states_])
                except KafkaException as exc:
                    log.warning("%s failed: %s", call.__name__, exc)
                    continue
                for state in states_:
                    state.paused = paused
        return total

    # -- the worker side ------------------------------------------------------------------
    def _run_and_handle(self, chunk: _Chunk) -> None:
        """Worker thread, "key"/"unordered" on threads: fn then handle, record by record, each
        retried on its own; a record is done as soon as it is handled."""
        state = chunk.state
        fn, handle, retries = self._fn, self._handle, self._retries
        offsets = chunk.offsets
        lock, tracker = state.lock, state.tracker
        for index, record in enumerate(chunk):
            if self._fatal is not None or not state.active:
                return  # stopping, or the partition is gone: its next owner reads the rest
            failure: BaseException | None = None
            output = None
            try:
                output = fn(record)
            except BaseException as exc:  # noqa: BLE001 - retried (an Exception) or settled
                failure = exc
                if isinstance(exc, Exception):
                    for _ in range(retries):
                        if self._retry_backoff:
                            time.sleep(self._retry_backoff)
                        try:
                            output = fn(record)
                            failure = None
                            break
                        except Exception as again:  # noqa: BLE001
                            failure = again
            if failure is None and handle is not None:
                failure = self._call_handle(record, output)
            if failure is not None and not self._settle(record, failure):
                return  # this key (or chunk) stops here: the rest is not handled
            with lock:
                tracker.done_one(offsets[index])
            if self._holding:
                self._room.set()

    def _on_done(self, results: list[Result]) -> None:
        """Worker thread: hand finished chunks to ``handle`` (in order where needed)."""
        if self._inline:
            for _, _, error in results:
                if error is not None:  # _run_and_handle settles its own errors: a bug
                    self._fail(error)
            return
        try:
            for chunk, output, error in results:
                state = chunk.state
                if not state.active or self._fatal is not None:
                    continue
                if state.reorder is None:
                    self._handle_chunk(state, chunk, output, error)
                    continue
                with state.lock:
                    state.reorder.finish(chunk.offsets[0], (chunk, output, error))
                    if state.handling:
                        continue  # the worker handling this partition takes it from here
                    state.handling = True
                self._handle_in_order(state)
        except BaseException as exc:  # noqa: BLE001 - a bug or an interrupt: stop, loudly
            self._fail(exc)

    def _handle_in_order(self, state: _Partition) -> None:
        """Hand released runs to handle until none is left; one worker at a time per
        partition (``state.handling``), so the partition's records are handled in order."""
        reorder = state.reorder
        assert reorder is not None
        while True:
            with state.lock:
                run = reorder.release()
                if not run or not state.active:
                    state.handling = False
                    return
            for chunk, output, error in run:
                if not self._handle_chunk(state, chunk, output, error):
                    return  # stopped at a failing record: nothing after it is handled

    def _handle_chunk(self, state: _Partition, chunk: _Chunk, output: Any,
                      error: BaseException | None) -> bool:
        """Handle a chunk's records in order; mark the handled ones done. False if a record's
        error stopped the consumer (the records from it on are not handled)."""
        count = len(chunk)
        if error is not None:  # the batch as a whole failed (e.g. a worker process died)
            outputs: list[Any] = [None] * count
            errors: dict[int, BaseException] | None = dict.fromkeys(range(count), error)
        else:
            outputs, errors = output
        handle = self._handle
        handled = 0
        first: BaseException | None = None  # handle's first failure in the fast path
        if errors is None and handle is not None:
            try:
                for record, result in zip(chunk, outputs):
                    handle(record, result)
                    handled += 1
            except BaseException as exc:  # noqa: BLE001 - retried record by record below
                first = exc
        elif errors is None:
            handled = count
        while handled < count:
            record = chunk[handled]
            failure = errors.get(handled) if errors else None
            if failure is None and handle is not None:
                failure = self._call_handle(record, outputs[handled], first)
                first = None
            if failure is not None and not self._settle(record, failure):
                break
            handled += 1
        done = chunk.offsets if handled == count else chunk.offsets[:handled]
        with state.lock:
            state.tracker.done(done)
        if self._holding:
            self._room.set()
        return handled == count

    def _call_handle(self, record: Record, output: Any,
                     first: BaseException | None = None) -> BaseException | None:
        """``handle`` with retries; None, or the last error. ``first``: the failure of a
        first attempt already made."""
        assert self._handle is not None
        if first is not None and not isinstance(first, Exception):
            return first  # SystemExit & co: not retried
        failure: BaseException | None = first
        for attempt in range(1 if first is not None else 0, self._retries + 1):
            if attempt and self._retry_backoff:
                time.sleep(self._retry_backoff)
            try:
                self._handle(record, output)
                return None
            except Exception as exc:  # noqa: BLE001 - retried, then settled
                failure = exc
            except BaseException as exc:  # noqa: BLE001 - not retried
                return exc
        return failure

    def _settle(self, record: Record, failure: BaseException) -> bool:
        """A record failed for good: ``on_error`` makes it handled; else stop. True if
        handled."""
        if isinstance(failure, Exception) and self._on_error is not None:
            try:
                self._on_error(record, failure)
                return True
            except BaseException as exc:  # noqa: BLE001 - the dead-letter path failed
                self._fail(exc)
                return False
        self._fail(failure)
        return False

    def _fail(self, exc: BaseException) -> None:
        with self._fatal_lock:
            if self._fatal is None:
                self._fatal = exc
                log.error("stopping: %r", exc)

    # -- draining and commits (poll thread) -----------------------------------------------
    def _drain(self) -> None:
        """Poll thread: keep polling (the group must still see us) until what is in flight is
        handled, or, after a fatal error, until the workers stopped.

        A partition with records in flight is paused, so that the drain ends; one with none
        is not: its fetcher goes on and the consumer's position can still move past a
        trailing transaction marker (pausing drops what was fetched, markers included).
        """
        dispatcher = self._dispatcher
        assert dispatcher is not None
        while True:
            if self._fatal is not None:
                dispatcher.terminate()
                if dispatcher.join(timeout=0):
                    return
            busy = [state for state in self._states.values() if self._in_flight(state)]
            if not busy and self._fatal is None:
                # Serve what librdkafka has queued already (a transaction marker moves the
                # position) without waiting; records among it are handled like any.
                messages = self._consumer.consume(MAX_POLL_BATCH, 0)
                if not messages:
                    return
                self._accept(messages)
                continue
            unpaused = [state for state in busy if not state.paused]
            if unpaused:
                try:
                    self._consumer.pause([state.tp() for state in unpaused])
                    for state in unpaused:
                        state.paused = True
                except KafkaException as exc:
                    log.warning("pause failed: %s", exc)
            try:
                messages = self._consumer.consume(MAX_POLL_BATCH, PAUSED_POLL_TIMEOUT)
                if messages and self._fatal is None:
                    self._accept(messages)  # already fetched: ours to handle
                if dispatcher.error is not None:
                    self._fail(dispatcher.error)
                self._maybe_commit()
            except BaseException as exc:  # noqa: BLE001
                self._fail(exc)

    @staticmethod
    def _in_flight(state: _Partition) -> int:
        with state.lock:
            return state.tracker.in_flight

    def _maybe_commit(self) -> None:
        handled = 0
        for state in self._states.values():
            handled += state.tracker.handled + state.tracker.skipped  # ints: a racy read is ok
        now = time.monotonic()
        due = (self._commit_every is not None
               and handled - self._handled_at_commit >= self._commit_every)
        if not due and self._commit_interval is not None:
            due = now - self._last_commit >= self._commit_interval
        if due:
            self._handled_at_commit = handled
            self._last_commit = now
            self._commit(list(self._states.values()), sync=False)

    def _commit(self, states: list[_Partition], *, sync: bool) -> None:
        """Commit each partition's committable offset (and metadata) if it changed.

        Asynchronous between rebalances (the result arrives in ``_on_commit`` during a later
        poll; a failure there makes the next round send it again); synchronous on revoke and
        stop, tried ``SYNC_COMMIT_TRIES`` times. Never raises.
        """
        consumer = self._consumer
        idle = []
        for state in states:
            with state.lock:
                if state.tracker.in_flight == 0:
                    idle.append(state)
        positions: dict[tuple[str, int], int] = {}
        if idle:
            try:
                for tp in consumer.position([state.tp() for state in idle]):
                    positions[(tp.topic, tp.partition)] = tp.offset
            except KafkaException as exc:
                log.warning("position() failed: %s", exc)
        offsets = []
        sent = []
        for state in states:
            with state.lock:
                tracker = state.tracker
                offset = tracker.committable(positions.get((state.topic, state.partition)))
                ranges = tracker.handled_above() if offset is not None else []
            if offset is None:
                continue
            metadata = encode_metadata(offset, ranges) if ranges else ""
            if state.committed == offset and state.sent in (None, (offset, metadata)) and (
                    state.sent is not None or not metadata):
                continue  # acknowledged already
            if not sync and state.sent == (offset, metadata):
                continue  # sent, its answer not in yet (on revoke and stop: confirmed again)
            offsets.append(state.tp(offset, metadata))
            sent.append(state)
            state.sent = (offset, metadata)
        if not offsets:
            return
        if not sync:
            try:
                consumer.commit(offsets=offsets, asynchronous=True)
            except KafkaException as exc:
                log.warning("commit failed, will retry: %s", exc)
                for state in sent:
                    state.sent = None
            return
        deadline = time.monotonic() + SYNC_COMMIT_PATIENCE
        attempt = 0
        while True:
            attempt += 1
            try:
                result = consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                retriable = exc.args and getattr(exc.args[0], "retriable", lambda: False)()
                log.warning("commit of %s failed (try %d): %s",
                            [f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in offsets],
                            attempt, exc)
                if attempt < SYNC_COMMIT_TRIES or (retriable and time.monotonic() < deadline):
                    time.sleep(min(0.1 * attempt, 0.5))
                    continue
                break
            self._acknowledge(result or [])
            return
        for state in sent:
            state.sent = None

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """Poll thread (served by consume/commit): the broker's answer to a commit."""
        if error is not None and error.code() != KafkaError._NO_OFFSET:
            log.warning("commit failed, will retry: %s", error)
            for tp in partitions:
                state = self._states.get((tp.topic, tp.partition))
                if state is not None:
                    state.sent = None
            return
        self._acknowledge(partitions)

    def _acknowledge(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            state = self._states.get((tp.topic, tp.partition))
            if state is None:
                continue
            if tp.error is not None:
                log.warning("commit of %s[%d] failed, will retry: %s", tp.topic, tp.partition,
                            tp.error)
                state.sent = None
            elif tp.offset >= 0 and (state.committed is None or tp.offset >= state.committed):
                state.committed = tp.offset

    # -- rebalance callbacks (poll thread, inside consume/close) --------------------------
    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        fresh = [tp for tp in partitions if (tp.topic, tp.partition) not in self._states]
        if not fresh:
            return
        if self._stopping:
            # Nothing more will be consumed: reading their commits (up to 10 s while the
            # group rebalances) would only hold up close(); their next owner reads them.
            log.info("assigned %s while stopping: left to the next owner",
                     ", ".join(f"{tp.topic}[{tp.partition}]" for tp in fresh))
            return
        try:
            committed = consumer.committed(fresh, timeout=10)
        except KafkaException as exc:
            # Unknown: start from what the group has (librdkafka fetches it) and skip nothing.
            log.warning("reading committed offsets failed; metadata ignored: %s", exc)
            committed = fresh
        for tp in committed:
            start = tp.offset if tp.offset >= 0 else None
            skip = decode_metadata(tp.metadata, start) if start is not None else []
            self._generation += 1
            self._states[(tp.topic, tp.partition)] = _Partition(
                tp.topic, tp.partition, self._generation, start, skip,
                ordered=self._ordering == "partition")
            log.info("assigned %s[%d] at %s%s", tp.topic, tp.partition, start,
                     f", skipping {sum(b - a + 1 for a, b in skip)} handled" if skip else "")

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Finish and handle what is in flight for the revoked partitions, commit, let go.

        The poll thread waits here (it cannot poll inside a callback), at most half of
        ``max.poll.interval.ms``; what is still in flight then is left to the next owner (it
        re-reads it: the commit stops below it).
        """
        states = [self._states[key] for key in
                  ((tp.topic, tp.partition) for tp in partitions) if key in self._states]
        if not states:
            return
        deadline = time.monotonic() + self._poll_interval_s / 2
        while (self._fatal is None and time.monotonic() < deadline
               and any(self._in_flight(state) for state in states)):
            time.sleep(0.005)
        self._commit(states, sync=True)
        for state in states:
            self._retire(state)
            del self._states[(state.topic, state.partition)]
            log.info("revoked %s[%d] (committed %s)", state.topic, state.partition,
                     state.committed)

    def _retire(self, state: _Partition) -> None:
        with state.lock:
            state.active = False
            self._retired[0] += state.tracker.handled
            self._retired[1] += state.tracker.skipped

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """The group moved on without us: drop, never commit (another member owns them)."""
        for tp in partitions:
            state = self._states.pop((tp.topic, tp.partition), None)
            if state is not None:
                self._retire(state)
                log.warning("lost %s[%d]: dropped without a commit", tp.topic, tp.partition)
