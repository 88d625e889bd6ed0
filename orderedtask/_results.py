"""``Results``: the type of every ordered results iterator (``Pool.results``, ``map``, ...).

They are the core's ``Cursor`` objects: one consumer at a time, ``close()`` to leave early
(which stops the work), ``stats()`` for the engine's counters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, TypeVar

T_co = TypeVar("T_co", covariant=True)


class Results(Protocol[T_co]):
    """An ordered, lazy results iterator; ``close()`` stops the work behind it."""

    def __iter__(self) -> Iterator[T_co]: ...
    def __next__(self) -> T_co: ...
    def close(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...
