"""``Pool`` behaviour, on both reorder-core twins (``twin``), with a thread-leak guard."""

from __future__ import annotations

import gc
import random
import threading
import time
from collections.abc import Callable, Iterable

import pytest

import orderedtask
from orderedtask._options import POOL_WINDOW, default_window
from orderedtask import Pool, PoolClosed, PoolTerminated, Task, WorkerInitError
from support import bad_call, collect_until_error

# A broken pool tends to hang: fail after a minute rather than the global 300 s.
pytestmark = [pytest.mark.usefixtures("twin", "no_thread_leak"), pytest.mark.timeout(60)]

WAIT = 10.0  # generous bound on waits that only guard against a hang


# -- helpers -----------------------------------------------------------------------------


def double(workerlocal, task):
    task.output = task.input * 2


class Producer(threading.Thread):
    """Enqueues ``tasks`` from its own thread, then (by default) closes the pool."""

    def __init__(self, pool: Pool, tasks: Iterable[Task], close: bool = True, barrier=None,
                 after_each: Callable[[], None] | None = None):
        super().__init__(daemon=True)
        self.pool, self.tasks, self.close, self.barrier = pool, tasks, close, barrier
        self.after_each = after_each
        self.enqueued = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if self.barrier is not None:
                self.barrier.wait(WAIT)
            for task in self.tasks:
                self.pool.enqueue(task)
                self.enqueued += 1
                if self.after_each is not None:
                    self.after_each()
        except BaseException as exc:  # noqa: BLE001 - checked by the test
            self.error = exc
        finally:
            if self.close:
                self.pool.close()

    def finish(self) -> None:
        """Join, and re-raise what the producer raised."""
        self.join(WAIT)
        assert not self.is_alive(), "producer hung"
        if self.error is not None:
            raise self.error


class Gate:
    """A worker function that blocks on ``task.index == blocked`` until ``open()``."""

    def __init__(self, blocked: int | None = 0, fn: Callable = double):
        self.blocked, self.fn = blocked, fn
        self.event = threading.Event()

    def __call__(self, workerlocal, task):
        if self.blocked is None or task.index == self.blocked:
            assert self.event.wait(WAIT), "gate never opened"
        self.fn(workerlocal, task)

    def open(self) -> None:
        self.event.set()


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def run_all(pool: Pool, tasks: list[Task]) -> list[Task]:
    """Enqueue from a producer thread, close, and collect ``results()``."""
    producer = Producer(pool, tasks)
    producer.start()
    out = list(pool.results())
    producer.finish()
    assert pool.join(WAIT)
    return out


def indices(tasks: Iterable[Task]) -> list[int]:
    return [task.index for task in tasks]


# -- ordering ----------------------------------------------------------------------------


def test_hundred_thousand_tasks_exactly_once_in_order():
    count = 100_000
    with Pool(4, double) as pool:
        producer = Producer(pool, (Task(i, i) for i in range(count)))
        producer.start()
        expected = 0
        for task in pool.results():
            assert task.index == expected and task.output == 2 * expected
            assert task.error is None
            expected += 1
        producer.finish()
    assert expected == count


@pytest.mark.parametrize("seed", [1, 2])
def test_random_latencies_and_index_gaps(seed):
    rng = random.Random(seed)
    index, tasks = 0, []
    for _ in range(300):
        index += rng.choice([1, 1, 2, 3, 17, 1000])
        tasks.append(Task(index, rng.choice([0, 0, 0.0005, 0.001, 0.002])))

    def sleepy(workerlocal, task):
        time.sleep(task.input)
        task.output = task.index

    with Pool(4, sleepy, window=16) as pool:
        out = run_all(pool, tasks)
    assert out == tasks  # the same Task objects, each once, in order
    assert all(task.output == task.index for task in out)


def test_errors_are_captured_in_place():
    def picky(workerlocal, task):
        if task.index % 7 == 3:
            raise ValueError(f"bad task {task.index}")
        task.output = task.index

    with Pool(3, picky) as pool:
        out = run_all(pool, [Task(i) for i in range(100)])
    assert indices(out) == list(range(100))
    for task in out:
        if task.index % 7 == 3:
            assert isinstance(task.error, ValueError)
            assert str(task.error) == f"bad task {task.index}"
            assert task.output is None
        else:
            assert task.error is None and task.output == task.index


