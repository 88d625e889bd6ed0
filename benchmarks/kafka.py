"""ParallelConsumer against a plain confluent-kafka poll loop, on librdkafka's mock cluster.

    python benchmarks/kafka.py [--messages N] [--sleep-messages N] [--repeat R]

One run, one mock cluster (3 brokers on 127.0.0.1, topics of 4 partitions), every row in
the same process: records/s from the first handled record to the last (the group join is not
counted), best of ``--repeat``. Two workloads on ~200-byte JSON messages:

- decode: ``json.loads`` (orjson where installed) of each value, nothing else. With the GIL
  the decoding cannot run in parallel, so this measures the consumer's own cost per record;
  ParallelConsumer with 1 and 2 workers.
- decode + 1 ms I/O: the same plus ``time.sleep(0.001)`` per record (standing in for a
  database write); ParallelConsumer with 16 workers, ordering "partition", "key" (100 keys)
  and "unordered".

Every record is checked in both loops: seen once, offsets ascending per partition (per key
for "key"), the decoded body the one produced. The plain loop is what a careful
single-threaded consumer does: ``consume(500)``, decode and check each message, commit at
the end. Results: ``benchmarks/results/kafka-*.txt``.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # measure this checkout, as compare.py does

import confluent_kafka  # noqa: E402
from confluent_kafka import Consumer  # noqa: E402

import orderedtask  # noqa: E402
from orderedtask._core import gil_enabled  # noqa: E402
from orderedtask._decode import pick_decoder  # noqa: E402
from orderedtask._cli._demo import make_messages  # noqa: E402
from orderedtask.kafka import ParallelConsumer, Record  # noqa: E402
from orderedtask.kafka._demo import MockKafka  # noqa: E402

DECODER, loads = pick_decoder("auto")
_groups = iter(range(10**9))


class Check:
    """Counts records and checks them: once each, ascending per stream, body as produced."""

    def __init__(self, placed: dict[tuple[int, int], int], expected: list[int],
                 mode: str = "partition") -> None:
        self.placed, self.expected, self.mode = placed, expected, mode
        self.last: dict[Any, int] = {}
        self.seen: set[tuple[int, int]] = set()
        self.count = 0
        self.failure: str | None = None
        self.first_at: float | None = None
        self.last_at = 0.0
        self.lock = threading.Lock()

    def __call__(self, partition: int, offset: int, key: Any, doc: Any) -> None:
        stream = (partition, key) if self.mode == "key" else partition
        with self.lock:
            now = time.perf_counter()
            if self.first_at is None:
                self.first_at = now
            self.last_at = now
            self.count += 1
            index = self.placed.get((partition, offset))
            if self.mode == "unordered":
                in_order = (partition, offset) not in self.seen
                self.seen.add((partition, offset))
            else:
                in_order = offset > self.last.get(stream, -1)
                self.last[stream] = offset
            if not in_order or index is None or doc["offset"] != self.expected[index]:
                self.failure = self.failure or f"{stream}@{offset}"

    def rate(self) -> float:
        return self.count / max(1e-9, self.last_at - (self.first_at or self.last_at))


def config(kafka: MockKafka) -> dict[str, Any]:
    return {"bootstrap.servers": kafka.bootstrap, "group.id": f"bench-{next(_groups)}",
            "auto.offset.reset": "earliest", "group.protocol": "consumer", "log_level": 3}


def produce(kafka: MockKafka, topic: str, count: int, keyed: bool
            ) -> tuple[dict[tuple[int, int], int], list[int]]:
    stream = make_messages(count, seed=11)
    expected = [offset for offset, _ in stream]
    bodies = [body for _, body in stream]
    if not keyed:
        return kafka.produce(topic, bodies, 100), expected
    # Keyed: 100 keys, so the producer's partitioner spreads them over the 4 partitions.
    producer = confluent_kafka.Producer({"bootstrap.servers": kafka.bootstrap, "log_level": 0,
                                         "linger.ms": 5})
    placed: dict[tuple[int, int], int] = {}

    def report(index: int) -> Any:
        return lambda error, msg: placed.__setitem__((msg.partition(), msg.offset()), index)

    for index, body in enumerate(bodies):
        while True:
            try:
                producer.produce(topic, body, key=f"key-{index % 100}".encode(),
                                 on_delivery=report(index))
                break
            except BufferError:
                producer.poll(0.01)
    assert producer.flush(30) == 0 and len(placed) == count
    return placed, expected


def plain_loop(kafka: MockKafka, topic: str, check: Check, total: int, sleep: float) -> None:
    consumer = Consumer(dict(config(kafka), **{"enable.auto.commit": False}))
    consumer.subscribe([topic])
    deadline = time.monotonic() + 600
    try:
        while check.count < total and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.1):
                if message.error() is None:
                    doc = loads(message.value())
                    if sleep:
                        time.sleep(sleep)
                    check(message.partition(), message.offset(), message.key(), doc)
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()


def parallel(kafka: MockKafka, topic: str, check: Check, total: int, sleep: float,
             workers: int, ordering: str) -> None:
    if sleep:
        def fn(record: Record) -> Any:
            doc = loads(record.value)
            time.sleep(sleep)
            return doc
    else:
        def fn(record: Record) -> Any:
            return loads(record.value)

    def handle(record: Record, doc: Any) -> None:
        check(record.partition, record.offset, record.key, doc)

    consumer = ParallelConsumer(config(kafka), topic, fn, handle, ordering=ordering,
                                workers=workers)
    runner = threading.Thread(target=consumer.run)
    runner.start()
    deadline = time.monotonic() + 600
    while check.count < total and time.monotonic() < deadline and check.failure is None:
        time.sleep(0.01)
    consumer.stop()
    runner.join()


def best(repeat: int, run: Any, placed: dict, expected: list[int], total: int,
         mode: str = "partition") -> float:
    rates = []
    for _ in range(repeat):
        check = Check(placed, expected, mode)
        run(check)
        if check.failure is not None or check.count != total:
            raise SystemExit(f"CHECK FAILED: {check.failure or (check.count, total)}")
        rates.append(check.rate())
    return max(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50_000,
                        help="decode workload (the mock keeps ~5 MB per partition: <= 60,000)")
    parser.add_argument("--sleep-messages", type=int, default=20_000,
                        help="decode + 1 ms workload, ParallelConsumer rows")
    parser.add_argument("--plain-sleep-messages", type=int, default=3_000,
                        help="decode + 1 ms workload, plain loop (1 ms each: keep it small)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gc-threshold", type=int, default=None, metavar="N",
                        help="first cyclic-GC threshold for the whole run (default: "
                             "CPython's; README, Performance: a pipeline keeps records alive "
                             "long enough to trigger collections a plain loop never does)")
    args = parser.parse_args(argv)
    if args.gc_threshold is not None:
        gc.set_threshold(args.gc_threshold, *gc.get_threshold()[1:])
    print(f"benchmarks/kafka.py: {platform.platform()}, python {sys.version.split()[0]} "
          f"(GIL {'on' if gil_enabled() else 'off'}), {os.cpu_count()} CPUs, "
          f"confluent-kafka {confluent_kafka.__version__} / librdkafka "
          f"{confluent_kafka.libversion()[0]}, decoder {DECODER}, core "
          f"{orderedtask.IMPLEMENTATION}, gc threshold {gc.get_threshold()[0]}, "
          f"{time.strftime('%Y-%m-%d')}")
    kafka = MockKafka()
    rows: list[tuple[str, str, float, float]] = []

    topic = f"bench-decode-{os.getpid()}"
    placed, expected = produce(kafka, topic, args.messages, keyed=False)
    total = args.messages
    base = best(args.repeat, lambda c: plain_loop(kafka, topic, c, total, 0.0), placed,
                expected, total)
    rows.append(("decode", "plain poll loop", base, base))
    for workers in (1, 2):
        rate = best(args.repeat, lambda c: parallel(kafka, topic, c, total, 0.0, workers,
                                                    "partition"), placed, expected, total)
        rows.append(("decode", f"ParallelConsumer partition, {workers} worker"
                     f"{'s' if workers > 1 else ''}", rate, base))

    topic = f"bench-sleep-{os.getpid()}"
    placed, expected = produce(kafka, topic, args.sleep_messages, keyed=True)
    small = args.plain_sleep_messages
    # The plain loop reads the first ``small`` records (in consume order) of the same topic.
    base = best(1, lambda c: plain_loop(kafka, topic, c, small, 0.001), placed, expected,
                small, mode="key")
    rows.append(("decode + 1 ms", "plain poll loop", base, base))
    total = args.sleep_messages
    for ordering in ("partition", "key", "unordered"):
        rate = best(args.repeat, lambda c, o=ordering: parallel(kafka, topic, c, total, 0.001,
                                                               16, o),
                    placed, expected, total, mode=ordering)
        rows.append(("decode + 1 ms", f"ParallelConsumer {ordering}, 16 workers", rate, base))

    print("\n| workload | consumer | records/s | vs plain loop |\n|---|---|---|---|")
    for workload, label, rate, baseline in rows:
        print(f"| {workload} | {label} | {rate:,.0f} | {rate / baseline:.2f}x |")
    print("\nevery record checked: once each, in offset order per partition (per key for key "
          "ordering), body as produced")
    return 0


if __name__ == "__main__":
    sys.exit(main())
