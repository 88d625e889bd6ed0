"""Fault injection: a failure at every boundary a task crosses, and the invariant after each.

Randomised with Hypothesis over APIs, backends, both twins, windows, worker counts and a
fault per item (fn raising, slow items, inputs and outputs that cannot be pickled or
unpickled either way, errors that cannot cross, worker processes dying while or just after
running a batch), plus the source raising or stalling and worker_init failing. Ctrl-C lands
in the producer and the consumer: at every point of the pure-Python twin's code where CPython
could raise it (a trace function does), and as a real SIGINT while either twin waits.

The invariant, after every run: every accepted task comes out exactly once, in order, with
its output or an error that says what happened; what termination dropped is reported, never
silently missing; no thread or child process is left; nothing hangs (every wait is bounded).

``ORDEREDTASK_FUZZ=long`` runs many more examples (``ORDEREDTASK_FUZZ_EXAMPLES=N`` to choose).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import orderedtask
import orderedtask._core
from support import sigint_after
from faults import (DEATHS, DIE, PROCESS_FAULTS, THREAD_FAULTS, Item, check_outcome, run_item,
                    run_task)
from orderedtask import Pool, PoolClosed, PoolTerminated, Task, WorkerInitError

pytestmark = pytest.mark.timeout(600)

LONG = os.environ.get("ORDEREDTASK_FUZZ") == "long"
EXAMPLES = int(os.environ.get("ORDEREDTASK_FUZZ_EXAMPLES", "400" if LONG else "0")) or None
WAIT = 30.0
PACKAGE = str(Path(orderedtask.__file__).resolve().parent)


def examples(default: int) -> int:
    return EXAMPLES or default


def fuzz(default: int):
    return settings(max_examples=examples(default), deadline=None, derandomize=not LONG,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def own_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("orderedtask")]


def assert_nothing_left(threads_before: set, children_before: set) -> None:
    """No thread of ours and no child process outlive the run (bounded waits)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        threads = [t for t in own_threads() if t not in threads_before]
        children = set(multiprocessing.active_children()) - children_before
        if not threads and not children:
            return
        time.sleep(0.01)
    raise AssertionError(f"left behind: threads {[t.name for t in threads]}, "
                         f"children {children}")


# -- scenarios ---------------------------------------------------------------------------------

THREAD_BACKENDS = ["thread", "thread-executor"]
PROCESS_BACKENDS = ["process", "process-executor"]


def backend_of(name: str):
    if name == "thread-executor":
        return ThreadPoolExecutor(2)
    if name == "process-executor":
        return ProcessPoolExecutor(2)
    return name


def faults_for(backend: str) -> tuple[str, ...]:
    if backend == "process":
        return PROCESS_FAULTS
    if backend == "process-executor":  # a dying worker breaks the user's executor: not ours
        return tuple(f for f in PROCESS_FAULTS if f not in DEATHS)
    return THREAD_FAULTS


@st.composite
def scenarios(draw, backends: list[str]):
    backend = draw(st.sampled_from(backends))
    count = draw(st.integers(0, 40))
    faults = draw(st.lists(st.sampled_from(faults_for(backend)), min_size=count, max_size=count))
    return {
        "api": draw(st.sampled_from(["pool", "map", "map_tasks"])),
        "backend": backend,
        "items": [Item(i, fault) for i, fault in enumerate(faults)],
        "window": draw(st.sampled_from([None, 1, 2, 7, 64])),
        "workers": draw(st.integers(1, 3)),
        "source": draw(st.sampled_from(["ok", "ok", "raise", "stall"])),
        "at": draw(st.integers(0, max(0, count))),
        "leave_after": draw(st.sampled_from([None, None, None, 0, 3])),
    }


class SourceFailed(Exception):
    pass


def source(items: list[Item], kind: str, at: int):
    for position, item in enumerate(items):
        if position == at:
            if kind == "raise":
                raise SourceFailed(f"the source failed at {at}")
            if kind == "stall":
                time.sleep(0.02)
        yield item
    if kind == "raise" and at >= len(items):
        raise SourceFailed(f"the source failed at {at}")


