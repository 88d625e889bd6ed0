"""The accounting rule, defect class by defect class: nothing lost, nothing hangs, nothing leaks.

Every test here reproduces a way the engine before the rewrite lost a task's fate, hung or
leaked (README, "Guarantees"): a whole batch failing, a thread of the pool deadlocking on
itself, a refused consumer, a starting worker process that terminate() could not stop, a pool
kept alive by its own threads, items waiting for the next pull, idle workers ignoring queued
work, and backends that disagreed about a task's fields.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import threading
import time
import weakref
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

import orderedtask
from faults import (DIE, OK, RAISE, SET_THEN_RAISE, UNPICKLABLE_INPUT, Item, check_outcome,
                    run_item, run_task)
from orderedtask import Pool, PoolClosed, Task, WorkerDied

pytestmark = pytest.mark.timeout(120)

WAIT = 20.0


def wait_until(predicate, what: str, seconds: float = WAIT) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def produce(pool: Pool, tasks: list) -> threading.Thread:
    def run() -> None:
        pool.enqueue_many(tasks)
        pool.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# -- a batch that fails as a whole: every item keeps that error, in place ---------------------


def test_map_tasks_keeps_a_dead_worker_on_each_item_and_goes_on(no_thread_leak) -> None:
    items = [Item(i, DIE if i == 40 else OK) for i in range(200)]
    tasks = list(orderedtask.map_tasks(run_item, items, workers=2, backend="process"))
    assert [t.index for t in tasks] == list(range(200))  # nothing lost, nothing twice
    died = [t.index for t in tasks if isinstance(t.error, WorkerDied)]
    assert 40 in died
    for task, item in zip(tasks, items):
        check_outcome(item, task.output, task.error, deaths=True)


def test_map_raises_a_dead_workers_error_at_its_position(no_thread_leak) -> None:
    items = [Item(i, DIE if i == 40 else OK) for i in range(200)]
    got = []
    with pytest.raises(WorkerDied, match="died"):
        for value in orderedtask.map(run_item, items, workers=2, backend="process"):
            got.append(value)
    assert got == [i * 2 for i in range(len(got))] and len(got) <= 40


def test_decode_keeps_a_refusing_executors_error_on_each_message(no_thread_leak) -> None:
    executor = ThreadPoolExecutor(1)
    executor.shutdown()
    tasks = list(orderedtask.decode([b'{"a": 1}', b"[2]"], backend=executor))
    assert [t.index for t in tasks] == [0, 1]
    assert all(isinstance(t.error, RuntimeError) and "shutdown" in str(t.error) for t in tasks)


def test_map_raises_a_refusing_executors_error() -> None:
    executor = ThreadPoolExecutor(1)
    executor.shutdown()
    with pytest.raises(RuntimeError, match="shutdown"):
        list(orderedtask.map(abs, range(10), backend=executor))


def test_a_batch_error_from_a_broken_process_executor_stays_on_its_items() -> None:
    with ProcessPoolExecutor(1) as executor:
        items = [Item(i, DIE if i == 3 else OK) for i in range(20)]
        tasks = list(orderedtask.map_tasks(run_item, items, workers=1, backend=executor))
    assert [t.index for t in tasks] == list(range(20))
    assert isinstance(tasks[3].error, Exception)  # BrokenProcessPool, kept, not lost
    assert all(t.error is not None or t.output == t.index * 2 for t in tasks)


def test_an_input_whose_pickling_raises_anything_fails_only_itself(no_thread_leak) -> None:
    class Weird:
        def __reduce__(self):
            raise RecursionError("deep")  # neither TypeError nor PicklingError

    inputs = [1, Weird(), 3]
    tasks = list(orderedtask.map_tasks(abs, inputs, workers=1, backend="process"))
    assert [(t.output, type(t.error)) for t in tasks] == [(1, type(None)), (None, TypeError),
                                                         (3, type(None))]
    assert "could not be pickled" in str(tasks[1].error)


@pytest.mark.parametrize("backend", ["process", "executor"])
def test_a_batch_of_nothing_but_unpicklable_inputs_keeps_each_items_own_error(
        backend, no_thread_leak) -> None:
    # Found by the long fuzz profile: with no input left to send, the batch came back as "no
    # outcome came back" instead of each item's pickling error.
    executor = ProcessPoolExecutor(1) if backend == "executor" else None
    try:
        with Pool(1, run_task, backend=executor or backend) as pool:
            pool.enqueue(Task(0, Item(0, UNPICKLABLE_INPUT)))
            pool.close()
            task = next(pool.results())
        assert isinstance(task.error, TypeError) and "input of task 0" in str(task.error)
    finally:
        if executor is not None:
            executor.shutdown()


def test_the_cli_reports_a_dead_worker_per_line_and_goes_on(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "dying.py").write_text(
        "import os\n"
        "def fn(line):\n"
        "    if line == 'die':\n"
        "        os._exit(3)\n"
        "    return line.upper()\n")
    lines = ["a", "b", "die", "c", "d"]
    package_parent = str(Path(orderedtask.__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, "-m", "orderedtask", "map", "--fn", "dying:fn", "--backend", "process",
         "--workers", "1"], input="\n".join(lines) + "\n", capture_output=True, text=True,
        cwd=tmp_path, timeout=120,
        env={**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{package_parent}"})
    assert done.returncode == 1, done.stderr
    out = done.stdout.split()
    assert out == [x.upper() for x in lines if x != "die"] or set(out) <= {"A", "B", "C", "D"}
    assert "line 3: WorkerDied" in done.stderr
    assert "lines failed" in done.stderr


# -- threads of the pool never deadlock on the pool ------------------------------------------


def test_a_worker_enqueueing_into_its_own_full_pool_fails_instead_of_hanging(
        twin, no_thread_leak) -> None:
    holder: dict = {}

    def fn(workerlocal, task):
        if task.index == 0:
            holder["pool"].enqueue(Task(1000 + task.index))  # the window (1) is full

    with Pool(1, fn, window=1) as pool:
        holder["pool"] = pool
        pool.enqueue(Task(0))
        task = next(pool.results())  # the worker's enqueue failed at once: nothing hangs
        pool.close()
    assert isinstance(task.error, RuntimeError)
    assert "one of the pool's own workers" in str(task.error)


def test_a_worker_cannot_become_the_consumer(twin, no_thread_leak) -> None:
    holder: dict = {}
    tried = threading.Event()

    def fn(workerlocal, task):
        try:
            next(holder["pool"].results())
        finally:
            tried.set()

    with Pool(1, fn) as pool:
        holder["pool"] = pool
        pool.enqueue(Task(0))
        assert tried.wait(WAIT)  # before any consumer claimed the pool
        pool.close()
        (task,) = list(pool.results())
    assert isinstance(task.error, RuntimeError) and "cannot iterate its results" in str(task.error)


def test_a_refused_async_consumer_stays_refused(twin, no_thread_leak) -> None:
    async def main() -> list[int]:
        with Pool(1, lambda wl, t: setattr(t, "output", t.index)) as pool:
            real = pool.aresults()
            first = asyncio.ensure_future(real.__anext__())
            await asyncio.sleep(0.01)  # the real consumer has claimed the pool
            second = pool.aresults()
            for _ in range(2):  # refused, and again when it simply asks once more
                with pytest.raises(RuntimeError, match="already being iterated"):
                    await second.__anext__()
            pool.enqueue_many([Task(i) for i in range(3)])
            pool.close()
            got = [(await first).index]
            got += [task.index async for task in real]  # the real one neither hangs nor loses
            return got

    assert asyncio.run(asyncio.wait_for(main(), WAIT)) == [0, 1, 2]


# -- terminate() stops workers in every state -------------------------------------------------


def slow_init(workerlocal: dict) -> None:
    time.sleep(60)


def test_terminate_stops_a_process_worker_that_is_still_starting(no_thread_leak) -> None:
    before = set(multiprocessing.active_children())
    pool = Pool(1, run_task, backend="process", worker_init=slow_init)
    wait_until(lambda: set(multiprocessing.active_children()) - before, "the child to start")
    started = time.monotonic()
    pool.terminate()
    assert pool.join(10), "the worker thread is still waiting for its child"
    assert time.monotonic() - started < 10
    wait_until(lambda: not (set(multiprocessing.active_children()) - before), "the child to go")
    with pytest.raises(PoolClosed):
        pool.enqueue(Task(0, Item(0)))


# -- a pool is not kept alive by its own threads ----------------------------------------------


class Owner:
    """Owns a pool whose fn is one of its own bound methods: a cycle through the pool."""

    def __init__(self) -> None:
        self.pool = Pool(2, self.handle)
        self.seen = 0

    def handle(self, workerlocal, task) -> None:
        self.seen += 1
        task.output = task.input


def pool_threads() -> int:
    return sum(thread.name.startswith("orderedtask") for thread in threading.enumerate())


@pytest.mark.parametrize("backend", ["thread", "executor"])
def test_a_pool_whose_fn_refers_to_it_is_collected_and_stops(twin, backend) -> None:
    executor = ThreadPoolExecutor(2) if backend == "executor" else None
    before = pool_threads()
    owner = Owner() if executor is None else None
    if executor is not None:
        class ExecutorOwner(Owner):
            def __init__(self) -> None:
                self.pool = Pool(2, self.handle, backend=executor)
                self.seen = 0
        owner = ExecutorOwner()
    owner.pool.enqueue(Task(0, 0))
    assert next(owner.pool.results()).output == 0
    engine = weakref.ref(owner.pool._engine)
    del owner
    for _ in range(3):
        gc.collect()
    wait_until(lambda: pool_threads() <= before, "the pool's threads to exit")
    # A thread that was finishing may drop its last reference after the passes above.
    wait_until(lambda: gc.collect() >= 0 and engine() is None, "the engine to be freed")
    if executor is not None:
        executor.shutdown()


def test_a_map_whose_fn_refers_to_its_stream_is_collected(twin) -> None:
    before = pool_threads()
    holder: dict = {}

    def fn(x):
        holder.get("stream")  # fn reaches the stream: a cycle through the workers' context
        return x

    stream = orderedtask.map(fn, iter(int, 1), workers=2)  # endless
    holder["stream"] = stream
    assert next(stream) == 0
    del stream, holder
    for _ in range(3):
        gc.collect()
    wait_until(lambda: pool_threads() <= before, "the map's threads to exit")


# -- liveness ---------------------------------------------------------------------------------


class Burst:
    """Yields ``count`` items, then blocks until released: a quiet Kafka partition."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.release = threading.Event()

    def __iter__(self):
        yield from range(self.count)
        self.release.wait(WAIT)


