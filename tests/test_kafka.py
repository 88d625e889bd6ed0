"""ParallelConsumer against librdkafka's mock Kafka cluster (the real protocol, on loopback)."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed (no wheel for "
                    "this interpreter, e.g. 3.13t or 3.15): pip install 'orderedtask[kafka]'")

from kafka_support import (  # noqa: E402
    PACKAGE_PARENT, MockCluster, Running, json_values, run_script, unique, wait_for)
from orderedtask.kafka import ParallelConsumer, Record  # noqa: E402
from orderedtask.kafka._metadata import decode as decode_metadata  # noqa: E402

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def cluster() -> MockCluster:
    return MockCluster()


class Ledger:
    """What handle (and on_error) saw, in the order it saw it, per partition and per key."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_partition: dict[int, list[int]] = defaultdict(list)
        self.by_key: dict[tuple[int, bytes | None], list[int]] = defaultdict(list)
        self.all: list[tuple[int, int]] = []
        self.errors: list[tuple[int, int, Exception]] = []

    def handle(self, record: Record, output: Any) -> None:
        with self.lock:
            self._add(record)

    def on_error(self, record: Record, exc: Exception) -> None:
        with self.lock:
            self.errors.append((record.partition, record.offset, exc))
            self._add(record)

    def _add(self, record: Record) -> None:
        self.by_partition[record.partition].append(record.offset)
        self.by_key[(record.partition, record.key)].append(record.offset)
        self.all.append((record.partition, record.offset))

    def count(self) -> int:
        return len(self.all)


