"""The interpreter backend: ``backend="interpreter"`` and ``backend=InterpreterPoolExecutor()``.

Functions below (and those from support.py) live at module level: the worker interpreters
import them by name.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

import orderedtask
from orderedtask import Pool, PoolClosed, Task, WorkerInitError
from support import (NO_EXTENSIONS, collect_until_error, echo, fail_on_7, failing_init, run_pool,
                     square, unpicklable_output)

needs_interpreters = pytest.mark.skipif(
    sys.version_info < (3, 14), reason="subinterpreters (concurrent.interpreters) need 3.14+")


def interpreter_id() -> int:
    from concurrent import interpreters

    return int(interpreters.get_current().id)


def where(workerlocal: dict, task: Task) -> None:
    task.output = (interpreter_id(), workerlocal.get("inits"), task.input)


def count_inits(workerlocal: dict) -> None:
    workerlocal["inits"] = workerlocal.get("inits", 0) + 1


def check_positive(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative: {x}")
    return x


class Unpicklable(Exception):
    def __reduce__(self):  # noqa: ANN204
        raise TypeError("this exception does not pickle")


class NeedsTwoArguments(Exception):
    """Pickles, but unpickling calls ``__init__`` with one argument: the classic pickle bug."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what}: {why}")


def raise_unpicklable(workerlocal: dict, task: Task) -> None:
    if task.input == 1:
        raise Unpicklable("kept as text")
    if task.input == 2:
        raise NeedsTwoArguments("disk", "full")
    task.output = task.input


def lock_for_2(x: int) -> object:
    return threading.Lock() if x == 2 else x


def _refuse_outside_main() -> object:
    if interpreter_id() != 0:
        raise ImportError("this value only loads in the main interpreter")
    return "loaded"


def _refuse_in_main() -> object:
    if interpreter_id() == 0:
        raise ImportError("this value only loads in a subinterpreter")
    return "loaded"


class OnlyInMain:
    """An input that pickles here but cannot be unpickled in a subinterpreter."""

    def __reduce__(self):  # noqa: ANN204
        return (_refuse_outside_main, ())


class OnlyInSubinterpreter:
    """An output that pickles in a subinterpreter but cannot be unpickled in the main one."""

    def __reduce__(self):  # noqa: ANN204
        return (_refuse_in_main, ())


def make_only_in_subinterpreter(workerlocal: dict, task: Task) -> None:
    task.output = OnlyInSubinterpreter()


def live_interpreters() -> int:
    from concurrent import interpreters

    return len(interpreters.list_all())


@pytest.fixture(params=["name", "executor"])
def backend(request: pytest.FixtureRequest, no_thread_leak):
    """``"interpreter"``, or an ``InterpreterPoolExecutor(2)`` shut down after the test."""
    if request.param == "name":
        yield "interpreter"
        return
    from concurrent.futures import InterpreterPoolExecutor

    executor = InterpreterPoolExecutor(2)
    yield executor
    executor.shutdown()


@needs_interpreters
class TestResults:
    def test_map_in_order(self, backend) -> None:
        items = list(range(3000))
        assert list(orderedtask.map(square, items, workers=2, backend=backend)) == [
            x * x for x in items]

    def test_pool_in_order_with_gaps_in_other_interpreters(self, backend) -> None:
        indices = [i * 3 + (i % 2) for i in range(500)]
        with Pool(2, where, backend=backend) as pool:
            out = run_pool(pool, [Task(i, i) for i in indices])
        assert [t.index for t in out] == indices
        assert [t.output[2] for t in out] == indices
        assert all(t.error is None for t in out)
        assert 0 not in {t.output[0] for t in out}  # never the main interpreter
        assert pool.watermark == indices[-1]

    def test_map_tasks_keeps_indices_and_errors(self, backend) -> None:
        pairs = [(100 + 2 * i, i if i != 5 else -5) for i in range(40)]
        out = list(orderedtask.map_tasks(check_positive, pairs, indexed=True, workers=2,
                                         backend=backend))
        assert [t.index for t in out] == [index for index, _ in pairs]
        bad = out[5]
        assert isinstance(bad.error, ValueError) and str(bad.error) == "negative: -5"
        assert all(t.output == t.input and t.error is None for t in out if t is not bad)