@pytest.mark.parametrize("api", ["map", "map_tasks", "amap"])
def test_items_already_pulled_come_out_before_the_next_pull_returns(twin, api,
                                                                    no_thread_leak) -> None:
    source = Burst(5)
    if api == "amap":
        async def main() -> list:
            results = orderedtask.amap(abs, source, workers=2)
            return [await results.__anext__() for _ in range(5)]
        got = asyncio.run(asyncio.wait_for(main(), WAIT))
    else:
        results = getattr(orderedtask, api)(abs, source, workers=2)
        got = [next(results) for _ in range(5)]
    got = [x.output if isinstance(x, Task) else x for x in got]
    assert got == list(range(5))  # while the source still blocks in its next pull
    source.release.set()


def test_an_idle_worker_takes_queued_work_while_another_runs_a_slow_task(
        twin, no_thread_leak) -> None:
    slow_started, fast_done, release = threading.Event(), threading.Event(), threading.Event()

    def fn(workerlocal, task):
        if task.input == "slow":
            slow_started.set()
            release.wait(WAIT)
        elif task.input == "fast":
            fast_done.set()

    with Pool(2, fn, window=4096) as pool:
        # Many quick tasks first: the measured batch size grows large.
        pool.enqueue_many([Task(i) for i in range(2000)])
        results = pool.results()
        for _ in range(2000):
            next(results)
        assert pool.stats()["batch"] > 1  # batches have grown
        pool.enqueue(Task(2000, "slow"))
        assert slow_started.wait(WAIT)
        pool.enqueue(Task(2001, "fast"))
        assert fast_done.wait(WAIT), "the idle worker never took the queued task"
        release.set()
        pool.close()
        assert [t.index for t in results] == [2000, 2001]