def run_scenario(case: dict) -> None:
    """Runs one scenario and checks the invariant on what came out."""
    items, kind, at = case["items"], case["source"], case["at"]
    backend = backend_of(case["backend"])
    deaths = any(item.fault in DEATHS for item in items)
    raises_at = at if kind == "raise" else None
    got: list = []
    error: BaseException | None = None
    try:
        if case["api"] == "pool":
            got, error = _run_pool(case, backend, items, kind, at)
        else:
            stream = getattr(orderedtask, case["api"])(
                run_item, source(items, kind, at), workers=case["workers"],
                window=case["window"], backend=backend)
            try:
                for value in stream:
                    got.append(value)
                    if case["leave_after"] is not None and len(got) > case["leave_after"]:
                        stream.close()  # leaving early: nothing may hang or leak
                        break
            except BaseException as exc:  # noqa: BLE001 - checked below
                error = exc
    finally:
        if not isinstance(backend, str):
            backend.shutdown(wait=True)
    left_early = case["leave_after"] is not None and len(got) > case["leave_after"]
    expected = items if raises_at is None else items[:raises_at]
    if case["api"] == "map":
        # Outputs in order up to the first failure, which is raised in place.
        for item, value in zip(expected, got):
            assert value == item.value * 2, (item, value)
        if left_early:
            return
        if error is None:
            assert len(got) == len(expected), (case, got)
            assert not any(_fails(item, False) for item in expected), case
        elif isinstance(error, SourceFailed):
            assert len(got) == len(expected), (len(got), len(expected))
        else:
            assert len(got) < len(expected), (case, error)
            assert _fails(expected[len(got)], deaths), (case, len(got), error)
        return
    # Pool and map_tasks: every item once, in order, each with its outcome.
    if left_early:
        assert [t.index for t in got] == list(range(len(got)))
        return
    if raises_at is not None:
        assert isinstance(error, SourceFailed), (case, error)
    else:
        assert error is None, (case, error)
    assert [t.index for t in got] == [item.value for item in expected], case
    for task, item in zip(got, expected):
        if case["api"] == "pool":
            assert task.input is item
        check_outcome(item, task.output, task.error, deaths=deaths)


def _fails(item: Item, deaths: bool) -> bool:
    from faults import OK, SLOW, DIE_AFTER
    return item.fault not in (OK, SLOW, DIE_AFTER) or deaths


def _run_pool(case, backend, items, kind, at):
    got, error = [], None
    with Pool(case["workers"], run_task, window=case["window"], backend=backend) as pool:
        produced: dict = {}

        def produce() -> None:
            try:
                for item in source(items, kind, at):
                    pool.enqueue(Task(item.value, item))
            except BaseException as exc:  # noqa: BLE001 - the producer's own failure
                produced["error"] = exc
            finally:
                pool.close()

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        results = pool.results()
        for task in results:
            got.append(task)
            if case["leave_after"] is not None and len(got) > case["leave_after"]:
                results.close()
                break
        producer.join(WAIT)
        assert not producer.is_alive()
        error = produced.get("error")
        if isinstance(error, PoolClosed) and case["leave_after"] is not None:
            error = None  # the producer found the pool terminated by our leaving: expected
    assert pool.join(WAIT)
    return got, error


@fuzz(60)
@given(case=scenarios(THREAD_BACKENDS))
def test_thread_backends_keep_the_accounting_rule(twin, case) -> None:
    threads, children = set(own_threads()), set(multiprocessing.active_children())
    run_scenario(case)
    assert_nothing_left(threads, children)


@pytest.mark.skipif(sys.platform == "win32", reason="fork/kill semantics")
@fuzz(20)
@given(case=scenarios(PROCESS_BACKENDS))
def test_process_backends_keep_the_accounting_rule(twin, case) -> None:
    threads, children = set(own_threads()), set(multiprocessing.active_children())
    run_scenario(case)
    assert_nothing_left(threads, children)


def failing_init(workerlocal: dict) -> None:
    raise LookupError("no database")


