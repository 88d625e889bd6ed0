"""Which core runs, and that the two twins present the same interface."""

from __future__ import annotations

import importlib.machinery
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import orderedtask
import orderedtask._core
from support import CORE_NAMES, NO_EXTENSIONS, load_twin

ROOT = Path(orderedtask.__file__).resolve().parent.parent

requires_extension = pytest.mark.skipif(NO_EXTENSIONS, reason="ORDEREDTASK_NO_EXTENSIONS is set")

CLASSES = ("Batch", "Cursor", "Engine", "ReorderBuffer", "Runner", "Task")
MODULE_NAMES = {"INLINE_BATCH", "MAP", "MAX_BATCH", "NOT_READY", "POOL", "PULL_BATCH", *CLASSES,
                "as_index", "as_timeout"}


@requires_extension
def test_compiled_core_is_built_and_used():
    from orderedtask._core import _core_c as compiled

    assert orderedtask.IMPLEMENTATION == "c"
    assert orderedtask._core.impl is compiled
    assert any(compiled.__file__.endswith(suffix)
               for suffix in importlib.machinery.EXTENSION_SUFFIXES), compiled.__file__
    for name in CORE_NAMES:
        assert getattr(orderedtask._core, name) is getattr(compiled, name), name
    # What a Pool and a map build is the compiled engine, and map's stream is its cursor.
    pool = orderedtask.Pool(1, lambda workerlocal, task: None)
    assert type(pool._engine) is compiled.Engine
    pool.terminate()
    assert type(orderedtask.map(abs, [])) is compiled.Cursor


@pytest.mark.skipif(not NO_EXTENSIONS, reason="ORDEREDTASK_NO_EXTENSIONS is not set")
def test_pure_python_core_when_extensions_are_disabled():
    from orderedtask._core import _core_py as reference

    assert orderedtask.IMPLEMENTATION == "py"
    assert orderedtask._core.impl is reference
    assert orderedtask._core.Engine is reference.Engine


def implementation_in_subprocess(no_extensions: bool) -> str:
    env = {key: value for key, value in os.environ.items()
           if key != "ORDEREDTASK_NO_EXTENSIONS"}
    if no_extensions:
        env["ORDEREDTASK_NO_EXTENSIONS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    code = ("import orderedtask, orderedtask._core as c; "
            "print(orderedtask.IMPLEMENTATION, c.Engine.__module__)")
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


def test_environment_variable_selects_the_pure_python_core():
    assert implementation_in_subprocess(True) == "py orderedtask._core._engine_py"


@requires_extension
def test_compiled_core_is_the_default():
    assert implementation_in_subprocess(False) == "c orderedtask._core._core_c"


def public_names(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


@requires_extension
def test_twin_modules_export_the_same_names():
    compiled, reference = load_twin("c"), load_twin("py")
    assert set(reference.__all__) == MODULE_NAMES
    for name in MODULE_NAMES:
        assert hasattr(compiled, name), name
    for name in ("INLINE_BATCH", "MAP", "MAX_BATCH", "POOL", "PULL_BATCH"):
        assert getattr(compiled, name) == getattr(reference, name), name
    assert repr(compiled.NOT_READY) == repr(reference.NOT_READY) == "NOT_READY"


@requires_extension
@pytest.mark.parametrize("cls", CLASSES)
def test_twins_expose_the_same_interface(cls):
    compiled, reference = getattr(load_twin("c"), cls), getattr(load_twin("py"), cls)
    assert public_names(compiled) == public_names(reference)
    # Python 3.13 dedents docstrings at compile time, Cython does not: compare them cleaned.
    assert inspect.cleandoc(compiled.__doc__) == inspect.cleandoc(reference.__doc__)
    extra = {"__len__"} if hasattr(reference, "__len__") else set()
    for name in sorted(public_names(reference) | extra):
        ours, spec = getattr(compiled, name), getattr(reference, name)
        if isinstance(spec, int):  # a constant (Cursor.POOL...)
            assert ours == spec, name
            continue
        assert inspect.isdatadescriptor(ours) == inspect.isdatadescriptor(spec), name
        if inspect.ismemberdescriptor(spec):  # a plain attribute (__slots__): no docstring
            continue
        assert ours.__doc__, f"{cls}.{name} has no docstring"
        assert inspect.cleandoc(ours.__doc__) == inspect.cleandoc(spec.__doc__), name
        if callable(spec) and not inspect.isdatadescriptor(spec) and not name.startswith("_"):
            assert (list(inspect.signature(ours).parameters)
                    == list(inspect.signature(spec).parameters)), f"{cls}.{name}"


def test_reorder_buffer_interface():
    assert public_names(load_twin("py").ReorderBuffer) == {
        "accept", "finish", "release", "clear",
        "head", "last_released", "accepted", "finished", "released", "held",
    }


@pytest.mark.skipif(NO_EXTENSIONS, reason="the compiled core's allocation")
def test_compiled_tasks_do_not_count_towards_the_first_gc_threshold():
    # A window of Tasks made in bursts would trigger a cyclic pass every ~700 of them, and
    # each pass promotes every live task and output; the compiled Task recycles its memory.
    import gc

    if not orderedtask._core.gil_enabled():
        pytest.skip("Cython keeps no freelists on free-threaded builds")
    Task = load_twin("c").Task

    class Slotted(Task):
        __slots__ = ()

    class Plain(Task):
        pass

    enabled = gc.isenabled()
    gc.disable()
    try:
        tasks = [Task(i, str(i)) for i in range(1_000)]
        del tasks
        gc.collect()
        before = gc.get_count()[0]
        tasks = [Task(i, str(i)) for i in range(1_000)]
        assert gc.get_count()[0] - before < 100
        # Subclasses take the ordinary allocator, mixed in with recycled Tasks.
        mixed = [cls(i, [i]) for i in range(300) for cls in (Task, Slotted, Plain)]
        mixed[2].extra = "a dict of its own"
        assert [(type(t), t.index, t.input) for t in mixed[:3]] == [
            (Task, 0, [0]), (Slotted, 0, [0]), (Plain, 0, [0])]
        assert mixed[2].extra == "a dict of its own"
        del tasks, mixed
    finally:
        if enabled:
            gc.enable()


def test_package_exports():
    assert {"IMPLEMENTATION", "Pool", "PoolClosed", "PoolTerminated", "Task", "WorkerInitError",
            "map", "map_tasks", "amap", "decode", "Results"} <= set(orderedtask.__all__)
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