@needs_interpreters
class TestErrors:
    def test_exception_stays_on_its_task_with_type_and_message(self, backend) -> None:
        with Pool(2, fail_on_7, backend=backend) as pool:
            out = run_pool(pool, [Task(i, i) for i in range(20)])
        assert [t.index for t in out] == list(range(20))
        assert type(out[7].error) is KeyError and out[7].error.args == ("seven",)
        assert all(t.error is None and t.output == t.index for t in out if t.index != 7)

    def test_map_raises_at_the_failing_item(self, backend) -> None:
        got, error = collect_until_error(
            orderedtask.map(check_positive, [0, 1, 2, -3, 4], workers=2, backend=backend))
        assert got == [0, 1, 2]  # the results before it
        assert isinstance(error, ValueError) and str(error) == "negative: -3"

    def test_exceptions_that_do_not_cross_are_described(self, backend) -> None:
        with Pool(1, raise_unpicklable, backend=backend) as pool:
            out = run_pool(pool, [Task(i, i) for i in range(4)])
        assert isinstance(out[1].error, RuntimeError)
        assert "Unpicklable: kept as text" in str(out[1].error)
        assert "could not be pickled" in str(out[1].error)
        assert isinstance(out[2].error, RuntimeError)
        assert "NeedsTwoArguments: disk: full" in str(out[2].error)
        assert "could not be unpickled" in str(out[2].error)
        assert [(t.output, t.error) for t in (out[0], out[3])] == [(0, None), (3, None)]

    def test_unpicklable_input_fails_only_its_task(self, backend) -> None:
        tasks = [Task(0, 0), Task(1, threading.Lock()), Task(2, 2)]
        with Pool(1, echo, backend=backend) as pool:
            out = run_pool(pool, tasks)
        assert isinstance(out[1].error, TypeError)
        assert "input of task 1 could not be pickled to send it to a subinterpreter" in str(
            out[1].error)
        assert [(t.output, t.error) for t in (out[0], out[2])] == [(0, None), (2, None)]

    def test_input_that_cannot_be_unpickled_there_fails_only_its_task(self, backend) -> None:
        tasks = [Task(0, 0), Task(1, OnlyInMain()), Task(2, 2)]
        with Pool(1, echo, backend=backend) as pool:
            pool.enqueue_many(tasks)  # one batch: the split finds the bad input
            pool.close()
            out = list(pool.results())
        assert isinstance(out[1].error, TypeError)
        assert "input of task 1 could not be unpickled in a subinterpreter" in str(out[1].error)
        assert "only loads in the main interpreter" in str(out[1].error)
        assert [(t.output, t.error) for t in (out[0], out[2])] == [(0, None), (2, None)]

    def test_unpicklable_output_fails_only_its_task(self, backend) -> None:
        with Pool(2, unpicklable_output, backend=backend) as pool:
            out = run_pool(pool, [Task(i, i) for i in range(5)])
        assert isinstance(out[2].error, TypeError)
        assert "output of task 2 could not be pickled to return it from a subinterpreter" in \
            str(out[2].error)
        assert [t.output for t in out if t.index != 2] == [0, 1, 3, 4]

    def test_unpicklable_output_in_map_is_raised(self, backend) -> None:
        with pytest.raises(TypeError, match="could not be pickled to return it"):
            list(orderedtask.map(lock_for_2, range(5), workers=1, backend=backend))

    def test_output_that_cannot_be_unpickled_here_fails_its_batch(self, backend) -> None:
        with Pool(1, make_only_in_subinterpreter, backend=backend) as pool:
            out = run_pool(pool, [Task(0, 0)])
        assert isinstance(out[0].error, TypeError)
        assert "could not be unpickled after it came back from a subinterpreter" in str(out[0].error)
        assert "only loads in a subinterpreter" in str(out[0].error)


@needs_interpreters
class TestWorkers:
    def test_worker_init_runs_once_per_interpreter(self, no_thread_leak) -> None:
        with Pool(2, where, worker_init=count_inits, backend="interpreter") as pool:
            out = run_pool(pool, [Task(i, i) for i in range(400)])
        assert {t.output[1] for t in out} == {1}
        assert 1 <= len({t.output[0] for t in out}) <= 2

    def test_worker_init_runs_once_per_executor_interpreter_and_pool(self, no_thread_leak) -> None:
        from concurrent.futures import InterpreterPoolExecutor

        with InterpreterPoolExecutor(2) as executor:
            for _ in range(2):
                with Pool(2, where, worker_init=count_inits, backend=executor) as pool:
                    out = run_pool(pool, [Task(i, i) for i in range(200)])
                assert {t.output[1] for t in out} == {1}

    def test_worker_init_failure_closes_the_pool(self, no_thread_leak) -> None:
        pool = Pool(1, echo, worker_init=failing_init, backend="interpreter")
        try:
            pool.enqueue_many([Task(i, i) for i in range(5)])
            out = list(pool.results())
            assert [t.index for t in out] == list(range(5))
            for task in out:
                assert isinstance(task.error, WorkerInitError)
                assert type(task.error.__cause__) is ValueError
                assert str(task.error.__cause__) == "no database"
            with pytest.raises(PoolClosed, match="worker_init failed"):
                pool.enqueue(Task(5, 5))
        finally:
            pool.terminate()
            pool.join(10)

    def test_worker_init_failure_in_an_executor_fails_the_tasks(self, no_thread_leak) -> None:
        from concurrent.futures import InterpreterPoolExecutor

        with InterpreterPoolExecutor(1) as executor:
            with Pool(1, echo, worker_init=failing_init, backend=executor) as pool:
                out = run_pool(pool, [Task(i, i) for i in range(3)])
        assert all(type(t.error) is ValueError and str(t.error) == "no database" for t in out)

    def test_interpreters_are_closed_with_the_pool(self, no_thread_leak) -> None:
        before = live_interpreters()
        with Pool(2, echo, backend="interpreter") as pool:
            assert live_interpreters() == before + 2  # one per worker, loaded at construction
            run_pool(pool, [Task(i, i) for i in range(10)])
        assert pool.join(10)
        assert live_interpreters() == before

    def test_a_shut_down_executor_refuses_work(self, no_thread_leak) -> None:
        from concurrent.futures import InterpreterPoolExecutor

        executor = InterpreterPoolExecutor(1)
        executor.shutdown()
        with Pool(1, echo, backend=executor) as pool:
            out = run_pool(pool, [Task(i, i) for i in range(3)])
        assert [t.index for t in out] == [0, 1, 2]
        assert all(isinstance(t.error, RuntimeError) and "shutdown" in str(t.error)
                   for t in out)
        with pytest.raises(RuntimeError, match="shutdown"):
            list(orderedtask.map(square, range(3), workers=1, backend=executor))
        out = list(orderedtask.map_tasks(square, range(3), workers=1, backend=executor))
        assert [t.index for t in out] == [0, 1, 2]
        assert all(isinstance(t.error, RuntimeError) for t in out)


