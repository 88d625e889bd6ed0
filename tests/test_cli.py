"""``orderedtask map``, the command line, run as a real subprocess: ``python -m orderedtask``."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import orderedtask

pytestmark = pytest.mark.timeout(40)

RUN_TIMEOUT = 30  # seconds, for one subprocess

HELPERS = '''
import random
import time

LIMIT = 7  # not callable


def upper(line):
    return line.upper()


def jitter(line):
    """Sleeps a little on some lines, so that results finish out of order."""
    if random.random() < 0.02:
        time.sleep(random.random() * 0.003)
    return f"{line}:{line[::-1]}"


def double(line):
    return str(int(line) * 2)


def fail_on_3(line):
    if int(line) % 3 == 0:
        raise ValueError(f"no multiples of 3, please: {line}")
    return line


def evens_only(line):
    return line if int(line) % 2 == 0 else None


def as_number(line):
    return int(line) + 1  # not a str: written as str(result)


def enrich(record):
    record["seen"] = True
    record["n2"] = record["n"] * 2
    return record


def pick_or_fail(record):
    if record["n"] == 4:
        raise KeyError("four")
    return None if record["n"] == 6 else record


def echo(line):
    return line


by_lambda = lambda line: line  # noqa: E731 - a function pickle cannot find by name
'''


@pytest.fixture
def helpers(tmp_path: Path) -> Path:
    """A directory holding the helper modules: ``clihelpers`` and a broken one."""
    (tmp_path / "clihelpers.py").write_text(HELPERS)
    (tmp_path / "clibroken.py").write_text("raise RuntimeError('this module is broken')\n")
    return tmp_path


def cli_env(helpers: Path) -> dict[str, str]:
    """PYTHONPATH: the helpers, the directory orderedtask is imported from, and the current one."""
    package_parent = str(Path(orderedtask.__file__).resolve().parent.parent)
    paths = [str(helpers), package_parent]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "orderedtask", *args]


def run_map(helpers: Path, *args: str, stdin: str | bytes = b"",
            ) -> subprocess.CompletedProcess[bytes]:
    data = stdin.encode() if isinstance(stdin, str) else stdin
    return subprocess.run(command("map", *args), input=data, capture_output=True,
                          env=cli_env(helpers), cwd=helpers, timeout=RUN_TIMEOUT)


def lines_of(data: bytes) -> list[str]:
    text = data.decode()
    assert text == "" or text.endswith("\n"), "the output must end with a whole line"
    return text.splitlines()


def numbers(count: int, start: int = 0) -> str:
    return "".join(f"{i}\n" for i in range(start, start + count))


# -- commands and help -------------------------------------------------------------------------

def test_help_lists_both_commands(helpers: Path) -> None:
    done = subprocess.run(command("--help"), capture_output=True, env=cli_env(helpers),
                          timeout=RUN_TIMEOUT)
    assert done.returncode == 0
    assert b"demo" in done.stdout and b"map" in done.stdout
    done = subprocess.run(command("map", "--help"), capture_output=True, env=cli_env(helpers),
                          timeout=RUN_TIMEOUT)
    assert done.returncode == 0
    for option in (b"--fn", b"--workers", b"--backend", b"--window", b"--input", b"--output",
                   b"--json", b"--progress"):
        assert option in done.stdout


def test_unknown_command_is_a_usage_error(helpers: Path) -> None:
    done = subprocess.run(command("frobnicate"), capture_output=True, env=cli_env(helpers),
                          timeout=RUN_TIMEOUT)
    assert done.returncode == 2
    assert b"Traceback" not in done.stderr


# -- plain lines -------------------------------------------------------------------------------

def test_order_is_kept_over_20000_lines_with_random_delays(helpers: Path) -> None:
    lines = [f"line-{i}-{'x' * (i % 13)}" for i in range(20_000)]
    done = run_map(helpers, "--fn", "clihelpers:jitter", "--workers", "8",
                   stdin="".join(f"{line}\n" for line in lines))
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    assert lines_of(done.stdout) == [f"{line}:{line[::-1]}" for line in lines]


def test_small_window_and_one_worker(helpers: Path) -> None:
    done = run_map(helpers, "--fn", "clihelpers:double", "--workers", "1", "--window", "1",
                   stdin=numbers(500))
    assert done.returncode == 0, done.stderr
    assert lines_of(done.stdout) == [str(2 * i) for i in range(500)]


def test_last_line_without_newline_and_empty_lines(helpers: Path) -> None:
    done = run_map(helpers, "--fn", "clihelpers:upper", stdin="a\n\nb\nlast")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"A\n\nB\nLAST\n"


def test_empty_input_writes_nothing(helpers: Path) -> None:
    done = run_map(helpers, "--fn", "clihelpers:upper", stdin=b"")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")


def test_a_result_that_is_not_a_str_is_written_as_str(helpers: Path) -> None:
    done = run_map(helpers, "--fn", "clihelpers:as_number", stdin=numbers(5))
    assert done.returncode == 0, done.stderr
    assert lines_of(done.stdout) == ["1", "2", "3", "4", "5"]


def test_bytes_that_are_not_utf8_pass_through(helpers: Path) -> None:
    data = b"caf\xc3\xa9\n\xff\xfe raw\n"
    done = run_map(helpers, "--fn", "clihelpers:echo", stdin=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout == data


def test_none_filters_the_line_out(helpers: Path) -> None:
    done = run_map(helpers, "--fn", "clihelpers:evens_only", "--workers", "3",
                   stdin=numbers(1000))
    assert done.returncode == 0, done.stderr
    assert lines_of(done.stdout) == [str(i) for i in range(0, 1000, 2)]


# -- JSON --------------------------------------------------------------------------------------

def test_json_round_trip(helpers: Path) -> None:
    records = [{"n": i, "user": f"user-{i}", "name": "Zoë ✓", "props": {"tags": ["a"] * (i % 3)}}
               for i in range(2000)]
    data = "".join(json.dumps(record) + "\n" for record in records)
    done = run_map(helpers, "--json", "--fn", "clihelpers:enrich", "--workers", "4", stdin=data)
    assert done.returncode == 0, done.stderr
    out = lines_of(done.stdout)
    assert [json.loads(line) for line in out] == [
        {**record, "seen": True, "n2": record["n"] * 2} for record in records]
    assert all(": " not in line and ", " not in line for line in out)  # compact


def test_json_blank_lines_are_skipped(helpers: Path) -> None:
    done = run_map(helpers, "--json", "--fn", "clihelpers:enrich",
                   stdin='{"n": 1}\n\n   \n{"n": 2}\n')
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["n"] for line in lines_of(done.stdout)] == [1, 2]


def test_json_bad_lines_and_failures_are_reported_in_place(helpers: Path) -> None:
    data = "".join(json.dumps({"n": i}) + "\n" for i in range(10))
    data = data.replace('{"n": 2}', "{not json")
    done = run_map(helpers, "--json", "--fn", "clihelpers:pick_or_fail", stdin=data)
    assert done.returncode == 1
    assert [json.loads(line)["n"] for line in lines_of(done.stdout)] == [0, 1, 3, 5, 7, 8, 9]
    errors = done.stderr.decode().splitlines()
    assert errors[0].startswith("line 3: JSONDecodeError: ")
    assert errors[1] == "line 5: KeyError: 'four'"
    assert errors[2] == "orderedtask map: 2 of 10 lines failed"
    assert len(errors) == 3


# -- failures ----------------------------------------------------------------------------------

def test_failing_lines_are_reported_left_out_and_the_run_goes_on(helpers: Path) -> None:
    done = run_map(helpers, "--fn", "clihelpers:fail_on_3", "--workers", "4",
                   stdin=numbers(30, start=1))
    assert done.returncode == 1
    assert lines_of(done.stdout) == [str(i) for i in range(1, 31) if i % 3]
    errors = done.stderr.decode().splitlines()
    assert errors[:-1] == [f"line {i}: ValueError: no multiples of 3, please: {i}"
                           for i in range(3, 31, 3)]
    assert errors[-1] == "orderedtask map: 10 of 30 lines failed"
    assert "Traceback" not in done.stderr.decode()


@pytest.mark.parametrize(("spec", "message"), [
    ("clihelpers", "MODULE:FUNCTION"),
    ("clihelpers:", "MODULE:FUNCTION"),
    (":upper", "MODULE:FUNCTION"),
    ("no_such_module_xyz:f", "No module named 'no_such_module_xyz'"),
    ("clihelpers:no_such_function", "no attribute 'no_such_function'"),
    ("clihelpers:random.no_such", "no attribute 'no_such'"),
    ("clihelpers:LIMIT", "not callable"),
    ("clibroken:f", "RuntimeError: this module is broken"),
])
def test_bad_fn_is_one_line_and_status_2(helpers: Path, spec: str, message: str) -> None:
    done = run_map(helpers, "--fn", spec, stdin=numbers(3))
    assert done.returncode == 2
    assert done.stdout == b""
    err = done.stderr.decode()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("orderedtask map: ")
    assert message in err


@pytest.mark.parametrize("args", [
    ["--workers", "0"], ["--workers", "-2"], ["--workers", "many"], ["--window", "0"],
    ["--backend", "gpu"], [], ["--workers", "2", "--max-workers", "4"],
])
def test_bad_arguments_are_status_2(helpers: Path, args: list[str]) -> None:
    fn = [] if not args else ["--fn", "clihelpers:upper"]
    done = run_map(helpers, *fn, *args, stdin=numbers(3))
    assert done.returncode == 2
    assert done.stdout == b""
    assert b"Traceback" not in done.stderr
    assert b"usage: orderedtask map" in done.stderr


# -- files, backends, progress -----------------------------------------------------------------

def test_input_and_output_files(helpers: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    target = tmp_path / "out.txt"
    source.write_text(numbers(3000))
    done = run_map(helpers, "--fn", "clihelpers:double", "--input", str(source),
                   "--output", str(target))
    assert done.returncode == 0, done.stderr
    assert done.stdout == b""
    assert lines_of(target.read_bytes()) == [str(2 * i) for i in range(3000)]
    done = run_map(helpers, "--fn", "clihelpers:double", "--input", "-", "--output", "-",
                   stdin=numbers(3))
    assert lines_of(done.stdout) == ["0", "2", "4"]


def test_missing_input_file_is_status_2(helpers: Path, tmp_path: Path) -> None:
    done = run_map(helpers, "--fn", "clihelpers:double", "--input", str(tmp_path / "nope"))
    assert done.returncode == 2
    assert b"Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_process_backend(helpers: Path) -> None:
    done = run_map(helpers, "--fn", "clihelpers:fail_on_3", "--backend", "process",
                   "--workers", "2", stdin=numbers(3000, start=1))
    assert done.returncode == 1
    assert lines_of(done.stdout) == [str(i) for i in range(1, 3001) if i % 3]
    errors = done.stderr.decode().splitlines()
    assert errors[0] == "line 3: ValueError: no multiples of 3, please: 3"
    assert errors[-1] == "orderedtask map: 1000 of 3000 lines failed"


def test_process_backend_needs_a_function_that_pickles(helpers: Path) -> None:
    done = run_map(helpers, "--fn", "clihelpers:by_lambda", "--backend", "process",
                   stdin=numbers(3))
    assert done.returncode == 2
    err = done.stderr.decode()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "cannot be pickled" in err
    # The thread backend does not pickle it.
    assert run_map(helpers, "--fn", "clihelpers:by_lambda", stdin=numbers(3)).returncode == 0


def test_process_backend_json(helpers: Path) -> None:
    data = "".join(json.dumps({"n": i}) + "\n" for i in range(500))
    done = run_map(helpers, "--json", "--fn", "clihelpers:enrich", "--backend", "process",
                   "--workers", "2", stdin=data)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["n2"] for line in lines_of(done.stdout)] == [
        2 * i for i in range(500)]


def test_progress_bar_on_stderr(helpers: Path) -> None:
    done = run_map(helpers, "--fn", "clihelpers:fail_on_3", "--progress",
                   stdin=numbers(5000, start=1))
    assert done.returncode == 1
    assert lines_of(done.stdout) == [str(i) for i in range(1, 5001) if i % 3]
    err = done.stderr.decode()
    assert "orderedtask map: 5,000 lines" in err  # the final state of the bar
    assert "lines/s" in err and "in_flight=" in err and "failed=" in err
    assert "line 3: ValueError: no multiples of 3, please: 3" in err
    assert err.rstrip("\n").endswith("orderedtask map: 1666 of 5000 lines failed")


# -- streaming: output while the input is still open, Ctrl-C, a closed reader ------------------

def read_some(stream: int, until: bytes, timeout: float) -> bytes:
    """Read from a pipe fd until ``until`` is in what came, or fail after ``timeout`` s."""
    got = b""
    deadline = time.monotonic() + timeout
    while until not in got:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no {until!r} on the output after {timeout} s; got {got[-200:]!r}")
        ready, _, _ = select.select([stream], [], [], left)
        if ready:
            chunk = os.read(stream, 1 << 16)
            if not chunk:
                pytest.fail(f"the output ended early; got {got[-200:]!r}")
            got += chunk
    return got


# Lines 1 and 2 arrive together, then the input pauses. map_tasks' feeder sends line 1 in a
# chunk of one, then pulls a chunk of two and waits inside it for line 3: line 2 stays behind
# until more input (or the end) comes. It needs the feeder to cap a chunk at what the source
# holds now (LineReader.buffered(); the library change is described with the CLI).
STREAMING_WAIT = 10.0  # seconds; a generous bound on the wait, not a speed check


def test_output_is_written_while_the_input_is_still_open(helpers: Path) -> None:
    proc = subprocess.Popen(command("map", "--fn", "clihelpers:upper"), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
                            env=cli_env(helpers), cwd=helpers)
    try:
        proc.stdin.write(b"first\nsecond\n")  # and keep stdin open: like `tail -f`
        got = read_some(proc.stdout.fileno(), b"SECOND\n", timeout=STREAMING_WAIT)
        assert got == b"FIRST\nSECOND\n"
        proc.stdin.write(b"third\n")
        assert read_some(proc.stdout.fileno(), b"THIRD\n", timeout=RUN_TIMEOUT) == b"THIRD\n"
        proc.stdin.close()
        assert proc.wait(RUN_TIMEOUT) == 0
        assert proc.stderr.read() == b""
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()


ENDLESS = "import itertools, sys\nfor i in itertools.count():\n    sys.stdout.write(f'{i}\\n')\n"


def interruptible(args: list[str]) -> list[str]:
    """The command, made to take Ctrl-C even when this test runs with SIGINT ignored."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        return args
    # An ignored SIGINT is inherited, and Python then installs no KeyboardInterrupt handler.
    boot = textwrap.dedent("""\
        import runpy, signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)
        runpy.run_module("orderedtask", run_name="__main__", alter_sys=True)
    """)
    return [sys.executable, "-c", boot, *args[3:]]


