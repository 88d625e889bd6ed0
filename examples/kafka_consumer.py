"""Consume a Kafka topic in parallel, handle it in offset order, commit at-least-once.

    pip install 'orderedtask[kafka,json]'
    python examples/kafka_consumer.py --bootstrap localhost:9092 --topic events \\
        --group decoders --workers 8

``decode`` runs on the workers, several records at once; ``handle`` gets each decoded record
in offset order within its partition (partitions in parallel); a record that is not JSON goes
to ``dead_letter`` and counts as handled. ``ParallelConsumer`` commits the offset below which
everything was handled, every 1,000 records or 5 seconds, on a rebalance and on shutdown;
Ctrl-C or SIGTERM finishes what is in flight, commits and exits. README, "Kafka", says what
is guaranteed and what is read again after a crash. ``orderedtask kafka --fn ...`` is the
same without writing a script.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

try:
    import orjson

    loads = orjson.loads
except ImportError:  # orjson is optional: the stdlib decoder is slower but equivalent here
    loads = json.loads

log = logging.getLogger("kafka_consumer")


def decode(record: Any) -> Any:
    """On the workers: decode one message's value (an error goes to dead_letter)."""
    return loads(record.value)


def handle(record: Any, doc: Any) -> None:
    """In offset order per partition: replace with the real work (it must tolerate a re-read
    after a crash: at-least-once)."""
    print(f"{record.topic}[{record.partition}]@{record.offset}: {doc!r}", flush=True)


def dead_letter(record: Any, exc: Exception) -> None:
    log.warning("%s[%d]@%d: not JSON, skipped: %r", record.topic, record.partition,
                record.offset, exc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="localhost:9092")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    try:
        from orderedtask.kafka import ParallelConsumer
    except ImportError as exc:
        sys.exit(str(exc))  # names the extra: pip install 'orderedtask[kafka]'
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = {"bootstrap.servers": args.bootstrap, "group.id": args.group,
              "auto.offset.reset": "earliest"}
    with ParallelConsumer(config, args.topic, decode, handle, workers=args.workers,
                          on_error=dead_letter) as consumer:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: consumer.stop())
        consumer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
