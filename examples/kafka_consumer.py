#!/usr/bin/env python3
"""Decode a Kafka topic's JSON messages in parallel, handle them in offset order, and commit
offsets safely (at-least-once), with confluent-kafka and orderedtask.

    pip install confluent-kafka orjson orderedtask
    python examples/kafka_consumer.py --bootstrap localhost:9092 --topic events \\
        --group decoders --workers 8

Threads, per assigned partition:

- the poll thread (the main thread) calls ``consumer.poll()`` and enqueues each message into
  the partition's ``orderedtask.Pool`` as ``Task(msg.offset(), msg.value())``; every call on
  the ``Consumer`` (poll, commit, close, the rebalance callbacks) happens on this thread;
- ``--workers`` worker threads decode the JSON (orjson if installed), several at once;
- one results thread iterates ``pool.results()``, handles each decoded message in offset
  order, and then records the pool's watermark as ``handled``.

Commits: an ``OffsetCommitter`` commits ``handled + 1`` every 1,000 offsets or 5 seconds
(checked after each poll), and unconditionally when the partition is revoked and on shutdown.

Why ``watermark + 1`` is safe: Kafka's committed offset is the *next* offset to read. The
watermark is the highest offset such that every message at or below it has been handed to
the results thread; read by that thread *after* handling a message, everything at or below
it has been handled. (Read from another thread, it may include the message being handled
right now: that is why the results thread publishes ``handled`` and the poll thread commits
that, never ``pool.watermark`` directly.) So a commit never covers a message that was not
handled, whatever order the workers finished in: a slow message holds the watermark, and the
commits, back.

What is re-read after a crash: everything from the last commit on. The messages handled after
it (about 1,000 offsets or 5 seconds' worth, more if commits were failing) and those still in
the pool (at most ``--window``) are delivered again to whichever consumer gets the partition
next. A clean shutdown or a revocation commits first, so then nothing is re-read (unless
that commit fails). Handling must tolerate re-reads (idempotent writes, or deduplication by
offset): this is at-least-once, not exactly-once.

Partitions: offsets, order and the watermark only mean something within one partition, so
each assigned partition gets its own pool, results thread and committer (a
``PartitionPipeline``). The simplest deployment runs one consumer per partition, where this
is exactly one pipeline; several assigned partitions just mean several pipelines (and
``--workers`` threads for each). A revoked
partition is drained (the messages already in its pool are handled and committed) before
the rebalance completes; a lost one (the group moved on without us) is dropped without a
commit.

Limits: while a pool's window is full the poll thread waits in ``enqueue``; if handling
stalls for longer than ``max.poll.interval.ms`` (5 minutes by default), the broker gives the
partition to another consumer, which re-reads from the last commit. A message whose JSON does
not decode is logged and skipped (``task.error``), not retried.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from orderedtask import Pool, PoolClosed, Task
from orderedtask import OffsetCommitter

try:
    import orjson

    loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # orjson is optional: the stdlib decoder is slower but equivalent here
    loads = json.loads

log = logging.getLogger("kafka_consumer")

Handler = Callable[[str, int, Task], None]


def consumer_config(bootstrap: str, group: str) -> dict[str, Any]:
    """The confluent-kafka ``Consumer`` settings this example relies on."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        # Offsets are committed by OffsetCommitter, after handling: never by a timer that
        # knows nothing about what was handled.
        "enable.auto.commit": False,
        # A group with no committed offset yet starts at the beginning of the partition.
        "auto.offset.reset": "earliest",
    }


def decode_json(workerlocal: dict[str, Any], task: Task) -> None:
    """Pool worker function: decode one message's value. An error stays on ``task.error``."""
    task.output = loads(task.input)


def print_message(topic: str, partition: int, task: Task) -> None:
    """The default handler: print each decoded message (replace with real work)."""
    if task.error is not None:
        log.warning("%s[%d]@%d: skipped, not JSON: %r", topic, partition, task.index,
                    task.error)
        return
    print(f"{topic}[{partition}]@{task.index}: {task.output!r}", flush=True)