def by_partition(delivered: list[tuple[int, int, Any, Any]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = defaultdict(list)
    for partition, offset, _, _ in delivered:
        out[partition].append(offset)
    return dict(out)


def decode_value(record: Record) -> Any:
    return json.loads(record.value)


def committed_reaches(cluster: MockCluster, group: str, topic: str,
                      target: dict[int, int]) -> bool:
    got = cluster.committed(group, topic)
    # An empty partition has nothing to commit.
    return all(got[p][0] == offset or (offset == 0 and got[p][0] < 0)
               for p, offset in target.items())


# -- configuration and import ------------------------------------------------------------
@pytest.mark.parametrize("override, match", [
    ({"enable.auto.commit": True}, "enable.auto.commit"),
    ({"enable.auto.commit": "true"}, "enable.auto.commit"),
    ({"group.id": ""}, "group.id"),
    ({"on_commit": print}, "on_commit"),
])
def test_settings_that_break_the_guarantees_are_refused(override: dict, match: str) -> None:
    config = {"bootstrap.servers": "127.0.0.1:1", "group.id": "g", **override}
    with pytest.raises(ValueError, match=match):
        ParallelConsumer(config, "t", decode_value)


@pytest.mark.parametrize("kwargs, error", [
    ({"ordering": "offset"}, ValueError), ({"workers": 0}, ValueError),
    ({"window": 0}, ValueError), ({"commit_every": 0}, ValueError),
    ({"commit_interval": 0}, ValueError), ({"retries": -1}, ValueError),
    ({"retry_backoff": -1}, ValueError), ({"workers": 1.5}, TypeError),
    ({"handle": 3}, TypeError), ({"on_error": "x"}, TypeError), ({"backend": "gpu"}, ValueError),
])
def test_bad_arguments(kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        ParallelConsumer({"group.id": "g"}, "t", decode_value, **kwargs)


def test_importing_orderedtask_does_not_import_confluent_kafka_and_the_extra_is_named() -> None:
    code = ("import sys, orderedtask; assert 'confluent_kafka' not in sys.modules; "
            "sys.modules['confluent_kafka'] = None\n"
            "try:\n    import orderedtask.kafka\nexcept ImportError as exc:\n    print(exc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=PACKAGE_PARENT, check=False)
    assert done.returncode == 0, done.stderr
    assert "pip install 'orderedtask[kafka]'" in done.stdout


# -- order, gaps, errors -----------------------------------------------------------------
def test_partition_order_with_marker_gaps_and_poison_records(cluster: MockCluster) -> None:
    topic, group = unique("order"), unique("g")
    values = json_values(1200)
    for n in range(0, 1200, 97):
        values[n] = b"not json"
    delivered = cluster.produce(topic, values, [str(n % 5).encode() for n in range(1200)],
                                transaction_size=40)
    end = cluster.end_offsets(topic)
    expected = by_partition(delivered)
    assert any(offsets[-1] + 1 < end[p] for p, offsets in expected.items()), "no gaps"
    ledger = Ledger()
    attempts: Counter = Counter()

    def fn(record: Record) -> Any:
        attempts[(record.partition, record.offset)] += 1
        return json.loads(record.value)

    consumer = ParallelConsumer(cluster.config(group), topic, fn, ledger.handle, workers=4,
                                retries=1, on_error=ledger.on_error, commit_interval=0.2)
    running = Running(consumer)
    wait_for(lambda: ledger.count() >= len(delivered), what="every record handled")
    # With everything handled the commit reaches each partition's end, past the trailing
    # transaction marker, without waiting for stop().
    wait_for(lambda: committed_reaches(cluster, group, topic, end), what="commit at the end")
    stats = consumer.stats()
    running.stop()
    assert dict(ledger.by_partition) == expected  # each once, in offset order
    assert len(ledger.errors) == len(range(0, 1200, 97))
    assert all(isinstance(exc, ValueError) for _, _, exc in ledger.errors)
    assert all(attempts[(p, o)] == 2 for p, o, _ in ledger.errors)  # retried once
    assert stats["handled"] == len(delivered) and stats["in_flight"] == 0
    assert {p["partition"]: p["committed"] or 0 for p in stats["partitions"]} == end
    assert committed_reaches(cluster, group, topic, end)


def test_key_order_and_keys_in_parallel(cluster: MockCluster) -> None:
    topic, group = unique("keys"), unique("g")
    keys = [f"k{n % 12}".encode() for n in range(1500)]
    delivered = cluster.produce(topic, json_values(1500), keys, transaction_size=100)
    ledger = Ledger()
    lock = threading.Lock()
    running_keys: Counter = Counter()
    peak = [0, 0]  # most fn calls of one key at once, of all keys at once

    def fn(record: Record) -> Any:
        with lock:
            running_keys[(record.partition, record.key)] += 1
            peak[0] = max(peak[0], running_keys[(record.partition, record.key)])
            peak[1] = max(peak[1], sum(running_keys.values()))
        time.sleep(0.001)
        with lock:
            running_keys[(record.partition, record.key)] -= 1
        return None

    consumer = ParallelConsumer(cluster.config(group), topic, fn, ledger.handle,
                                ordering="key", workers=8, commit_interval=0.2)
    running = Running(consumer)
    wait_for(lambda: ledger.count() >= len(delivered), what="every record handled")
    end = cluster.end_offsets(topic)
    wait_for(lambda: committed_reaches(cluster, group, topic, end), what="commit at the end")
    running.stop()
    assert peak[0] == 1 and peak[1] > 1
    expected: dict[tuple[int, bytes | None], list[int]] = defaultdict(list)
    for partition, offset, key, _ in delivered:
        expected[(partition, key)].append(offset)
    assert dict(ledger.by_key) == dict(expected)


def test_unordered_commits_handled_records_above_a_stuck_one_in_the_metadata(
        cluster: MockCluster) -> None:
    topic, group = unique("meta"), unique("g")
    delivered = cluster.produce(topic, json_values(400), partition=0)
    stuck_offset = delivered[10][1]
    release = threading.Event()
    ledger = Ledger()

    def fn(record: Record) -> None:
        if record.offset == stuck_offset:
            release.wait(30)

    consumer = ParallelConsumer(cluster.config(group), topic, fn, ledger.handle,
                                ordering="unordered", workers=4, commit_interval=0.1)
    running = Running(consumer)
    # The stuck record holds back the rest of its chunk (at most MAX_CHUNK records) only.
    wait_for(lambda: ledger.count() >= len(delivered) - 64, what="all but one chunk handled")
    time.sleep(0.2)
    with ledger.lock:
        handled = {o for _, o in ledger.all}
    assert stuck_offset not in handled

    def metadata_complete() -> bool:
        offset, metadata = cluster.committed(group, topic)[0]
        skip = {o for a, b in decode_metadata(metadata, offset) for o in range(a, b + 1)}
        return offset == stuck_offset and {o for o in handled if o > offset} <= skip

    wait_for(metadata_complete, what="a commit of the stuck offset with the rest in metadata")
    release.set()
    end = cluster.end_offsets(topic)
    wait_for(lambda: committed_reaches(cluster, group, topic, end), what="commit at the end")
    running.stop()
    assert sorted(ledger.all) == [(0, o) for _, o, _, _ in delivered]
    assert cluster.committed(group, topic)[0] == (end[0], "")


def test_on_error_none_stops_with_the_commit_just_below_the_failing_record(
        cluster: MockCluster) -> None:
    topic, group = unique("fatal"), unique("g")
    values = json_values(300)
    values[150] = b"poison"
    delivered = cluster.produce(topic, values, partition=1)
    poison_offset = delivered[150][1]
    ledger = Ledger()
    consumer = ParallelConsumer(cluster.config(group), topic, decode_value, ledger.handle,
                                workers=4, retries=2)
    error = Running(consumer).wait_error(timeout=30)
    assert isinstance(error, json.JSONDecodeError)
    assert ledger.by_partition[1] == [o for _, o, _, _ in delivered[:150]]
    assert cluster.committed(group, topic)[1][0] == poison_offset


def test_a_handle_that_raises_is_retried_then_stops_the_consumer(cluster: MockCluster) -> None:
    topic, group = unique("handle"), unique("g")
    delivered = cluster.produce(topic, json_values(50), partition=2)
    calls: Counter = Counter()

    def handle(record: Record, output: Any) -> None:
        calls[record.offset] += 1
        if record.offset == delivered[20][1]:
            raise KeyError("downstream refused")

    consumer = ParallelConsumer(cluster.config(group), topic, decode_value, handle,
                                workers=2, retries=2)
    error = Running(consumer).wait_error(timeout=30)
    assert isinstance(error, KeyError)
    assert calls[delivered[20][1]] == 3
    assert cluster.committed(group, topic)[2][0] == delivered[20][1]


# -- restarts, group changes, crashes ----------------------------------------------------
def test_a_clean_restart_handles_nothing_twice(cluster: MockCluster) -> None:
    topic, group = unique("restart"), unique("g")
    first_batch = cluster.produce(topic, json_values(500), transaction_size=50)
    ledger = Ledger()
    consumer = ParallelConsumer(cluster.config(group), topic, decode_value, ledger.handle,
                                workers=4)
    running = Running(consumer)
    wait_for(lambda: ledger.count() >= len(first_batch), what="the first batch")
    running.stop()
    second_batch = cluster.produce(topic, json_values(300, batch=2), transaction_size=50)
    again = Ledger()
    with ParallelConsumer(cluster.config(group), topic, decode_value, again.handle,
                          workers=4) as consumer:
        running = Running(consumer)
        wait_for(lambda: again.count() >= len(second_batch), what="the second batch")
        time.sleep(0.3)  # anything re-read would arrive by now
        running.stop()
    assert sorted(again.all) == sorted((p, o) for p, o, _, _ in second_batch)
    assert Counter(ledger.all + again.all).most_common(1)[0][1] == 1


@pytest.mark.parametrize("protocol", ["cooperative-sticky", "consumer", "range"])
def test_a_consumer_joining_mid_stream_loses_nothing_and_handles_nothing_twice(
        cluster: MockCluster, protocol: str, caplog: pytest.LogCaptureFixture) -> None:
    """"range" is an eager protocol: every partition is revoked. The mock cluster refuses
    commits during an eager rebalance (a real broker accepts them), so there the records
    handled since the last periodic commit may be handled again; nothing may be lost. With
    "cooperative-sticky" it sometimes refuses the commit on revoke too (REBALANCE_IN_PROGRESS
    while the joining member waits out its join): then only the revoked partitions' records
    since the last accepted commit may come twice, and the log says so."""
    caplog.set_level(logging.WARNING, logger="orderedtask.kafka")
    topic, group = unique("join"), unique("g")
    extra = ({"group.protocol": "classic", "partition.assignment.strategy": protocol}
             if protocol != "consumer" else {})
    cluster.produce(topic, json_values(40))  # the topic exists before anyone subscribes
    produced: list[tuple[int, int, Any, Any]] = []
    stop_producing = threading.Event()

    def produce() -> None:
        batch = 0
        while not stop_producing.is_set():
            produced.extend(cluster.produce(topic, json_values(100, batch=batch)))
            batch += 1
            time.sleep(0.05)

    ledger = Ledger()

    def slow(record: Record) -> Any:
        time.sleep(0.0005)
        return json.loads(record.value)

    first = ParallelConsumer(cluster.config(group, **extra), topic, slow, ledger.handle,
                             workers=4, commit_interval=0.5)
    second = ParallelConsumer(cluster.config(group, **extra), topic, slow, ledger.handle,
                              workers=4, commit_interval=0.5)
    producer = threading.Thread(target=produce, daemon=True)
    running_first = Running(first)
    wait_for(lambda: ledger.count() > 0, what="the first consumer under way")
    producer.start()
    running_second = Running(second)
    wait_for(lambda: second.stats()["partitions"] and first.stats()["partitions"]
             and second.stats()["handled"] > 0, timeout=40, what="the partitions shared")
    stop_producing.set()
    producer.join(30)
    total = 40 + len(produced)
    wait_for(lambda: len(set(ledger.all)) >= total, what="every record handled")
    time.sleep(0.3)
    running_second.stop()
    running_first.stop()
    counts = Counter(ledger.all)
    assert len(counts) == total, "a record was lost"
    refused = [record.getMessage() for record in caplog.records
               if "failed (try" in record.getMessage()
               and "REBALANCE_IN_PROGRESS" in record.getMessage()]
    if protocol != "range" and not refused:
        assert counts.most_common(1)[0][1] == 1, f"handled twice: {counts.most_common(3)}"
        for offsets in ledger.by_partition.values():
            assert offsets == sorted(offsets)
    elif protocol != "range":  # the revoke commit was refused: its partitions may repeat
        twice = {partition for (partition, _), count in counts.items() if count > 1}
        named = {int(part.split("[")[1].split("]")[0]) for message in refused
                 for part in message.split("'") if "[" in part and "]@" in part}
        assert twice <= named, (twice, refused)


KILLED_CONSUMER = r"""
import json, sys, time
from orderedtask.kafka import ParallelConsumer
bootstrap, topic, group, ordering, stuck_partition, stuck_offset, out = sys.argv[1:]
log = open(out, "a", buffering=1)

def fn(record):
    if (record.partition, record.offset) == (int(stuck_partition), int(stuck_offset)):
        time.sleep(3600)  # never finishes: the commit stays below it
    return json.loads(record.value)

def handle(record, output):
    log.write(f"{record.partition} {record.offset}\n")

config = {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
          "group.protocol": "classic", "partition.assignment.strategy": "cooperative-sticky",
          "session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
ParallelConsumer(config, topic, fn, handle, ordering=ordering, workers=4,
                 commit_interval=0.1).run()
"""


@pytest.mark.parametrize("ordering", ["partition", "key"])
def test_after_sigkill_the_next_consumer_handles_only_what_was_not_committed(
        cluster: MockCluster, ordering: str, tmp_path: Path) -> None:
    topic, group = unique("kill"), unique("g")
    keys = [f"k{n % 9}".encode() for n in range(900)]
    delivered = cluster.produce(topic, json_values(900), keys, transaction_size=30)
    # The first record of key k4 never finishes: with "key" the rest of k4 waits behind it,
    # with "partition" the rest of its partition does.
    stuck_partition, stuck_offset = min((p, o) for p, o, k, _ in delivered if k == b"k4")
    out = tmp_path / "handled.txt"
    out.touch()
    process = run_script(KILLED_CONSUMER, cluster.bootstrap, topic, group, ordering,
                         str(stuck_partition), str(stuck_offset), str(out),
                         stderr=subprocess.DEVNULL)
    def handled_first() -> list[tuple[int, int]]:
        return [tuple(map(int, line.split())) for line in out.read_text().splitlines()]

    try:
        stuck = [(p, o) for p, o, k, _ in delivered if k == b"k4" and p == stuck_partition]
        # Until it cannot go on: the stuck key's records (and, with "partition", the rest of
        # its partition from the stuck record's chunk on) are all that is left.
        seen = [-1, time.monotonic()]

        def settled() -> bool:
            count = len(handled_first())
            if count != seen[0]:
                seen[:] = [count, time.monotonic()]
            return count >= len(delivered) // 2 and time.monotonic() - seen[1] > 1.0

        wait_for(settled, timeout=40, what="the first consumer to handle all it can")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    first = handled_first()
    committed = cluster.committed(group, topic)
    covered = set()
    for p, o, _, _ in delivered:
        offset, metadata = committed[p]
        skip = decode_metadata(metadata, offset)
        if o < offset or any(a <= o <= b for a, b in skip):
            covered.add((p, o))
    assert covered == set(first), "the commit covers exactly what was handled"
    blocked = {(p, o) for p, o, _, _ in delivered} - covered
    assert set(stuck) <= blocked and len(first) == len(set(first))
    ledger = Ledger()
    consumer = ParallelConsumer(cluster.config(group, **{
        "group.protocol": "classic", "partition.assignment.strategy": "cooperative-sticky"}),
        topic, decode_value, ledger.handle, ordering=ordering, workers=4)
    running = Running(consumer)
    wait_for(lambda: ledger.count() >= len(blocked), timeout=40, what="the rest handled")
    in_metadata = sum(1 for p, o, _, _ in delivered if (p, o) in covered
                      and o >= committed[p][0])
    if in_metadata:  # the metadata was used: the records it covers are skipped as they come
        # (those above the last re-handled record may arrive after it was handled)
        wait_for(lambda: consumer.stats()["skipped_total"] >= in_metadata, timeout=20,
                 what="the records the commit metadata covers to be skipped")
    time.sleep(0.3)
    running.stop()
    assert sorted(ledger.all) == sorted(blocked)  # only what was not committed


def test_a_handler_stalling_past_max_poll_interval_keeps_the_consumer_in_the_group(
        cluster: MockCluster) -> None:
    topic, group = unique("stall"), unique("g")
    delivered = [record for partition in range(4)
                 for record in cluster.produce(topic, json_values(150), partition=partition)]
    stall_offset = next(o for p, o, _, _ in delivered if p == 0)
    ledger = Ledger()
    paused_seen = []

    def fn(record: Record) -> Any:
        if record.partition == 0 and record.offset == stall_offset + 5:
            time.sleep(3.5)  # more than max.poll.interval.ms
        return json.loads(record.value)

    consumer = ParallelConsumer(cluster.config(group, **{"max.poll.interval.ms": 1500}), topic,
                                fn, ledger.handle, workers=4, window=40)
    running = Running(consumer)

    def watch() -> bool:
        stats = consumer.stats()
        paused_seen.extend(p["partition"] for p in stats["partitions"] if p["paused"])
        return ledger.count() >= len(delivered)

    wait_for(watch, timeout=40, what="every record handled")
    time.sleep(0.3)
    stats = consumer.stats()
    running.stop()
    assert 0 in paused_seen  # backpressure paused the stalled partition
    assert len(stats["partitions"]) == 4
    assert {p["generation"] for p in stats["partitions"]} == {1, 2, 3, 4}  # never reassigned
    assert sorted(ledger.all) == sorted((p, o) for p, o, _, _ in delivered)
    assert dict(ledger.by_partition) == by_partition(delivered)


def test_process_backend(cluster: MockCluster) -> None:
    topic, group = unique("proc"), unique("g")
    delivered = cluster.produce(topic, json_values(300), transaction_size=50)
    ledger = Ledger()
    consumer = ParallelConsumer(cluster.config(group), topic, decode_value, ledger.handle,
                                workers=2, backend="process")
    running = Running(consumer)
    wait_for(lambda: ledger.count() >= len(delivered), timeout=60, what="every record handled")
    running.stop()
    assert dict(ledger.by_partition) == by_partition(delivered)


def test_stop_is_idempotent_and_close_waits_for_run(cluster: MockCluster) -> None:
    topic, group = unique("stop"), unique("g")
    cluster.produce(topic, json_values(10))
    consumer = ParallelConsumer(cluster.config(group), topic, decode_value, workers=1)
    running = Running(consumer)
    wait_for(lambda: consumer.stats()["handled"] >= 10, what="handled")
    consumer.stop()
    consumer.stop()
    consumer.close()
    # close() returned once run() did: the consumer is down (the test's thread may still be
    # on its way out of run(), so it is joined, not just looked at).
    assert consumer.stats()["running"] is False
    running.stop(timeout=5.0)
    with pytest.raises(RuntimeError):
        consumer.run()


def test_a_closed_consumer_refuses_to_run_and_stays_closable() -> None:
    consumer = ParallelConsumer({"bootstrap.servers": "127.0.0.1:9", "group.id": "g"}, "t",
                                decode_value, workers=1)
    consumer.close()
    with pytest.raises(RuntimeError, match="closed"):
        consumer.run()
    assert consumer.stats()["running"] is False
    closer = threading.Thread(target=consumer.close, daemon=True)
    closer.start()
    closer.join(5.0)
    assert not closer.is_alive(), "close() waited for a run that never started"


def test_partitions_assigned_while_stopping_are_left_to_their_next_owner() -> None:
    # An assignment that arrives during stop() (an eager rebalance under way as it leaves)
    # takes no state and reads no commits: that read waits up to 10 s while the group
    # rebalances, and nothing more will be consumed; unknown partitions' records are dropped.
    from confluent_kafka import TopicPartition

    class NoReads:
        def committed(self, partitions: Any, timeout: float) -> Any:
            raise AssertionError("committed offsets read while stopping")

    consumer = ParallelConsumer({"group.id": "g"}, "t", decode_value)
    consumer.stop()
    consumer._on_assign(NoReads(), [TopicPartition("t", 0), TopicPartition("t", 1)])
    assert consumer.stats()["partitions"] == []


# -- the command line and the example ----------------------------------------------------
def _run_until(process: subprocess.Popen, count: int, signum: int) -> list[str]:
    """Read stdout lines until ``count`` arrived, send ``signum``, wait for the exit; the
    lines (all of them, read to the end)."""
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(lines) >= count or process.poll() is not None, timeout=40,
                 what=f"{count} lines of output")
        time.sleep(0.3)
        process.send_signal(signum)
        assert process.wait(30) == 0
        reader.join(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        assert process.stdout is not None
        process.stdout.close()
    return lines


def test_the_cli_consumes_in_order_and_stops_cleanly_on_sigint(cluster: MockCluster,
                                                               tmp_path: Path) -> None:
    topic, group = unique("cli"), unique("g")
    delivered = cluster.produce(topic, json_values(200), partition=3)
    (tmp_path / "enrich.py").write_text(
        "import json\n\ndef number(record):\n    return json.loads(record.value)['n']\n")
    with (tmp_path / "stderr.txt").open("w") as stderr:
        process = run_script(
            "import sys; from orderedtask.__main__ import main; sys.exit(main())", "kafka",
            "--bootstrap", cluster.bootstrap, "--topic", topic, "--group", group,
            "--fn", "enrich:number", "--workers", "4", "--from-beginning",
            "-X", "group.protocol=consumer", cwd=tmp_path, stdout=subprocess.PIPE,
            stderr=stderr, text=True)
        # The commit interval is 5 s: what SIGINT commits, it commits by itself.
        lines = _run_until(process, len(delivered), signal.SIGINT)
    assert lines == [str(n) for n in range(200)]
    assert "stopped cleanly, 200 records" in (tmp_path / "stderr.txt").read_text()
    assert cluster.committed(group, topic)[3][0] == cluster.end_offsets(topic)[3]


def test_the_cli_reports_a_bad_function_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "orderedtask", "kafka", "--bootstrap", "x:1",
                           "--topic", "t", "--group", "g", "--fn", "nosuchmodule:f"],
                          capture_output=True, text=True, timeout=60, cwd=PACKAGE_PARENT,
                          check=False)
    assert done.returncode == 2
    assert "cannot import module 'nosuchmodule'" in done.stderr and "Traceback" not in done.stderr


def test_the_example_consumes_and_stops_on_sigterm(cluster: MockCluster,
                                                  tmp_path: Path) -> None:
    topic, group = unique("example"), unique("g")
    values = json_values(60)
    values[7] = b"not json"
    cluster.produce(topic, values, partition=0)
    example = str(Path(__file__).resolve().parent.parent / "examples" / "kafka_consumer.py")
    with (tmp_path / "stderr.txt").open("w") as stderr:
        process = run_script(
            f"import runpy; runpy.run_path({example!r}, run_name='__main__')", "--bootstrap",
            cluster.bootstrap, "--topic", topic, "--group", group, stdout=subprocess.PIPE,
            stderr=stderr, text=True)
        lines = _run_until(process, 59, signal.SIGTERM)
    offsets = [int(line.split("@")[1].split(":")[0]) for line in lines]
    assert offsets == [o for o in range(60) if o != 7]  # in order; the bad one dead-lettered
    assert "not JSON, skipped" in (tmp_path / "stderr.txt").read_text()


def test_orderedtask_demo_runs_the_kafka_part_end_to_end() -> None:
    done = subprocess.run([sys.executable, "-m", "orderedtask", "demo", "--messages", "2000"],
                          capture_output=True, text=True, timeout=120, cwd=PACKAGE_PARENT,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "orderedtask demo, Kafka: 2,000 JSON messages through librdkafka's mock cluster" in out
    assert "offsets are commit markers (gaps)" in out
    for row in ("plain consumer loop (consume + decode)", "ParallelConsumer (ordering=partition"):
        assert row in out
    assert "order check: every record handled once, in offset order per partition" in out
    assert "commit check: the group's committed offsets are the partitions' end offsets" in out
