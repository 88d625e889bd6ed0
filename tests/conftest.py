"""Shared fixtures: the two reorder-core twins, and a thread-leak guard."""

from __future__ import annotations

import threading
import time

import pytest

import orderedtask._core
from support import CORE_NAMES, NO_EXTENSIONS, load_twin

TWIN_PARAMS = [
    pytest.param(
        "c", id="c",
        marks=pytest.mark.skipif(NO_EXTENSIONS, reason="ORDEREDTASK_NO_EXTENSIONS is set"),
    ),
    pytest.param("py", id="py"),
]

THREAD_LEAK_GRACE_SECONDS = 5.0


@pytest.fixture(scope="session", params=TWIN_PARAMS)
def buffer_cls(request: pytest.FixtureRequest) -> type:
    """Each ReorderBuffer twin in turn."""
    return load_twin(request.param).ReorderBuffer


@pytest.fixture(scope="session", params=TWIN_PARAMS)
def core(request: pytest.FixtureRequest):
    """Each core twin module in turn (for tests of the engine itself)."""
    return load_twin(request.param)


@pytest.fixture(params=TWIN_PARAMS)
def twin(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a Pool/map test on each twin: every engine built during the test is of that twin."""
    module = load_twin(request.param)
    for name in CORE_NAMES:
        monkeypatch.setattr(orderedtask._core, name, getattr(module, name))
    return request.param


@pytest.fixture
def no_thread_leak():
    """Fails the test if threads it started are still alive 5 s after it ends."""
    before = set(threading.enumerate())
    baseline = threading.active_count()
    yield
    deadline = time.monotonic() + THREAD_LEAK_GRACE_SECONDS
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.01)
    if threading.active_count() > baseline:
        leaked = sorted(t.name for t in threading.enumerate() if t not in before)
        pytest.fail(f"threads leaked ({threading.active_count()} alive, baseline {baseline}): "
                    f"{leaked}")
