"""Kafka: ``ParallelConsumer`` consumes topics in parallel, keeps order, commits safely.

Needs confluent-kafka (``pip install 'orderedtask[kafka]'``); importing ``orderedtask``
alone never imports it.
"""

try:
    import confluent_kafka  # noqa: F401 - probed here so that the error names the extra
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError("orderedtask.kafka needs confluent-kafka: "
                      "pip install 'orderedtask[kafka]'") from exc

from ._consumer import ParallelConsumer
from ._record import Record

__all__ = ["ParallelConsumer", "Record"]
