"""How items and outcomes cross to another process: one pickle per item, both ways.

Pickling each item on its own costs a little more than one pickle per batch, and buys the
accounting rule at the boundary: an input or output that cannot be pickled, or cannot be
unpickled on the other side, fails its own item with an error that says so, and the rest
of the batch runs.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

Outcome = tuple[Any, BaseException | None]
PROTOCOL = pickle.HIGHEST_PROTOCOL


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def pack_inputs(indices: Sequence[int], inputs: Sequence[Any], where: str
                ) -> tuple[list[bytes | None], dict[int, Outcome]]:
    """Pickle each input; an input that cannot be pickled becomes its outcome at once."""
    blobs: list[bytes | None] = []
    failed: dict[int, Outcome] = {}
    for position, (index, value) in enumerate(zip(indices, inputs)):
        try:
            blobs.append(pickle.dumps(value, PROTOCOL))
        except Exception as exc:  # noqa: BLE001 - anything the pickler raises
            blobs.append(None)
            failed[position] = (None, TypeError(
                f"the input of task {index} could not be pickled to send it to {where}: "
                f"{_describe(exc)}"))
    return blobs, failed


def portable_error(error: BaseException | None) -> BaseException | None:
    """The error itself if it survives a pickle round trip, else a RuntimeError describing it."""
    if error is None:
        return None
    try:
        blob = pickle.dumps(error, PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - anything the pickler raises
        return RuntimeError(f"{_describe(error)} (the exception could not be pickled: "
                            f"{_describe(exc)})")
    try:
        pickle.loads(blob)
    except Exception as exc:  # noqa: BLE001 - anything the unpickler raises
        return RuntimeError(f"{_describe(error)} (the exception could not be unpickled: "
                            f"{_describe(exc)})")
    return error


def run_packed(runner: Any, workerlocal: dict[str, Any], indices: Sequence[int],
               blobs: Sequence[bytes | None], where: str) -> list[bytes | None]:
    """The far side: unpickle each input, run the batch, pickle each outcome on its own.

    A ``None`` blob stays ``None`` (the sender already failed that item).
    """
    values: list[Any] = []
    ran: list[int] = []
    packed: list[bytes | None] = [None] * len(blobs)
    for position, (index, blob) in enumerate(zip(indices, blobs)):
        if blob is None:
            continue
        try:
            values.append(pickle.loads(blob))
        except Exception as exc:  # noqa: BLE001 - anything the unpickler raises
            packed[position] = pickle.dumps((None, TypeError(
                f"the input of task {index} could not be unpickled in {where}: "
                f"{_describe(exc)}")), PROTOCOL)
            continue
        ran.append(position)
    outcomes = runner.run(workerlocal, [indices[p] for p in ran], values)
    for position, (output, error) in zip(ran, outcomes):
        if error is not None:  # rare: check the round trip here, where the message is known
            error = portable_error(error)
        try:
            packed[position] = pickle.dumps((output, error), PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - the output (or the error) does not pickle
            if error is None:
                error = TypeError(f"the output of task {indices[position]} could not be "
                                  f"pickled to return it from {where}: {_describe(exc)}")
            packed[position] = pickle.dumps((None, portable_error(error)), PROTOCOL)
    return packed


def unpack_outcomes(indices: Sequence[int], packed: Sequence[bytes | None],
                    failed: dict[int, Outcome], where: str) -> list[Outcome]:
    """The near side: one outcome per item, in order, whatever could not cross."""
    outcomes: list[Outcome] = []
    for position, index in enumerate(indices):
        if position in failed:
            outcomes.append(failed[position])
            continue
        blob = packed[position] if position < len(packed) else None
        if blob is None:
            outcomes.append((None, RuntimeError(f"no outcome came back from {where} for task "
                                                f"{index}")))
            continue
        try:
            output, error = pickle.loads(blob)
        except Exception as exc:  # noqa: BLE001 - anything the unpickler raises
            outcomes.append((None, TypeError(
                f"the outcome of task {index} could not be unpickled after it came back from "
                f"{where}: {_describe(exc)}")))
            continue
        outcomes.append((output, error))
    return outcomes