class PartitionPipeline:
    """One assigned partition: a Pool, a results thread handling in order, a committer."""

    def __init__(self, topic: str, partition: int, commit: Callable[[int], object], *,
                 workers: int, window: int, handle: Handler, every: int,
                 interval: float) -> None:
        self.topic = topic
        self.partition = partition
        self.pool = Pool(workers, decode_json, window=window)
        self.committer = OffsetCommitter(commit, every=every, interval=interval)
        self.handled: int | None = None  # written by the results thread, after handling
        self.error: BaseException | None = None  # what stopped the results thread
        self._handle = handle
        self._thread = threading.Thread(target=self._consume, daemon=True,
                                        name=f"results-{topic}-{partition}")
        self._thread.start()

    def _consume(self) -> None:
        """The results thread: handle each message in offset order, then publish the mark."""
        try:
            for task in self.pool.results():
                self._handle(self.topic, self.partition, task)
                # Read after handling, on the thread that iterates results(): every offset at
                # or below it has now been handled.
                self.handled = self.pool.watermark
        except BaseException as exc:  # noqa: BLE001 - reported to the poll thread
            # Leaving results() early terminated the pool: enqueue now raises PoolClosed.
            self.error = exc

    def feed(self, msg: Any) -> None:
        """Poll thread: hand a message to the workers; waits while the window is full."""
        try:
            self.pool.enqueue(Task(msg.offset(), msg.value()))
        except PoolClosed:
            self._thread.join()  # the results thread stopped the pool: wait for its reason
            if self.error is not None:
                raise self.error from None
            raise

    def maybe_commit(self) -> None:
        """Poll thread: commit if enough was handled since the last commit (or time passed)."""
        if self.error is not None:
            raise self.error
        try:
            self.committer.update(self.handled)
        except Exception as exc:  # noqa: BLE001 - e.g. KafkaException: retried next time
            log.warning("%s[%d]: commit failed, will retry: %r", self.topic, self.partition,
                        exc)

    def stop(self, *, drain: bool, commit: bool) -> None:
        """Poll thread: stop the pipeline; with ``commit``, commit what was handled.

        ``drain`` handles the messages already in the pool first; otherwise they are dropped
        (they are above the last commit, so whoever reads the partition next reads them).
        """
        if drain:
            self.pool.close()
        else:
            self.pool.terminate()
        self._thread.join()
        self.pool.join()
        if commit:
            try:
                self.committer.flush(self.handled)
            except Exception as exc:  # noqa: BLE001 - the next owner re-reads from the last commit
                log.warning("%s[%d]: final commit failed: %r", self.topic, self.partition, exc)


def run(consumer: Any, topic: str, topic_partition: Callable[..., Any], *, workers: int,
        window: int = 4096, every: int = 1000, interval: float = 5.0,
        handle: Handler = print_message, stop: threading.Event | None = None,
        poll_timeout: float = 0.5) -> None:
    """Consume ``topic`` until ``stop`` is set (or a handler fails); commit on the way out.

    ``consumer`` is a ``confluent_kafka.Consumer`` made with ``consumer_config()``, and
    ``topic_partition`` is ``confluent_kafka.TopicPartition``. The caller closes the consumer.
    """
    stop = stop if stop is not None else threading.Event()
    pipelines: dict[int, PartitionPipeline] = {}

    def committer_for(partition: int) -> Callable[[int], object]:
        def commit(next_offset: int) -> None:
            # Synchronous: when it returns, the offset is stored by the group coordinator.
            consumer.commit(offsets=[topic_partition(topic, partition, next_offset)],
                            asynchronous=False)
        return commit

    def on_assign(_consumer: Any, partitions: list[Any]) -> None:
        for tp in partitions:
            if tp.partition not in pipelines:
                log.info("assigned %s[%d]", topic, tp.partition)
                pipelines[tp.partition] = PartitionPipeline(
                    topic, tp.partition, committer_for(tp.partition), workers=workers,
                    window=window, handle=handle, every=every, interval=interval)

    def on_revoke(_consumer: Any, partitions: list[Any]) -> None:
        # Runs inside poll(), before the partitions move: finish and commit what we have.
        for tp in partitions:
            pipeline = pipelines.pop(tp.partition, None)
            if pipeline is not None:
                log.info("revoked %s[%d]", topic, tp.partition)
                pipeline.stop(drain=pipeline.error is None, commit=True)

    def on_lost(_consumer: Any, partitions: list[Any]) -> None:
        # Another consumer may own them already: committing now could move its offsets.
        for tp in partitions:
            pipeline = pipelines.pop(tp.partition, None)
            if pipeline is not None:
                log.warning("lost %s[%d]", topic, tp.partition)
                pipeline.stop(drain=False, commit=False)

    consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
    failed = False
    try:
        while not stop.is_set():
            msg = consumer.poll(poll_timeout)
            if msg is not None:
                if msg.error() is not None:
                    raise RuntimeError(f"consumer error: {msg.error()}")
                pipeline = pipelines.get(msg.partition())
                if pipeline is not None:  # else: fetched just before its revocation
                    pipeline.feed(msg)
            for pipeline in list(pipelines.values()):
                pipeline.maybe_commit()
    except BaseException:
        failed = True
        raise
    finally:
        # Shutdown (or a failure): commit everything handled, so that a restart re-reads as
        # little as possible. A failed handler's message is above ``handled``: it is re-read.
        for pipeline in list(pipelines.values()):
            pipeline.stop(drain=not failed, commit=True)
        pipelines.clear()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Decode a Kafka topic's JSON in parallel, handle it in offset order, and "
                    "commit offsets at-least-once.")
    parser.add_argument("--bootstrap", default="localhost:9092",
                        help="Kafka bootstrap servers (default: %(default)s)")
    parser.add_argument("--topic", required=True, help="topic to consume")
    parser.add_argument("--group", required=True, help="consumer group id (offsets live here)")
    parser.add_argument("--workers", type=int, default=4,
                        help="decoding threads per partition (default: %(default)s)")
    parser.add_argument("--window", type=int, default=4096,
                        help="messages in flight per partition (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from confluent_kafka import Consumer, TopicPartition
    except ImportError:
        sys.exit("this example needs confluent-kafka: pip install confluent-kafka")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())  # finish the current poll, then shut down

    consumer = Consumer(consumer_config(args.bootstrap, args.group))
    try:
        run(consumer, args.topic, TopicPartition, workers=args.workers, window=args.window,
            stop=stop)
    finally:
        consumer.close()  # leaves the group; our offsets are committed already
    return 0


if __name__ == "__main__":
    sys.exit(main())
