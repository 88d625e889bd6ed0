"""Which reorder core runs, and that the two twins present the same interface."""

from __future__ import annotations

import importlib.machinery
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import orderedtask
import orderedtask._compat
import orderedtask._engine
from support import NO_EXTENSIONS, load_twin

ROOT = Path(orderedtask.__file__).resolve().parent.parent

requires_extension = pytest.mark.skipif(NO_EXTENSIONS, reason="ORDEREDTASK_NO_EXTENSIONS is set")


@requires_extension
def test_compiled_core_is_built_and_used():
    import orderedtask._heapcore as compiled

    assert orderedtask.IMPLEMENTATION == "c"
    assert orderedtask._compat.ReorderBuffer is compiled.ReorderBuffer
    assert any(compiled.__file__.endswith(suffix)
               for suffix in importlib.machinery.EXTENSION_SUFFIXES), compiled.__file__
    assert orderedtask._engine.ReorderBuffer is compiled.ReorderBuffer


@pytest.mark.skipif(not NO_EXTENSIONS, reason="ORDEREDTASK_NO_EXTENSIONS is not set")
def test_pure_python_core_when_extensions_are_disabled():
    import orderedtask._heapcore_py as reference

    assert orderedtask.IMPLEMENTATION == "py"
    assert orderedtask._compat.ReorderBuffer is reference.ReorderBuffer


def implementation_in_subprocess(no_extensions: bool) -> str:
    env = {key: value for key, value in os.environ.items()
           if key != "ORDEREDTASK_NO_EXTENSIONS"}
    if no_extensions:
        env["ORDEREDTASK_NO_EXTENSIONS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    code = ("import orderedtask, orderedtask._compat as c; "
            "print(orderedtask.IMPLEMENTATION, c.ReorderBuffer.__module__)")
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


def test_environment_variable_selects_the_pure_python_core():
    assert implementation_in_subprocess(True) == "py orderedtask._heapcore_py"


@requires_extension
def test_compiled_core_is_the_default():
    assert implementation_in_subprocess(False) == "c orderedtask._heapcore"


def public_names(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


@requires_extension
def test_twins_expose_the_same_interface():
    compiled, reference = load_twin("c"), load_twin("py")
    assert public_names(compiled) == public_names(reference) == {
        "accept", "finish", "release", "clear",
        "head", "last_released", "accepted", "finished", "released", "ready",
    }
    assert inspect.getdoc(compiled) == inspect.getdoc(reference)
    # Python 3.13 dedents docstrings at compile time, Cython does not: compare them cleaned.
    assert inspect.cleandoc(compiled.__doc__) == inspect.cleandoc(reference.__doc__)
    for name in sorted(public_names(reference) | {"__len__"}):
        ours, spec = getattr(compiled, name), getattr(reference, name)
        assert ours.__doc__, f"{name} has no docstring"
        assert inspect.cleandoc(ours.__doc__) == inspect.cleandoc(spec.__doc__), name
        assert inspect.isdatadescriptor(ours) == inspect.isdatadescriptor(spec), name
        if callable(spec) and not name.startswith("_"):
            assert (list(inspect.signature(ours).parameters)
                    == list(inspect.signature(spec).parameters)), name


def test_package_exports():
    assert {"IMPLEMENTATION", "Pool", "PoolClosed", "Task", "WorkerInitError", "map"} <= set(
        orderedtask.__all__)
    for name in orderedtask.__all__:
        assert hasattr(orderedtask, name)


def test_task():
    task = orderedtask.Task(3, "in")
    assert (task.index, task.input, task.output, task.error) == (3, "in", None, None)
    assert repr(task) == "Task(index=3, input='in', output=None)"
    task.error = ValueError("x")
    assert repr(task) == "Task(index=3, input='in', error=ValueError('x'))"
    with pytest.raises(AttributeError):
        task.other = 1