def test_concurrent_producers_with_disjoint_indices():
    # Indices must exceed the last released one, so nothing may finish before every
    # producer is done: the gate holds every task until then.
    producers, per_producer = 8, 250
    total = producers * per_producer
    gate = Gate(blocked=None)
    barrier = threading.Barrier(producers)
    with Pool(4, gate, window=total) as pool:
        threads = [Producer(pool, [Task(i, i) for i in range(k, total, producers)],
                            close=False, barrier=barrier) for k in range(producers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.finish()
        gate.open()
        pool.close()
        out = list(pool.results())
    assert indices(out) == list(range(total))
    assert [task.output for task in out] == [2 * i for i in range(total)]


def test_enqueue_many():
    with Pool(2, double) as pool:
        assert pool.enqueue_many(Task(i, i) for i in range(50)) == 50
        assert pool.enqueue_many([]) == 0
        with pytest.raises(TypeError, match="Task items, not int"):
            pool.enqueue_many([Task(50, 50), 51])  # checked whole first: nothing accepted
        with pytest.raises(TypeError, match="task index must be an int"):
            pool.enqueue_many([Task(50, 50), Task("51")])
        assert core_stats(pool)["accepted"] == 50
        with pytest.raises(ValueError, match="task index 52 is already pending"):
            pool.enqueue_many([Task(51, 51), Task(52, 52), Task(52, 0)])
        assert core_stats(pool)["accepted"] == 52  # those before the refused one stay accepted
        pool.close()
        out = list(pool.results())
    assert indices(out) == list(range(50)) + [51, 52]
    assert [task.output for task in out] == [2 * i for i in range(50)] + [102, 104]


# -- lifecycle ---------------------------------------------------------------------------


def test_close_lets_accepted_tasks_finish():
    def slow(workerlocal, task):
        time.sleep(0.001)
        task.output = task.index

    pool = Pool(2, slow)
    for i in range(40):
        pool.enqueue(Task(i))
    pool.close()
    pool.close()  # idempotent
    assert "closed" in repr(pool)
    with pytest.raises(PoolClosed, match="closed"):
        pool.enqueue(Task(40))
    with pytest.raises(PoolClosed):
        pool.enqueue_many([Task(41)])
    assert [task.output for task in pool.results()] == list(range(40))
    assert list(pool.results()) == []  # ended, and stays ended
    assert pool.join(WAIT)
    pool.close()
    assert pool.stats()["closed"] is True


def test_close_wakes_a_producer_blocked_on_the_window():
    gate = Gate(blocked=0)
    with Pool(2, gate, window=3) as pool:
        producer = Producer(pool, (Task(i, i) for i in range(10)), close=False)
        producer.start()
        wait_until(lambda: producer.enqueued == 3, "the window to fill")
        pool.close()
        producer.join(WAIT)
        assert isinstance(producer.error, PoolClosed)
        gate.open()
        assert indices(pool.results()) == [0, 1, 2]  # what was accepted still comes out


def test_poolclosed_is_a_runtime_error():
    assert issubclass(PoolClosed, RuntimeError)
    assert issubclass(WorkerInitError, RuntimeError)


def test_context_manager_normal_exit_closes_and_joins():
    with Pool(3, double) as pool:
        for i in range(20):
            pool.enqueue(Task(i, i))
    assert pool.stats()["closed"] is True
    assert pool.join(0)  # __exit__ already joined the workers
    assert [task.output for task in pool.results()] == [2 * i for i in range(20)]


def test_context_manager_exception_exit_terminates_and_joins():
    gate = Gate(blocked=None)
    with pytest.raises(ZeroDivisionError):
        with Pool(2, gate) as pool:
            for i in range(10):
                pool.enqueue(Task(i, i))
            gate.open()
            1 / 0  # noqa: B018
    assert pool.join(0)
    with pytest.raises(PoolClosed):
        pool.enqueue(Task(10))
    with pytest.raises(PoolTerminated) as info:  # terminated: what was left is dropped, and said
        list(pool.results())
    assert (info.value.dropped, info.value.index) == (10, 0)


def test_terminating_after_every_task_was_released_names_the_first_dropped():
    # Every task finished and released, none consumed: the head of what is dropped is the
    # first released task (it used to be looked for among the pending ones only: None).
    with Pool(2, lambda workerlocal, task: None) as pool:
        pool.enqueue_many([Task(i) for i in range(5, 15)])
        deadline = time.monotonic() + 60
        while pool.stats()["released"] < 10:
            assert time.monotonic() < deadline, pool.stats()
            time.sleep(0.001)
        pool.terminate()
        with pytest.raises(PoolTerminated) as info:
            list(pool.results())
    assert (info.value.dropped, info.value.index) == (10, 5)


def test_terminate_drops_queued_tasks_and_ends_results():
    gate = Gate(blocked=0)
    pool = Pool(1, gate)
    for i in range(10):
        pool.enqueue(Task(i, i))
    pool.terminate()
    pool.terminate()  # idempotent
    gate.open()
    with pytest.raises(PoolTerminated, match="10 accepted task"):
        list(pool.results())
    assert pool.join(WAIT)
    with pytest.raises(PoolClosed):
        pool.enqueue(Task(10))


def test_unreferenced_pool_stops_its_workers():
    pool = Pool(3, double)
    pool.enqueue(Task(0, 0))
    del pool
    gc.collect()  # the thread-leak guard then checks that the workers exit


# -- invalid input -----------------------------------------------------------------------


@pytest.mark.parametrize(("override", "error", "match"), [
    bad_call({"workers": 0}, ValueError, "workers must be >= 1"),
    bad_call({"workers": -2}, ValueError, "workers must be >= 1"),
    bad_call({"workers": True}, TypeError, "workers must be an int"),
    bad_call({"workers": 2.0}, TypeError, "workers must be an int"),
    bad_call({"fn": "x"}, TypeError, "fn must be callable"),
    bad_call({"fn": None}, TypeError, "fn must be callable"),
    bad_call({"window": 0}, ValueError, "window must be >= 1"),
    bad_call({"window": -1}, ValueError, "window must be >= 1"),
    bad_call({"window": "a"}, TypeError, "window must be an int"),
    bad_call({"window": True}, TypeError, "window must be an int"),
    bad_call({"window": 1.5}, TypeError, "window must be an int"),
    bad_call({"worker_init": 3}, TypeError, "worker_init must be callable"),
])
def test_constructor_rejects_bad_arguments(override, error, match):
    kwargs = {"workers": 2, "fn": double, **override}
    workers, fn = kwargs.pop("workers"), kwargs.pop("fn")
    with pytest.raises(error, match=match):
        Pool(workers, fn, **kwargs)


def test_properties():
    with Pool(3, double, window=7) as pool:
        assert (pool.workers, pool.window) == (3, 7)
        assert repr(pool) == "<orderedtask.Pool workers=3 window=7 open>"
    with Pool(1, double) as pool:
        assert pool.window == default_window(POOL_WINDOW, 1)


@pytest.mark.parametrize("gil, gc_on, threshold, workers, window", [
    (True, True, 700, 1, 1024), (True, True, 700, 64, 1024),
    # GIL off: the window follows the first GC threshold (a few containers per result), but
    # keeps 256 per worker; never above the standard default.
    (False, True, 2000, 1, 500), (False, True, 2000, 2, 512), (False, True, 2000, 3, 768),
    (False, True, 2000, 16, 1024), (False, True, 20_000, 2, 1024), (False, True, 3000, 1, 750),
    (False, False, 2000, 2, 1024), (False, True, 0, 2, 1024),
])
def test_default_window_follows_the_build_and_the_gc(monkeypatch, gil, gc_on, threshold,
                                                     workers, window):
    monkeypatch.setattr(orderedtask._options, "gil_enabled", lambda: gil)
    monkeypatch.setattr(orderedtask._options.gc, "isenabled", lambda: gc_on)
    monkeypatch.setattr(orderedtask._options.gc, "get_threshold", lambda: (threshold, 10, 10))
    with Pool(workers, double) as pool:
        assert pool.window == window
    assert Pool(workers, double, window=3).window == 3  # an explicit window always wins


@pytest.mark.parametrize("thing", [5, None, (0, 1), "task"])
def test_enqueue_rejects_non_tasks(thing):
    with Pool(1, double) as pool:
        with pytest.raises(TypeError, match="takes an orderedtask.Task"):
            pool.enqueue(thing)
        assert pool.stats()["accepted"] == 0


def test_bad_index_raises_and_loses_nothing():
    gate = Gate(blocked=0)
    with Pool(2, gate) as pool:
        for i in range(10):
            pool.enqueue(Task(i, i))
        def unchanging():  # what a rejected enqueue must not touch (workers move the rest)
            stats = pool.stats()
            return stats["accepted"], stats["pending"], stats["outstanding"]

        for index, error, match in [
            (True, TypeError, r"not bool \(True\)"),
            (1.0, TypeError, "not float"),
            ("11", TypeError, "not str"),
            (-1, ValueError, "task index -1 is negative"),
            (2**64, OverflowError, f"task index {2**64} does not fit"),
            (5, ValueError, "task index 5 is already pending"),
        ]:
            before = unchanging()
            with pytest.raises(error, match=match):
                pool.enqueue(Task(index, 0))
            assert unchanging() == before
        gate.open()
        results = pool.results()
        out = [next(results) for _ in range(10)]
        assert pool.watermark == 9
        with pytest.raises(ValueError, match="task index 4 is not greater than the last released"):
            pool.enqueue(Task(4, 4))
        for i in range(10, 20):
            pool.enqueue(Task(i, i))
        pool.close()
        out += list(results)
    assert indices(out) == list(range(20))
    assert [task.output for task in out] == [2 * i for i in range(20)]
    assert all(task.error is None for task in out)


# -- the window --------------------------------------------------------------------------


@pytest.mark.parametrize("window", [1, 5, 32])
def test_window_bounds_accepted_but_unconsumed_tasks(window):
    count = 6 * window + 10
    gate = Gate(blocked=0)
    lock = threading.Lock()
    yielded = 0
    in_flight: list[int] = []  # enqueue calls that returned, minus tasks yielded

    def after_enqueue():
        with lock:
            in_flight.append(producer.enqueued - yielded)

    with Pool(3, gate, window=window) as pool:
        producer = Producer(pool, (Task(i, i) for i in range(count)), after_each=after_enqueue)
        producer.start()
        wait_until(lambda: producer.enqueued == window, "the window to fill")
        time.sleep(0.02)  # room to overshoot, if the bound did not hold
        assert producer.enqueued == window  # the head task is stuck: nothing more gets in
        assert pool.stats()["outstanding"] == window
        with pytest.raises(TimeoutError, match=f"window of {window} tasks stayed full"):
            pool.enqueue(Task(count + 1), timeout=0.05)
        with pytest.raises(TimeoutError):
            pool.enqueue(Task(count + 1), timeout=0)
        assert pool.stats()["accepted"] == window
        gate.open()
        for task in pool.results():
            with lock:
                yielded += 1
                in_flight.append(producer.enqueued - yielded)
            assert task.index == yielded - 1
        producer.finish()
    assert yielded == count
    assert max(in_flight) <= window


def test_enqueue_from_the_consumer_with_a_full_window_raises():
    with Pool(2, double, window=2) as pool:
        pool.enqueue(Task(0, 0))
        pool.enqueue(Task(1, 1))
        out = []
        for task in pool.results():
            out.append(task.index)
            if task.index == 0:
                with pytest.raises(RuntimeError, match="window of 2 tasks is full"):
                    pool.enqueue(Task(2, 2), timeout=WAIT)  # refused at once, not timed out
                pool.close()
        assert out == [0, 1]


def test_enqueue_from_the_consumer_with_room_in_the_window_works():
    with Pool(2, double, window=100) as pool:
        pool.enqueue(Task(0, 0))
        out = []
        for task in pool.results():
            out.append(task.output)
            if task.index < 20:
                pool.enqueue(Task(task.index + 1, task.index + 1))
            else:
                pool.close()
    assert out == [2 * i for i in range(21)]


# -- watermark and stats -----------------------------------------------------------------


def test_watermark_follows_the_last_yielded_index():
    gaps = [2, 5, 6, 40, 41, 1000, 2**64 - 1]
    with Pool(2, double) as pool:
        assert pool.watermark is None
        for index in gaps:
            pool.enqueue(Task(index, 1))
        assert pool.watermark is None  # nothing yielded yet
        pool.close()
        for task in pool.results():
            assert pool.watermark == task.index
        assert pool.watermark == gaps[-1]
        assert pool.stats()["watermark"] == gaps[-1]


STATS_KEYS = {"accepted", "queued", "pending", "released", "outstanding", "watermark", "closed"}


def core_stats(pool: Pool) -> dict:
    stats = pool.stats()
    assert isinstance(stats, dict) and STATS_KEYS <= stats.keys()
    return {key: stats[key] for key in STATS_KEYS}


def test_stats():
    gate = Gate(blocked=0)
    with Pool(2, gate, window=10) as pool:
        assert core_stats(pool) == {"accepted": 0, "queued": 0, "pending": 0, "released": 0,
                                    "outstanding": 0, "watermark": None, "closed": False}
        for i in range(5):
            pool.enqueue(Task(i, i))
        stats = core_stats(pool)
        assert (stats["accepted"], stats["pending"], stats["outstanding"]) == (5, 5, 5)
        assert stats["released"] == 0  # the head task is held: nothing is released
        gate.open()
        pool.close()
        assert len(list(pool.results())) == 5
        assert core_stats(pool) == {"accepted": 5, "queued": 0, "pending": 0, "released": 0,
                                    "outstanding": 0, "watermark": 4, "closed": True}


# -- worker_init and workerlocal ---------------------------------------------------------


def test_worker_init_runs_once_per_worker_and_workerlocal_is_per_thread():
    inits = []
    lock = threading.Lock()

    def init(workerlocal):
        with lock:
            inits.append(threading.get_ident())
        workerlocal["thread"] = threading.get_ident()
        workerlocal["count"] = 0

    def fn(workerlocal, task):
        workerlocal["count"] += 1
        time.sleep(0.0002)
        task.output = (workerlocal["thread"], threading.get_ident())

    with Pool(4, fn, worker_init=init) as pool:
        out = run_all(pool, [Task(i) for i in range(200)])
    assert len(inits) == 4 and len(set(inits)) == 4
    assert all(owner == runner for owner, runner in (task.output for task in out))
    assert {runner for runner, _ in (task.output for task in out)} <= set(inits)


def test_worker_init_failure_fails_queued_tasks_in_place():
    originals = []
    release = threading.Event()

    def init(workerlocal):
        assert release.wait(WAIT)
        exc = OSError(f"no connection {len(originals)}")
        originals.append(exc)
        raise exc

    with Pool(2, double, worker_init=init) as pool:
        for i in range(5):
            pool.enqueue(Task(i, i))
        release.set()
        out = list(pool.results())  # ends: the pool closed itself
        assert indices(out) == list(range(5))
        for task in out:
            assert isinstance(task.error, WorkerInitError)
            assert task.error.__cause__ in originals
            assert "worker_init failed" in str(task.error)
        with pytest.raises(PoolClosed, match="worker_init failed") as raised:
            pool.enqueue(Task(5, 5))
        assert raised.value.__cause__ in originals
        assert pool.stats()["closed"] is True


def test_worker_init_failure_before_any_task():
    failure = KeyError("config")

    def init(workerlocal):
        raise failure

    with Pool(3, double, worker_init=init) as pool:
        assert pool.join(WAIT)  # every worker gave up
        with pytest.raises(PoolClosed) as raised:
            pool.enqueue(Task(0))
        assert raised.value.__cause__ is failure
        assert list(pool.results()) == []


def test_join_from_a_worker_is_refused():
    pools: list[Pool] = []

    def fn(workerlocal, task):
        pools[0].join(0)

    with Pool(1, fn) as pool:
        pools.append(pool)
        pool.enqueue(Task(0))
        pool.close()
        (task,) = pool.results()
    assert isinstance(task.error, RuntimeError)
    assert "cannot join its own pool" in str(task.error)


# -- BaseException from fn ---------------------------------------------------------------


class CustomBaseError(BaseException):
    pass


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt, CustomBaseError])
def test_base_exception_from_fn_is_raised_after_earlier_tasks(exc_type):
    fatal = exc_type("stop here")
    at = 30

    def fn(workerlocal, task):
        if task.index == at:
            raise fatal
        task.output = task.index

    with Pool(3, fn) as pool:
        producer = Producer(pool, [Task(i) for i in range(200)], close=False)
        producer.start()
        got, raised = collect_until_error(pool.results())
        assert raised is fatal
        assert indices(got) == list(range(at))
        assert pool.watermark == at - 1
        with pytest.raises(PoolClosed):
            pool.enqueue(Task(10_000))
        assert pool.join(WAIT)
        producer.join(WAIT)
        assert producer.error is None or isinstance(producer.error, PoolClosed)


