"""``decode``: the motivating job as one call, ordered parallel decoding of a message stream."""

from __future__ import annotations

import json
from importlib.util import find_spec
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import Any

from ._core import gil_enabled
from ._map import TaskStream, map_tasks
from ._core import Task

HEAD_BYTES = 40


class DecodeError(ValueError):
    """A message that could not be decoded: its offset, the reason, and its first bytes."""

    def __init__(self, offset: int, reason: str, head: bytes) -> None:
        super().__init__(offset, reason, head)
        self.offset = offset
        self.reason = reason
        self.head = head

    def __str__(self) -> str:
        return f"message at offset {self.offset} could not be decoded: {self.reason}; " \
               f"it starts {self.head!r}"


def pick_decoder(decoder: str) -> tuple[str, Callable[[bytes], Any]]:
    """Return ``(name, loads)`` for a decoder name; ``auto`` keeps the GIL off on 3.13t."""
    if decoder == "auto":
        decoder = "orjson" if gil_enabled() and find_spec("orjson") is not None else "json"
    if decoder == "orjson":
        try:
            import orjson
        except ImportError as exc:
            raise ImportError("decoder='orjson' needs orjson: pip install 'orderedtask[json]'"
                              ) from exc
        return "orjson", orjson.loads
    if decoder == "json":
        return "json", json.loads
    raise ValueError(f"decoder must be 'auto', 'orjson', 'json' or a callable, not {decoder!r}")


def _loads_for(decoder: str | Callable[[bytes], Any], type: Any) -> Callable[[bytes], Any]:
    if type is not None:
        return TypedDecoder(type)
    if callable(decoder):
        return decoder
    return pick_decoder(decoder)[1]


class TypedDecoder:
    """Decodes into ``type`` (a msgspec.Struct, dataclass, TypedDict...) with msgspec."""

    __slots__ = ("type", "_decode")

    def __init__(self, type: Any) -> None:
        try:
            import msgspec
        except ImportError as exc:
            raise ImportError(
                "type= decodes with msgspec: pip install msgspec (it has no free-threaded "
                "3.13t build)") from exc
        self.type = type
        self._decode = msgspec.json.Decoder(type).decode

    def __call__(self, body: bytes) -> Any:
        return self._decode(body)

    def __reduce__(self) -> tuple[Any, ...]:
        return (TypedDecoder, (self.type,))


def describe_decode_error(offset: int, body: Any, error: Exception) -> DecodeError:
    if isinstance(body, (bytes, bytearray, memoryview)):
        head = bytes(body[:HEAD_BYTES])
    else:
        head = repr(body)[:HEAD_BYTES].encode()
    return DecodeError(offset, f"{type(error).__name__}: {error}", head)


def _with_offsets(messages: Iterable[Any]) -> Iterator[tuple[int, Any]]:
    for position, message in enumerate(messages):
        yield message if isinstance(message, tuple) else (position, message)


def decode(
    messages: Iterable[bytes] | Iterable[tuple[int, bytes]],
    *,
    workers: int | None = None,
    max_workers: int | None = None,
    decoder: str | Callable[[bytes], Any] = "auto",
    type: Any = None,
    backend: str | Executor = "thread",
    window: int | None = None,
    progress: bool = False,
) -> TaskStream:
    """Decode JSON messages in parallel and yield a ``Task`` per message, in input order.

    ``messages`` are ``bytes`` (the index is the position) or ``(offset, bytes)`` pairs (the
    index is the offset). ``task.output`` is the decoded object; a message that fails to
    decode has ``task.error`` set to a ``DecodeError`` (offset, reason, first bytes) and the
    stream goes on. ``decoder``: ``"auto"`` (orjson on the standard build, stdlib json on a
    free-threaded one, where orjson would turn the GIL back on), ``"orjson"``, ``"json"``, or a
    callable. ``type=`` decodes into typed objects (``msgspec.Struct``, dataclasses) with
    msgspec instead of dicts. ``workers``/``max_workers`` as in ``map`` (default: adaptive).
    """
    loads = _loads_for(decoder, type)
    return map_tasks(loads, _with_offsets(messages), indexed=True, workers=workers,
                     window=window, backend=backend, progress=progress,
                     describe_error=describe_decode_error, max_workers=max_workers)