# -- every backend tells the same story about a task ------------------------------------------


BACKENDS = ["thread", "process", "thread-executor", "process-executor"]


def make_backend(name: str):
    if name == "thread-executor":
        return ThreadPoolExecutor(2)
    if name == "process-executor":
        return ProcessPoolExecutor(2)
    return name


def outcome(task: Task) -> tuple:
    error = task.error
    return (task.index, task.output, None if error is None else (type(error), str(error)))


def test_backends_agree_about_every_field_of_a_task(no_thread_leak) -> None:
    items = [Item(i, (OK, RAISE, SET_THEN_RAISE)[i % 3]) for i in range(30)]
    seen = {}
    for name in BACKENDS:
        backend = make_backend(name)
        with Pool(2, run_task, backend=backend) as pool:
            out = [outcome(t) for t in _all(pool, [Task(i, item) for i, item in enumerate(items)])]
        if not isinstance(backend, str):
            backend.shutdown()
        seen[name] = out
        backend = make_backend(name)
        stream = orderedtask.map_tasks(run_item, items, workers=2, backend=backend)
        seen[name + " map_tasks"] = [outcome(t) for t in stream]
        if not isinstance(backend, str):
            backend.shutdown()
    reference = seen["thread"]
    for name, out in seen.items():
        if name.endswith("map_tasks"):
            for (index, output, error), item in zip(out, items):
                check_outcome(item, output, None if error is None else error[0](error[1]))
            continue
        assert out == reference, name
    assert reference[2][1] == "partial"  # what fn set before raising stays, on every backend


