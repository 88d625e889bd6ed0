"""Fixtures shared by the pytest-benchmark suites: the two reorder-core twins."""

from __future__ import annotations

import importlib

import pytest

TWINS = ("c", "py")
_MODULES = {"c": "orderedtask._heapcore", "py": "orderedtask._heapcore_py"}


def load_reorder_buffer(twin: str) -> type:
    """The ``ReorderBuffer`` class of one twin; skips the test if the compiled core is absent."""
    try:
        module = importlib.import_module(_MODULES[twin])
    except ImportError as exc:
        pytest.skip(f"{_MODULES[twin]} is not importable ({exc}); build it with "
                    "`python setup.py build_ext --inplace`")
    return module.ReorderBuffer


@pytest.fixture(params=TWINS)
def reorder_buffer(request: pytest.FixtureRequest) -> type:
    """``ReorderBuffer`` of the compiled core (id ``c``) or of the pure-Python twin (``py``)."""
    return load_reorder_buffer(request.param)


@pytest.fixture(params=TWINS)
def engine_twin(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Makes every Engine (hence ``orderedtask.map`` and ``Pool``) use the chosen twin."""
    import orderedtask._engine

    monkeypatch.setattr(orderedtask._engine, "ReorderBuffer", load_reorder_buffer(request.param))
    return request.param