# -- consumers ---------------------------------------------------------------------------


def test_second_concurrent_consumer_is_refused():
    with Pool(2, double) as pool:
        pool.enqueue(Task(0, 0))
        pool.enqueue(Task(1, 1))
        first = pool.results()
        assert next(first).index == 0
        with pytest.raises(RuntimeError, match="already being iterated"):
            next(pool.results())
        pool.close()
        assert indices(first) == [1]  # the first consumer is unaffected
        assert list(pool.results()) == []  # a later consumer is allowed


def test_breaking_out_of_results_terminates_the_pool():
    with Pool(3, double, window=16) as pool:
        producer = Producer(pool, (Task(i, i) for i in range(100_000)), close=False)
        producer.start()
        for task in pool.results():
            if task.index == 40:
                break
        assert pool.join(WAIT)
        producer.join(WAIT)
        assert not producer.is_alive()
        assert isinstance(producer.error, PoolClosed)
        with pytest.raises(PoolClosed):
            pool.enqueue(Task(10**9))


def test_dropping_a_started_results_iterator_terminates_the_pool():
    pool = Pool(2, double)
    for i in range(20):
        pool.enqueue(Task(i, i))
    it = pool.results()
    assert next(it).index == 0
    del it
    gc.collect()
    assert pool.join(WAIT)
    with pytest.raises(PoolClosed):
        pool.enqueue(Task(100))
