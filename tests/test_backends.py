"""The process backend and the Executor backend (including a real dask.distributed cluster)."""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

import orderedtask
from orderedtask import _core
from orderedtask._backends import _executor
from support import echo, fail_on_7, failing_init, run_pool, square, unpicklable_output
from orderedtask import Pool, PoolClosed, Task, WorkerDied, WorkerInitError

# Functions below live at module level: worker processes import them by name.




def square_task(workerlocal: dict, task: Task) -> None:
    task.output = task.input * task.input


def pid_task(workerlocal: dict, task: Task) -> None:
    task.output = (workerlocal["pid"], workerlocal["inits"], os.getpid())


def remember_pid(workerlocal: dict) -> None:
    workerlocal["pid"] = os.getpid()
    workerlocal["inits"] = workerlocal.get("inits", 0) + 1






def die_on_13(workerlocal: dict, task: Task) -> None:
    if task.input == 13 and not workerlocal.get("spare"):
        os.kill(os.getpid(), signal.SIGKILL)
    task.output = task.input


def exit_on_5(workerlocal: dict, task: Task) -> None:
    if task.input == 5:
        os._exit(3)
    task.output = task.input






@pytest.fixture
def process_pool_factory(no_thread_leak):
    pools: list[Pool] = []

    def make(*args, **kwargs) -> Pool:
        pool = Pool(*args, backend="process", **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.terminate()
        assert pool.join(10)


class TestProcessBackend:
    def test_map_in_order(self, no_thread_leak) -> None:
        items = list(range(3000))
        assert list(orderedtask.map(square, items, workers=2, backend="process")) == [
            x * x for x in items]

    def test_pool_in_order_with_gaps(self, process_pool_factory) -> None:
        pool = process_pool_factory(2, square_task)
        indices = [i * 3 + (i % 2) for i in range(500)]
        out = run_pool(pool, [Task(i, i) for i in indices])
        assert [t.index for t in out] == indices
        assert [t.output for t in out] == [i * i for i in indices]
        assert pool.watermark == indices[-1]

    def test_workerlocal_and_worker_init_per_process(self, process_pool_factory) -> None:
        pool = process_pool_factory(2, pid_task, worker_init=remember_pid)
        out = run_pool(pool, [Task(i, i) for i in range(400)])
        pids = {t.output[2] for t in out}
        assert os.getpid() not in pids
        assert 1 <= len(pids) <= 2
        assert all(t.output[0] == t.output[2] and t.output[1] == 1 for t in out)

    def test_exception_stays_on_its_task(self, process_pool_factory) -> None:
        out = run_pool(process_pool_factory(2, fail_on_7), [Task(i, i) for i in range(20)])
        assert [t.index for t in out] == list(range(20))
        assert isinstance(out[7].error, KeyError) and out[7].error.args == ("seven",)
        assert all(t.error is None and t.output == t.index for t in out if t.index != 7)

    @pytest.mark.parametrize("fn, victim", [(die_on_13, 13), (exit_on_5, 5)], ids=["sigkill", "os_exit"])
    def test_dead_worker_fails_its_batch_and_is_replaced(self, process_pool_factory, fn, victim) -> None:
        pool = process_pool_factory(2, fn)
        out = run_pool(pool, [Task(i, i) for i in range(200)])
        assert [t.index for t in out] == list(range(200))
        died = [t for t in out if t.error is not None]
        assert victim in {t.index for t in died}
        for task in died:
            assert isinstance(task.error, WorkerDied)
            assert "died" in str(task.error)
        assert all(t.output == t.index for t in out if t.error is None)
        # Every task is accounted for, and the survivors are the majority.
        assert len(died) < 200

    def test_pool_goes_on_after_a_death(self, no_thread_leak) -> None:
        with Pool(1, die_on_13, backend="process") as pool:
            pool.enqueue(Task(13, 13))
            it = pool.results()
            dead = next(it)
            assert isinstance(dead.error, WorkerDied)
            pool.enqueue(Task(14, 14))
            again = next(it)
            assert (again.index, again.output, again.error) == (14, 14, None)
            pool.close()
            assert list(it) == []

    def test_unpicklable_output_fails_only_its_task(self, process_pool_factory) -> None:
        out = run_pool(process_pool_factory(2, unpicklable_output), [Task(i, i) for i in range(5)])
        assert isinstance(out[2].error, TypeError)
        assert "could not be pickled" in str(out[2].error)
        assert [t.output for t in out if t.index != 2] == [0, 1, 3, 4]

    def test_unpicklable_input_fails_only_its_task(self, process_pool_factory) -> None:
        tasks = [Task(0, 0), Task(1, threading.Lock()), Task(2, 2)]
        out = run_pool(process_pool_factory(1, echo), tasks)
        assert isinstance(out[1].error, TypeError)
        assert "could not be pickled" in str(out[1].error)
        assert [(t.output, t.error) for t in (out[0], out[2])] == [(0, None), (2, None)]

    def test_unpicklable_fn_is_rejected_at_construction(self) -> None:
        with pytest.raises(TypeError, match="fn cannot be pickled"):
            Pool(2, lambda local, task: None, backend="process")
        with pytest.raises(TypeError, match="fn cannot be pickled"):
            orderedtask.map(lambda x: x, [1], backend="process")

    def test_worker_init_failure_closes_the_pool(self, no_thread_leak) -> None:
        pool = Pool(1, echo, worker_init=failing_init, backend="process")
        try:
            pool.enqueue_many([Task(i, i) for i in range(5)])  # before the child reports back
            out = list(pool.results())  # ends: the failure closed the pool
            assert [t.index for t in out] == list(range(5))
            for task in out:
                assert isinstance(task.error, WorkerInitError)
                assert isinstance(task.error.__cause__, ValueError)
            with pytest.raises(PoolClosed, match="worker_init failed") as info:
                pool.enqueue(Task(5, 5))
            assert isinstance(info.value.__cause__, ValueError)
        finally:
            pool.terminate()
            pool.join(10)

    def test_bad_backend(self) -> None:
        with pytest.raises(ValueError, match="backend must be"):
            Pool(1, echo, backend="fiber")
        with pytest.raises(TypeError, match="backend must be"):
            Pool(1, echo, backend=3)


class TestExecutorBackend:
    @pytest.mark.parametrize("make", [ThreadPoolExecutor, ProcessPoolExecutor], ids=["threads", "processes"])
    def test_map_and_pool_in_order(self, make, no_thread_leak) -> None:
        with make(2) as executor:
            items = list(range(2000))
            assert list(orderedtask.map(square, items, workers=3, backend=executor)) == [
                x * x for x in items]
            with Pool(3, pid_task, worker_init=remember_pid, backend=executor) as pool:
                out = run_pool(pool, [Task(i, i) for i in range(300)])
            assert [t.index for t in out] == list(range(300))
            # worker_init ran once per executor worker, and workerlocal persisted across batches
            assert all(t.output[1] == 1 for t in out)

    def test_a_new_pool_never_inherits_an_old_pools_workerlocal(self, no_thread_leak) -> None:
        # Regression: tokens were built from id(); a freed pool's id is reused at once, so the
        # next pool found the old (empty) workerlocal and its worker_init never ran.
        with ThreadPoolExecutor(1) as executor:
            assert list(orderedtask.map(square, range(50), workers=1, backend=executor)) == [
                x * x for x in range(50)]
            for _ in range(5):
                with Pool(1, pid_task, worker_init=remember_pid, backend=executor) as pool:
                    out = run_pool(pool, [Task(i, i) for i in range(20)])
                assert [t.error for t in out] == [None] * 20
                assert all(t.output[1] == 1 for t in out)
        runner = _core.Runner(_core.POOL, echo)
        tokens = {_executor.ExecutorBackend(executor, runner, None).token for _ in range(100)}
        assert len(tokens) == 100

    def test_executor_threads_keep_only_recent_workerlocals(self) -> None:
        inits: list[str] = []

        def run(token: str) -> None:
            _executor.run_on_executor(token, _core.Runner(_core.POOL, echo),
                                      lambda wl: inits.append(token), [0], [0])

        def in_one_thread() -> int:
            first = "pool-0"
            run(first)
            for n in range(1, _executor.WORKERLOCALS_PER_THREAD):
                run(f"pool-{n}")
                run(first)  # recently used: kept
            run("one-more")  # pushes out the least recently used, pool-1
            run(first)
            run("pool-1")
            return len(_executor._local.workerlocals)

        with ThreadPoolExecutor(1) as executor:
            held = executor.submit(in_one_thread).result()
        assert held == _executor.WORKERLOCALS_PER_THREAD
        assert inits.count("pool-0") == 1 and inits.count("pool-1") == 2

    def test_executor_failure_fails_the_batch(self, no_thread_leak) -> None:
        executor = ThreadPoolExecutor(1)
        executor.shutdown()
        with Pool(1, echo, backend=executor) as pool:
            out = run_pool(pool, [Task(i, i) for i in range(3)])
        assert [t.index for t in out] == [0, 1, 2]
        assert all(isinstance(t.error, RuntimeError) for t in out)


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, silence_logs=50)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


class TestDask:
    def test_map_and_pool_on_a_local_cluster(self, dask_client) -> None:
        executor = dask_client.get_executor()
        items = list(range(1000))
        assert list(orderedtask.map(square, items, workers=4, backend=executor)) == [
            x * x for x in items]
        with Pool(4, pid_task, worker_init=remember_pid, backend=executor, window=64) as pool:
            out = run_pool(pool, [Task(i * 2, i) for i in range(300)])
        assert [t.index for t in out] == [i * 2 for i in range(300)]
        assert os.getpid() not in {t.output[2] for t in out}
        assert pool.watermark == 598
