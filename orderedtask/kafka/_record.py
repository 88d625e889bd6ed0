"""``Record``: one Kafka message as the workers see it (picklable, cheap to build)."""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["Record", "records_of"]


class Record(NamedTuple):
    """One consumed message: ``topic``, ``partition``, ``offset``, ``key``, ``value``,
    ``timestamp`` (milliseconds since the epoch as the broker or producer set it, -1 when the
    message carries none) and ``headers`` (a list of ``(name, bytes)`` pairs, or None).

    A named tuple: immutable, ``__slots__ = ()``, and picklable, so it can cross to worker
    processes; unlike a confluent-kafka ``Message`` it holds no reference to the consumer.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: list[tuple[str, bytes]] | None


_new = tuple.__new__


def records_of(topic: str, partition: int, messages: list[Any]) -> list[Record]:
    """Records for ``messages`` of one partition, built in one comprehension.

    ``tuple.__new__`` skips the named tuple's Python-level ``__new__``: this runs once per
    consumed message on the poll thread, so it is the consumer's main per-record cost.
    """
    return [_new(Record, (topic, partition, m.offset(), m.key(), m.value(), m.timestamp()[1],
                          m.headers())) for m in messages]
