"""Fixtures shared by the pytest-benchmark suites: the two core twins."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

TWINS = ("c", "py")
_MODULES = {"c": "orderedtask._core._core_c", "py": "orderedtask._core._core_py"}
# What the shell reads from orderedtask._core at call time (tests/support.py names the same).
CORE_NAMES = ("Batch", "Cursor", "Engine", "ReorderBuffer", "Runner", "NOT_READY", "as_index")


def load_core(twin: str) -> ModuleType:
    """One core twin; skips the benchmark if the compiled core is absent."""
    try:
        return importlib.import_module(_MODULES[twin])
    except ImportError as exc:
        pytest.skip(f"{_MODULES[twin]} is not importable ({exc}); build it with "
                    "`python setup.py build_ext --inplace`")


@pytest.fixture(params=TWINS)
def reorder_buffer(request: pytest.FixtureRequest) -> type:
    """``ReorderBuffer`` of the compiled core (id ``c``) or of the pure-Python twin (``py``)."""
    cls: type = load_core(request.param).ReorderBuffer
    return cls


@pytest.fixture(params=TWINS)
def engine_twin(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Makes every engine (hence ``orderedtask.map`` and ``Pool``) the chosen twin's."""
    import orderedtask._core

    core = load_core(request.param)
    for name in CORE_NAMES:
        monkeypatch.setattr(orderedtask._core, name, getattr(core, name))
    return request.param
