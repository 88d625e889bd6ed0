"""``orderedtask demo``, Kafka part: the real thing end to end, on librdkafka's mock cluster.

Starts a 3-broker mock cluster (it speaks the Kafka protocol on 127.0.0.1 and ships in
confluent-kafka's wheels), produces JSON messages in transactions (each leaves a commit marker:
offsets with gaps), consumes them through ``ParallelConsumer`` in a consumer group, checks the
order and the commits, and compares records/s with a plain consumer loop doing the same work.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, cast

from confluent_kafka import Consumer, Producer, TopicPartition

from .._core import gil_enabled
from .._decode import pick_decoder
from ._consumer import ParallelConsumer
from ._record import Record

PARTITIONS = 4  # what the mock cluster gives a topic it creates on first use
TRANSACTION = 100  # records per transaction: a marker offset after each
# The mock cluster keeps about 5 MB per partition (~20,000 of these messages) and drops older
# records beyond it.
MAX_MESSAGES = 60_000


class MockKafka:
    """A mock cluster and its bootstrap servers; alive as long as this object."""

    def __init__(self) -> None:
        self._owner = Producer({"test.mock.num.brokers": 3, "log_level": 0})
        brokers = self._owner.list_topics(timeout=10).brokers.values()
        self.bootstrap = ",".join(f"{b.host}:{b.port}" for b in brokers)

    def produce(self, topic: str, bodies: list[bytes], transaction: int
                ) -> dict[tuple[int, int], int]:
        """Produce ``bodies`` (in transactions; the mock creates the topic with 4 partitions
        and the producer spreads the batches over them); return
        ``{(partition, offset): index into bodies}``."""
        producer = Producer({"bootstrap.servers": self.bootstrap, "log_level": 0,
                             "transactional.id": f"demo-{os.getpid()}", "linger.ms": 5})
        producer.init_transactions(10)
        placed: dict[tuple[int, int], int] = {}
        failed: list[Any] = []

        def report(index: int) -> Any:
            def delivered(error: Any, message: Any) -> None:
                if error is not None:
                    failed.append(error)
                else:
                    placed[(message.partition(), message.offset())] = index
            return delivered

        for start in range(0, len(bodies), transaction):
            producer.begin_transaction()
            for index in range(start, min(start + transaction, len(bodies))):
                while True:
                    try:
                        producer.produce(topic, bodies[index], on_delivery=report(index))
                        break
                    except BufferError:
                        producer.poll(0.01)
            producer.commit_transaction(30)
        if producer.flush(30) or failed:
            raise RuntimeError(f"producing failed: {failed[:3]}")
        return placed

    def end_offsets(self, topic: str) -> dict[int, int]:
        probe = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "demo-probe",
                          "log_level": 0})
        try:
            partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
            return {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    for p in partitions}
        finally:
            probe.close()

    def committed(self, group: str, topic: str) -> dict[int, int]:
        probe = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group,
                          "log_level": 0})
        try:
            partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
            return {tp.partition: tp.offset for tp in probe.committed(
                [TopicPartition(topic, p) for p in partitions], timeout=10)}
        finally:
            probe.close()


def _at_end(committed: Mapping[int, int | None], end: Mapping[int, int]) -> bool:
    """Every partition committed at its end offset (an empty one has nothing to commit)."""
    return all(committed.get(p) == offset or (offset == 0 and (committed.get(p) or -1) < 0)
               for p, offset in end.items())


def _config(kafka: MockKafka, group: str) -> dict[str, Any]:
    return {"bootstrap.servers": kafka.bootstrap, "group.id": group, "log_level": 3,
            "auto.offset.reset": "earliest", "group.protocol": "consumer"}


class _Check:
    """Per partition: offsets ascending, each record once, the body the one produced there."""

    def __init__(self, placed: dict[tuple[int, int], int], expected: list[int]) -> None:
        self.placed = placed
        self.expected = expected  # the "offset" field of each body
        self.last: dict[int, int] = {}
        self.count = 0
        self.failure: str | None = None
        self.first_at: float | None = None
        self.last_at = 0.0
        self.lock = threading.Lock()

    def __call__(self, partition: int, offset: int, doc: Any) -> None:
        with self.lock:
            now = time.perf_counter()
            if self.first_at is None:
                self.first_at = now
            self.last_at = now
            self.count += 1
            previous = self.last.get(partition, -1)
            index = self.placed.get((partition, offset))
            if offset <= previous or index is None or doc["offset"] != self.expected[index]:
                self.failure = self.failure or f"partition {partition} offset {offset}"
            self.last[partition] = offset

    def seconds(self) -> float:
        return max(1e-9, self.last_at - (self.first_at or self.last_at))


def _plain_loop(kafka: MockKafka, topic: str, group: str, loads: Any, check: _Check,
                total: int) -> None:
    """The baseline: one thread, consume a batch, decode each message, commit at the end."""
    consumer = Consumer(dict(_config(kafka, group), **{"enable.auto.commit": False}))
    consumer.subscribe([topic])
    deadline = time.monotonic() + 120
    try:
        while check.count < total and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.1):
                if message.error() is None:
                    check(cast(int, message.partition()), cast(int, message.offset()),
                          loads(cast(bytes, message.value())))
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()


def run_demo(messages: int, workers: int | None) -> int:
    """Mock cluster, produce, plain loop vs ParallelConsumer; print a table; 0 if all checks
    passed."""
    from .._cli._demo import make_messages  # the main demo's stream of ~200 B JSON messages

    count = min(messages, MAX_MESSAGES)
    workers = workers or 2
    name, loads = pick_decoder("auto")
    stream = make_messages(count)
    expected = [offset for offset, _ in stream]
    bodies = [body for _, body in stream]
    del stream
    kafka = MockKafka()
    topic = f"demo-{os.getpid()}"
    started = time.perf_counter()
    placed = kafka.produce(topic, bodies, TRANSACTION)
    produce_s = time.perf_counter() - started
    end = kafka.end_offsets(topic)
    gaps = sum(end.values()) - count
    print(f"\norderedtask demo, Kafka: {count:,} JSON messages through librdkafka's mock "
          f"cluster (3 brokers, {PARTITIONS} partitions)"
          + (f", capped from {messages:,}" if count < messages else ""))
    print(f"  produced in transactions of {TRANSACTION} in {produce_s:.1f} s: {gaps:,} offsets "
          f"are commit markers (gaps); decoder {name}, {workers} workers")

    rows = []
    plain = _Check(placed, expected)
    _plain_loop(kafka, topic, "demo-plain", loads, plain, count)
    rows.append(("plain consumer loop (consume + decode)", plain))

    group = "demo-parallel"
    check = _Check(placed, expected)

    def decode(record: Record) -> Any:
        return loads(cast(bytes, record.value))

    def handle(record: Record, doc: Any) -> None:
        check(record.partition, record.offset, doc)

    consumer = ParallelConsumer(_config(kafka, group), topic, decode, handle,
                                workers=workers, commit_interval=0.5)
    runner = threading.Thread(target=consumer.run, name="demo-consumer")
    runner.start()
    deadline = time.monotonic() + 120
    committed_at_end = False
    while time.monotonic() < deadline and check.failure is None:
        if check.count >= count:
            committed = {p["partition"]: p["committed"] for p in consumer.stats()["partitions"]}
            if _at_end(committed, end):  # commits reach the end, past the trailing markers
                committed_at_end = True
                break
        time.sleep(0.05)
    consumer.stop()
    runner.join(60)
    rows.append((f"ParallelConsumer (ordering=partition, {workers} workers)", check))
    group_commit = kafka.committed(group, topic)

    base = plain.seconds()
    print(f"  {'':44} {'records/s':>12} {'vs loop':>8}")
    for label, result in rows:
        print(f"  {label:44} {result.count / result.seconds():12,.0f} "
              f"{base / result.seconds():7.2f}x")
    ok = True
    for label, result in rows:
        if result.failure is not None or result.count != count:
            print(f"  ORDER CHECK FAILED ({label}): {result.failure or result.count}")
            ok = False
    if ok:
        print("  order check: every record handled once, in offset order per partition, "
              "decoded body matching")
    if committed_at_end and _at_end(group_commit, end):
        print("  commit check: the group's committed offsets are the partitions' end offsets "
              "(past the trailing markers)")
    else:
        print(f"  COMMIT CHECK FAILED: committed {group_commit}, end offsets {end}")
        ok = False
    if gil_enabled():
        print("  note: with the GIL, json decoding holds it: ParallelConsumer buys order, "
              "backpressure and safe commits here;\n  its speed-up is on work that waits "
              "(I/O, sleeps): python benchmarks/kafka.py")
    sys.stdout.flush()
    return 0 if ok else 1
