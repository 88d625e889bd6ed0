"""Free-threading: the GIL stays off, and many threads hammering one pool lose nothing."""

from __future__ import annotations

import random
import subprocess
import sys
import sysconfig
import threading

import pytest

import orderedtask
from orderedtask import Pool, Task

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


@pytest.mark.skipif(not FREE_THREADED, reason="needs a free-threaded build (3.13t)")
def test_import_leaves_the_gil_off() -> None:
    code = (
        "import sys, orderedtask, orderedtask._core\n"
        "assert not sys._is_gil_enabled(), 'the GIL was turned on'\n"
        "print(orderedtask.IMPLEMENTATION)\n"
    )
    done = subprocess.run([sys.executable, "-X", "gil=0", "-c", code], capture_output=True,
                          text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "RuntimeWarning" not in done.stderr  # the warning CPython prints when a module enables it
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == 0, done.stderr


def test_core_under_concurrent_callers(buffer_cls) -> None:
    """Barrier-started threads accept, finish and release on one buffer: exactly once, in order."""
    buffer = buffer_cls()
    threads, per_thread = 8, 2000
    barrier = threading.Barrier(threads)
    released: list[list[int]] = [[] for _ in range(threads)]

    def worker(k: int) -> None:
        mine = list(range(k, threads * per_thread, threads))
        barrier.wait()
        for index in mine:
            buffer.accept(index)
        # Nothing is released before every index is accepted (no index could fall behind).
        barrier.wait()
        random.Random(k).shuffle(mine)
        for index in mine:
            buffer.finish(index, index)
            released[k].extend(buffer.release())

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    released.append(buffer.release())
    everything = sorted(x for run in released for x in run)
    assert everything == list(range(threads * per_thread))
    for run in released:  # each release call hands back an ascending run
        assert run == sorted(run)
    assert len(buffer) == 0 and buffer.released == threads * per_thread


def test_many_producers_and_workers(twin, no_thread_leak) -> None:
    """16 Barrier-started producers and 8 workers: every task once, in ascending order."""
    producers, per_producer = 16, 1500
    barrier = threading.Barrier(producers)

    def fn(workerlocal: dict, task: Task) -> None:
        if task.index % 97 == 0:
            threading.Event().wait(0.0005)
        task.output = task.index * 2

    accepted: list[list[int]] = [[] for _ in range(producers)]
    rejected: list[int] = []

    with Pool(8, fn, window=512) as pool:
        def produce(k: int) -> None:
            barrier.wait()
            for i in range(per_producer):
                index = i * producers + k
                try:
                    pool.enqueue(Task(index, None))
                except ValueError as exc:  # racing producers: a higher index was released first
                    assert "not greater than the last released index" in str(exc)
                    rejected.append(index)
                else:
                    accepted[k].append(index)

        threads = [threading.Thread(target=produce, args=(k,)) for k in range(producers)]
        for thread in threads:
            thread.start()

        def closer() -> None:
            for thread in threads:
                thread.join()
            pool.close()

        closing = threading.Thread(target=closer)
        closing.start()
        seen = [(t.index, t.output) for t in pool.results()]
        closing.join()
    # Racing producers may see an index refused (a higher one was already released): every
    # accepted task comes out exactly once, in ascending order, and nothing else does.
    indices = [i for i, _ in seen]
    assert indices == sorted(set(indices))
    assert indices == sorted(i for mine in accepted for i in mine)
    assert len(indices) + len(rejected) == producers * per_producer
    assert all(out == i * 2 for i, out in seen)


def test_map_threads_agree_with_builtin_map() -> None:
    data = [random.random() for _ in range(20_000)]
    assert list(orderedtask.map(lambda x: x * 3, data, workers=8)) == [x * 3 for x in data]
