"""The main job, ``orderedtask demo``, through a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orderedtask

PACKAGE_PARENT = str(Path(orderedtask.__file__).resolve().parent.parent)


def demo(*args: str) -> subprocess.CompletedProcess:
    # ``-m`` puts the working directory first on sys.path: run from the directory holding the
    # package the tests imported, so that a source checkout (no compiled core) cannot shadow an
    # installed wheel.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [PACKAGE_PARENT, *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-m", "orderedtask", "demo", *args],
                          capture_output=True, text=True, timeout=120, env=env, check=False,
                          cwd=PACKAGE_PARENT)


def test_demo_decodes_in_order_and_reports_honestly() -> None:
    done = demo("--messages", "3000", "--workers", "2")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "3,000 Kafka-like messages" in out
    assert "order check: every message came out once, in offset order" in out
    for row in ("plain loop (sequential)", "orderedtask.Pool (Task per message)",
                "orderedtask.map"):
        assert row in out
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    assert ("GIL on" in out) == gil and ("GIL off" in out) == (not gil)
    assert f"core {orderedtask.IMPLEMENTATION}" in out
    assert "(Pool)" in out and "the defaults for this build and GC threshold" in out
    assert "cyclic-GC passes during the runs: loop " in out
    assert out.count("2 workers (fixed)") == 3  # Pool, map, and map with I/O
    # Each decode-only variant ran three times, interleaved (each run order-checked).
    assert "each variant below: the fastest of 3 interleaved run(s)" in out


def test_demo_suggests_a_gc_threshold_only_when_passes_ran() -> None:
    # With a first threshold no 2,000 messages reach, no pass runs: no hint, whatever the speed.
    done = demo("--messages", "2000", "--gc-threshold", "1000000")
    assert done.returncode == 0, done.stderr
    assert "cyclic-GC passes during the runs: loop 0, Pool 0, map 0" in done.stdout
    assert "rerun with --gc-threshold" not in done.stdout


def test_demo_options() -> None:
    done = demo("--messages", "500", "--decoder", "json", "--gc-threshold", "12345",
                "--window", "64", "--rounds", "1")
    assert done.returncode == 0, done.stderr
    assert "the fastest of 1 interleaved run(s)" in done.stdout
    assert "decoder json" in done.stdout and "gc threshold 12345" in done.stdout
    assert "window 64 (Pool), 64 (map)\n" in done.stdout


def test_demo_rejects_bad_arguments() -> None:
    for args in (["--messages", "0"], ["--workers", "-1"], ["--gc-threshold", "0"],
                 ["--decoder", "yaml"], ["--rounds", "0"]):
        done = demo(*args)
        assert done.returncode == 2, args
        assert "Traceback" not in done.stderr


def test_demo_rejects_a_bad_window_and_leaves_quietly_when_the_reader_does() -> None:
    done = demo("--messages", "100", "--window", "0")
    assert done.returncode == 2 and "--window must be >= 1" in done.stderr
    env = {**os.environ, "PYTHONPATH": PACKAGE_PARENT}
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line, as `| head -0` would be
    try:
        done = subprocess.run([sys.executable, "-m", "orderedtask", "demo", "--messages", "100"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, env=env,
                              cwd=PACKAGE_PARENT, timeout=120, check=False)
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""
