"""Helpers for the Kafka tests: librdkafka's mock cluster, producing, running consumers.

The mock cluster speaks the real Kafka protocol on 127.0.0.1 (it ships inside
confluent-kafka's wheels). Known differences from a real broker: no commit-metadata size limit,
commits refused during an eager rebalance, a partition keeps about 5 MB (older records are
dropped), and a consumer joining a running classic group waits ``session.timeout.ms`` minus a
second.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

try:
    import confluent_kafka
except ImportError:  # no wheel for this interpreter (3.13t, 3.15): the Kafka tests skip
    confluent_kafka = None

NEEDS_KAFKA = pytest.mark.skipif(
    confluent_kafka is None,
    reason="confluent-kafka is not installed (it has no wheel for this interpreter, e.g. "
           "3.13t or 3.15): pip install 'orderedtask[kafka]'")

import orderedtask

TESTS = Path(__file__).resolve().parent
# The directory holding the package the tests imported (an installed one, or this checkout).
PACKAGE_PARENT = Path(orderedtask.__file__).resolve().parent.parent
_names = itertools.count()


def unique(prefix: str) -> str:
    """A topic or group name no other test uses (the mock cluster lives for the session)."""
    return f"{prefix}-{os.getpid()}-{next(_names)}"


class MockCluster:
    """A 3-broker mock cluster, alive as long as the client that created it."""

    def __init__(self) -> None:
        assert confluent_kafka is not None
        self._owner = confluent_kafka.Producer({"test.mock.num.brokers": 3, "log_level": 0})
        brokers = self._owner.list_topics(timeout=10).brokers.values()
        self.bootstrap = ",".join(f"{b.host}:{b.port}" for b in brokers)

    def config(self, group: str, **extra: Any) -> dict[str, Any]:
        """Consumer settings for a test: the KIP-848 protocol (fast joins) unless overridden."""
        settings = {"bootstrap.servers": self.bootstrap, "group.id": group,
                    "auto.offset.reset": "earliest", "group.protocol": "consumer",
                    "log_level": 3}
        settings.update(extra)
        if settings.get("group.protocol") == "classic":
            settings.setdefault("session.timeout.ms", 6000)
            settings.setdefault("heartbeat.interval.ms", 500)
        return settings

    def produce(self, topic: str, values: Iterable[bytes], keys: Iterable[bytes | None] | None
                = None, *, transaction_size: int = 0, partition: int | None = None
                ) -> list[tuple[int, int, bytes | None, bytes]]:
        """Produce and wait; ``(partition, offset, key, value)`` of each record as stored.

        ``transaction_size`` > 0: one transaction per that many records, so each leaves a
        commit marker behind it (an offset no consumer ever receives).
        """
        assert confluent_kafka is not None
        settings: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "linger.ms": 5,
                                    "log_level": 0}
        if transaction_size:
            settings["transactional.id"] = unique("tx")
        producer = confluent_kafka.Producer(settings)
        delivered: list[tuple[int, int, bytes | None, bytes]] = []
        failures: list[Any] = []

        def report(error: Any, message: Any) -> None:
            if error is not None:
                failures.append(error)
            else:
                delivered.append((message.partition(), message.offset(), message.key(),
                                  message.value()))

        values = list(values)
        key_list = list(keys) if keys is not None else [None] * len(values)
        if transaction_size:
            producer.init_transactions(10)
        extra = {} if partition is None else {"partition": partition}
        for start in range(0, len(values), transaction_size or len(values) or 1):
            end = start + (transaction_size or len(values))
            if transaction_size:
                producer.begin_transaction()
            for value, key in zip(values[start:end], key_list[start:end]):
                while True:
                    try:
                        producer.produce(topic, value=value, key=key, on_delivery=report,
                                         **extra)
                        break
                    except BufferError:
                        producer.poll(0.01)
                producer.poll(0)
            if transaction_size:
                producer.commit_transaction(10)
        assert producer.flush(30) == 0
        assert not failures, failures
        delivered.sort()
        return delivered

    def end_offsets(self, topic: str) -> dict[int, int]:
        """Each partition's high watermark (the next offset to be written)."""
        assert confluent_kafka is not None
        probe = confluent_kafka.Consumer({"bootstrap.servers": self.bootstrap,
                                          "group.id": unique("probe"), "log_level": 0})
        try:
            partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
            return {p: probe.get_watermark_offsets(confluent_kafka.TopicPartition(topic, p),
                                                   timeout=10)[1] for p in partitions}
        finally:
            probe.close()

    def committed(self, group: str, topic: str) -> dict[int, tuple[int, str | None]]:
        """The group's committed ``(offset, metadata)`` per partition (read, not joined)."""
        assert confluent_kafka is not None
        probe = confluent_kafka.Consumer({"bootstrap.servers": self.bootstrap,
                                          "group.id": group, "log_level": 0})
        try:
            partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
            tps = [confluent_kafka.TopicPartition(topic, p) for p in sorted(partitions)]
            return {tp.partition: (tp.offset, tp.metadata)
                    for tp in probe.committed(tps, timeout=10)}
        finally:
            probe.close()


def json_values(count: int, **fields: Any) -> list[bytes]:
    return [json.dumps({"n": n, **fields}).encode() for n in range(count)]


class Running:
    """``consumer.run()`` on a thread; ``stop()`` joins it and re-raises its error."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-run", daemon=True)
        self.thread.start()

    def where(self) -> str:
        """The stack of the thread that runs ``run()``: where it hangs, when it does."""
        frame = sys._current_frames().get(self.thread.ident or -1)
        return "".join(traceback.format_stack(frame)) if frame is not None else "(gone)"

    def _run(self) -> None:
        try:
            self.consumer.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def stop(self, timeout: float = 30.0) -> None:
        self.consumer.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"run() did not return after stop():\n{self.where()}"
        if self.error is not None:
            raise self.error

    def wait_error(self, timeout: float = 30.0) -> BaseException | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"run() did not return:\n{self.where()}"
        return self.error


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
             interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def run_script(code: str, *args: str, **popen: Any) -> subprocess.Popen:
    """Start ``python -c code args...`` with this checkout importable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(PACKAGE_PARENT), str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, **popen)