@pytest.mark.parametrize("backend", ["thread", "process", "thread-executor"])
def test_a_failed_worker_start_reaches_every_task_no_worker_took(twin, backend) -> None:
    executor = backend_of(backend)
    items = [Item(i) for i in range(20)]
    with Pool(2, run_task, backend=executor, worker_init=failing_init) as pool:
        accepted = []
        for item in items:
            try:
                pool.enqueue(Task(item.value, item))
            except PoolClosed as exc:
                assert isinstance(exc.__cause__, LookupError)
                break
            accepted.append(item)
        pool.close()
        out = list(pool.results())
    if not isinstance(executor, str):
        executor.shutdown()
    assert [t.index for t in out] == [item.value for item in accepted]
    for task in out:
        assert isinstance(task.error, (WorkerInitError, LookupError)), task.error


# -- Ctrl-C in the producer and the consumer ----------------------------------------------------


class InjectAt:
    """A trace function raising KeyboardInterrupt at the n-th point where CPython could.

    CPython runs signal handlers (and so raises a Ctrl-C) between bytecodes at a function's
    entry, after a call returns, and at loop back-edges; in the pure-Python twin every loop
    calls a function, so a function's entry and return in orderedtask's code reach all of
    them. (Raising at arbitrary line events would also hit points no signal can reach, such
    as the hidden exit of a ``with`` block, where CPython then skips ``__exit__``.) The entry
    and return of the outermost call are the caller's business (the compiled twin has those
    two points too): the points counted are those inside the library.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.points = 0
        self.depth = 0
        self.fired = False

    def _point(self) -> None:
        if self.fired:
            return
        self.points += 1
        if self.points == self.n:
            self.fired = True
            raise KeyboardInterrupt(f"injected at point {self.n}")

    def __call__(self, frame, event, arg):
        if event == "call":
            if not frame.f_code.co_filename.startswith(PACKAGE):
                return None
            self.depth += 1
            if self.depth > 1:
                self._point()
            return self
        if event == "return":
            self.depth -= 1
            if self.depth > 0:
                self._point()
        return self


def interrupted(call, n: int):
    """Run ``call()`` with Ctrl-C injected at its n-th point; return (injector, exception).

    The cyclic GC is off meanwhile: it would run other objects' finalizers (an earlier pool's)
    inside the traced call, and the injection would land in them instead.
    """
    inject = InjectAt(n)
    gc.collect()
    gc.disable()
    sys.settrace(inject)
    try:
        call()
    except KeyboardInterrupt as exc:
        return inject, exc
    finally:
        sys.settrace(None)
        gc.enable()
    return inject, None


def echo(workerlocal, task) -> None:
    task.output = task.index


def drain(pool: Pool) -> tuple[list[int], BaseException | None]:
    """Consume on a thread, to the end; what came out and how it ended."""
    box: dict = {"got": []}

    def consume() -> None:
        try:
            for task in pool.results():
                box["got"].append(task.index)
        except BaseException as exc:  # noqa: BLE001 - checked by the caller
            box["error"] = exc

    thread = threading.Thread(target=consume)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), "the consumer hung"
    return box["got"], box.get("error")


def check_after_producer_interrupt(pool: Pool, before: int, batch: list[int]) -> None:
    """After Ctrl-C in enqueue: the call took effect wholly, not at all, or terminated."""
    accepted = pool.stats()["accepted"]
    assert before <= accepted <= before + len(batch)
    terminated = pool._engine.stopping
    pool.close()
    got, error = drain(pool)
    if terminated:
        # Terminated mid-update: everything not yielded is reported, nothing is invented.
        assert error is None or isinstance(error, PoolTerminated)
        assert got == sorted(got) and set(got) <= set(range(before + len(batch)))
        return
    assert error is None, error
    assert got == list(range(accepted)), (got, accepted)
    assert pool.join(WAIT)


@pytest.mark.parametrize("call", ["enqueue", "enqueue_many"])
def test_ctrl_c_at_every_point_of_a_producer_call(twin, call, no_thread_leak) -> None:
    n = 1
    while True:
        pool = Pool(2, echo, window=1000)
        pool.enqueue_many([Task(i) for i in range(5)])
        batch = [5] if call == "enqueue" else list(range(5, 15))
        if call == "enqueue":
            inject, exc = interrupted(lambda: pool.enqueue(Task(5)), n)
        else:
            inject, exc = interrupted(lambda: pool.enqueue_many([Task(i) for i in batch]), n)
        if not inject.fired:  # past the call's last point: every point was tried
            assert exc is None
            check_after_producer_interrupt(pool, 5, batch)
            assert pool.stats()["accepted"] == 5 + len(batch)
            break
        check_after_producer_interrupt(pool, 5, batch)
        pool.terminate()
        assert pool.join(WAIT)
        n += 1
    assert n > 1 or twin == "c"  # the compiled engine runs no Python code to interrupt


def test_ctrl_c_at_every_point_of_the_consumer(twin, no_thread_leak) -> None:
    n = 1
    while True:
        pool = Pool(2, echo, window=1000)
        pool.enqueue_many([Task(i) for i in range(20)])
        pool.close()
        got: list[int] = []
        results = pool.results()

        def consume() -> None:
            for task in results:
                got.append(task.index)

        inject, exc = interrupted(consume, n)
        stats = pool.stats()
        if not inject.fired:
            assert exc is None and got == list(range(20))
            break
        if not pool._engine.stopping:
            # It landed before the iteration took anything (no effect: the pool is whole), or
            # after the last task, on the way out.
            assert got in ([], list(range(20))) and stats["yielded"] == len(got)
            if not got:
                assert [t.index for t in pool.results()] == list(range(20))
            n += 1
            continue
        # Ctrl-C ends the iteration and terminates the pool; the watermark never covers a
        # task the consumer did not get, and what was dropped is counted.
        assert got == list(range(len(got)))
        assert pool.watermark == (got[-1] if got else None), (n, got, pool.watermark)
        assert stats["yielded"] == len(got)
        assert stats["accepted"] == stats["yielded"] + (20 - len(got))
        assert pool.join(WAIT)
        with pytest.raises((PoolTerminated, StopIteration)):
            next(pool.results())
        n += 1
    assert n > 1 or twin == "c"  # the compiled cursor runs no Python code to interrupt




@fuzz(12)
@given(delay=st.floats(0.0, 0.03), window=st.sampled_from([1, 3, 50]))
def test_a_real_ctrl_c_in_a_producer_waiting_for_room(twin, delay, window) -> None:
    gate = threading.Event()

    def held(workerlocal, task):
        gate.wait(WAIT)
        task.output = task.index

    pool = Pool(1, held, window=window)
    accepted = 0
    timer = None
    try:
        timer = sigint_after(delay)
        for i in range(window + 5):
            pool.enqueue(Task(i))  # waits once the window is full
            accepted += 1
        raise AssertionError("the window never filled")
    except KeyboardInterrupt:
        pass
    finally:
        if timer is not None:
            timer.join()
    gate.set()
    terminated = pool._engine.stopping  # Ctrl-C landed mid-update: the pool says so
    taken = pool.stats()["accepted"]
    if not terminated:
        # The interrupted enqueue accepted nothing; or it had returned, and the Ctrl-C landed
        # in this test's own line before it counted the task: the pool's count is the truth.
        assert taken in (accepted, accepted + 1)
    pool.close()
    got, error = drain(pool)
    if terminated:
        assert error is None or isinstance(error, PoolTerminated)
        assert got == list(range(len(got)))
    else:
        assert error is None and got == list(range(taken))
    assert pool.join(WAIT)


@fuzz(12)
@given(delay=st.floats(0.0, 0.03))
def test_a_real_ctrl_c_in_a_waiting_consumer(twin, delay) -> None:
    def slow(workerlocal, task):
        time.sleep(0.005)
        task.output = task.index

    pool = Pool(2, slow, window=100)
    pool.enqueue_many([Task(i) for i in range(100)])
    pool.close()
    results = pool.results()
    got = [next(results).index]  # iterating: 100 x 5 ms on 2 workers, so the signal lands here
    timer = None
    try:
        timer = sigint_after(delay)
        for task in results:
            got.append(task.index)
    except KeyboardInterrupt:
        results.close()  # it may have landed in this loop's own code: leave as a user would
    finally:
        if timer is not None:
            timer.join()
    assert got == list(range(len(got)))
    stats = pool.stats()
    # The loop may have been hit after a task reached its variable but before it was
    # recorded here: the pool's own count is the truth, and it adds up.
    assert stats["yielded"] - len(got) in (0, 1)
    if stats["yielded"] < 100:
        assert pool._engine.stopping
        assert stats["dropped"] + stats["yielded"] == 100
    assert pool.join(WAIT)