def _all(pool: Pool, tasks: list) -> list[Task]:
    thread = produce(pool, tasks)
    out = list(pool.results())
    thread.join(WAIT)
    return out


# -- the source: errors end the stream at their position, never as a clean end ---------------


def broken(count: int, error: BaseException):
    yield from range(count)
    raise error


@pytest.mark.parametrize("api", ["map", "map_tasks", "decode"])
def test_an_error_of_the_source_is_raised_after_the_items_before_it(twin, api) -> None:
    fn = {"map": orderedtask.map, "map_tasks": orderedtask.map_tasks}.get(api)
    source = broken(50, OSError("the broker went away"))
    if api == "decode":
        source = (b"%d" % i for i in broken(50, OSError("the broker went away")))
        results = orderedtask.decode(source, decoder="json")
    else:
        results = fn(abs, source, workers=2)
    got = []
    with pytest.raises(OSError, match="broker went away"):
        for x in results:
            got.append(x)
    assert len(got) == 50


def test_a_malformed_indexed_pair_is_raised_at_its_position(twin) -> None:
    pairs = [(0, 1), (1, 2), "oops", (3, 4)]
    got = []
    with pytest.raises(TypeError, match=r"\(index, input\) pairs, got str at position 2"):
        for task in orderedtask.map_tasks(abs, pairs, indexed=True, workers=1):
            got.append(task.index)
    assert got == [0, 1]


def test_unpicklable_input_fails_only_itself_in_map_tasks(no_thread_leak) -> None:
    items = [Item(i, UNPICKLABLE_INPUT if i == 1 else OK) for i in range(4)]
    tasks = list(orderedtask.map_tasks(run_item, items, workers=1, backend="process"))
    for task, item in zip(tasks, items):
        check_outcome(item, task.output, task.error)