@needs_interpreters
class TestWhatCanBeSent:
    @pytest.mark.parametrize("fn", [lambda x: x, (lambda k: lambda x: x + k)(1)],
                             ids=["lambda", "closure"])
    def test_fn_that_does_not_pickle_is_rejected_at_construction(self, backend, fn) -> None:
        with pytest.raises(TypeError, match="fn could not be pickled to send it to a subinterp"):
            orderedtask.map(fn, [1], backend=backend)
        with pytest.raises(TypeError, match="fn could not be pickled to send it to a subinterp"):
            Pool(1, fn, backend=backend)
        with pytest.raises(TypeError, match="worker_init could not be pickled"):
            Pool(1, echo, worker_init=fn, backend=backend)

    @pytest.mark.skipif(NO_EXTENSIONS, reason="ORDEREDTASK_NO_EXTENSIONS is set")
    def test_fn_from_an_extension_without_subinterpreter_support(self, no_thread_leak) -> None:
        from orderedtask._core._core_c import ReorderBuffer  # a compiled, single-phase module

        message = "fn cannot be loaded in a subinterpreter: .*does not support loading in sub"
        before = live_interpreters()
        with pytest.raises(TypeError, match=message):  # backend="interpreter": at once
            orderedtask.map(ReorderBuffer, [1], workers=3, backend="interpreter")
        assert live_interpreters() == before  # none of the three is left behind
        from concurrent.futures import InterpreterPoolExecutor

        with InterpreterPoolExecutor(1) as executor:  # an executor's: on every task
            out = list(orderedtask.map_tasks(ReorderBuffer, range(3), backend=executor))
        assert [t.index for t in out] == [0, 1, 2]
        assert all(isinstance(t.error, TypeError) and "cannot be loaded" in str(t.error)
                   for t in out)

    def test_a_scripts_main_is_imported_as_in_multiprocessing(self, tmp_path) -> None:
        script = tmp_path / "job.py"
        script.write_text(textwrap.dedent("""
            import orderedtask

            OFFSET = 10

            class Result:
                def __init__(self, value):
                    self.value = value

            def shift(x):
                return Result(x + OFFSET)  # a global and a class of __main__

            if __name__ == "__main__":
                out = orderedtask.map(shift, range(100), workers=2, backend="interpreter")
                print(sum(result.value for result in out))
            """))
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == str(sum(range(100)) + 1000)
        assert done.stderr == ""

    def test_main_without_a_file_is_rejected_at_construction(self) -> None:
        code = textwrap.dedent("""
            import orderedtask
            def shift(x):
                return x + 1
            try:
                orderedtask.map(shift, range(3), backend="interpreter")
            except TypeError as exc:
                print(exc)
            """)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert "defined in __main__ of a session without a script file" in done.stdout

    def test_exit_with_pools_still_open_is_clean(self, tmp_path) -> None:
        # At exit a pool's finalizer wakes its workers; one closing its interpreter while the
        # runtime finalizes the rest crashed CPython 3.14 (SIGSEGV) before the exit hook.
        script = tmp_path / "leave.py"
        script.write_text(textwrap.dedent("""
            import orderedtask
            from orderedtask import Pool, Task

            def echo(workerlocal, task):
                task.output = task.input

            if __name__ == "__main__":
                idle = Pool(2, echo, backend="interpreter")
                idle.enqueue(Task(0, 0))
                print(next(idle.results()).output)
                unused = Pool(2, echo, backend="interpreter")
                for x in orderedtask.map(abs, range(100_000), workers=2, backend="interpreter"):
                    if x > 300:
                        break
            """))
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, (done.returncode, done.stderr)
        assert done.stdout == "0\n"
        assert done.stderr == ""


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="this Python has subinterpreters")
def test_interpreter_backend_needs_3_14() -> None:
    for call in (lambda: orderedtask.map(square, [1], backend="interpreter"),
                 lambda: Pool(1, echo, backend="interpreter")):
        with pytest.raises(ValueError, match=r"needs Python 3\.14 or newer"):
            call()
