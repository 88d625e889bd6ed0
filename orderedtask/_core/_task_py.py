"""``Task``, the unit of work that travels through a pool: the specification of ``_task.pxi``.

One Task class serves a whole process: the compiled one with the compiled core, this one
without (``orderedtask._core.Task`` is the one in use).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Task"]


class Task:
    """One piece of work: an ``index`` that orders it and an ``input``.

    The pool's function writes ``output``; if the function raised, ``error`` holds the
    exception and the task is still yielded in its place.
    """

    __slots__ = ("index", "input", "output", "error")

    def __init__(self, index: int, input: Any = None) -> None:
        self.index = index
        self.input = input
        self.output: Any = None
        self.error: BaseException | None = None

    def __repr__(self) -> str:
        state = f"error={self.error!r}" if self.error is not None else f"output={self.output!r}"
        return f"Task(index={self.index!r}, input={self.input!r}, {state})"

    def __reduce__(self) -> tuple[Any, ...]:
        # By way of the selector: the receiving side may run the other twin.
        from .. import _core

        cls = None if type(self) is Task else type(self)
        return (_core.make_task, (cls, self.index, self.input), (self.output, self.error))

    def __setstate__(self, state: tuple[Any, BaseException | None]) -> None:
        self.output, self.error = state