@pytest.mark.parametrize("extra", [[], ["--progress"], ["--backend", "process"]],
                         ids=["thread", "progress", "process"])
def test_ctrl_c_leaves_whole_lines_in_order(helpers: Path, extra: list[str]) -> None:
    source = subprocess.Popen([sys.executable, "-c", ENDLESS], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    proc = subprocess.Popen(
        interruptible(command("map", "--fn", "clihelpers:double", "--workers", "4", *extra)),
        stdin=source.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
        env=cli_env(helpers), cwd=helpers)
    source.stdout.close()  # the map process holds the pipe now
    try:
        got = read_some(proc.stdout.fileno(), b"\n20000\n", timeout=RUN_TIMEOUT)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        proc.kill()
        source.kill()
        source.wait()
        proc.wait()
    out = got + rest
    assert proc.returncode == 130, err
    assert out.endswith(b"\n")
    lines = out.decode().splitlines()
    assert lines == [str(2 * i) for i in range(len(lines))]
    text = err.decode()
    assert "Traceback" not in text
    message = [line for line in text.splitlines() if "interrupted" in line]
    assert message == [f"orderedtask map: interrupted; {len(lines):,} lines written "
                       "(whole lines, in input order)"]


def test_a_closed_reader_ends_the_run_quietly(helpers: Path) -> None:
    source = subprocess.Popen([sys.executable, "-c", ENDLESS], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    proc = subprocess.Popen(command("map", "--fn", "clihelpers:double"), stdin=source.stdout,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
                            env=cli_env(helpers), cwd=helpers)
    source.stdout.close()
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()))
    reader.start()
    try:
        read_some(proc.stdout.fileno(), b"\n200\n", timeout=RUN_TIMEOUT)
        proc.stdout.close()  # like `orderedtask map ... | head`
        assert proc.wait(RUN_TIMEOUT) == 141
    finally:
        proc.kill()
        source.kill()
        source.wait()
        proc.wait()
        reader.join(RUN_TIMEOUT)
        proc.stderr.close()
    assert errors == [b""]
