"""``orderedtask map``: the ``parallel --keep-order`` of Python.

Reads lines, applies ``MODULE:FUNCTION`` to each on several workers, and writes the results in
input order. Threads and what runs on them:

- the feeder thread of ``map_tasks`` reads the input (``os.read``, no buffered-file lock, so a
  read blocked on an idle pipe never stalls the interpreter's exit);
- the workers decode each line (UTF-8, or JSON with ``--json``), call the function and encode
  its result into a ready-to-write line of bytes;
- the main thread takes the results in order and queues whole lines for the writer; it is
  the only thread where ``KeyboardInterrupt`` is raised, and it does no I/O on the output;
- the writer thread writes the queued lines (every 256 KiB, and at least every 50 ms, so a
  ``tail -f``-style reader sees progress without a write per line). Since only whole lines
  are queued and a signal never interrupts that thread, the output never ends mid-line;
- with ``--progress``, a thread that refreshes the tqdm bar on stderr.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import operator
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .._map import map_tasks
from .._options import MAP_WINDOW, check_max_workers

try:
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None  # type: ignore[assignment]

PROG = "orderedtask map"
READ_SIZE = 1 << 18  # bytes per os.read of the input
HANDOFF_BYTES = 1 << 18  # the main thread wakes the writer after this much output
MAX_QUEUED_BYTES = 1 << 23  # the main thread waits while this much output is unwritten
FLUSH_SECONDS = 0.05  # the writer writes what is queued at least this often
PROGRESS_SECONDS = 0.2

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141


class UsageError(Exception):
    """A bad --fn, --input or --output: one line on stderr, exit status 2."""


# -- the function applied on the workers -----------------------------------------------------

if orjson is not None:
    _loads = orjson.loads
    _OPT_NEWLINE = orjson.OPT_APPEND_NEWLINE

    def _dumps_line(value: Any) -> bytes:
        return orjson.dumps(value, option=_OPT_NEWLINE)
else:  # pragma: no cover - depends on the environment
    _loads = json.loads

    def _dumps_line(value: Any) -> bytes:
        return (json.dumps(value, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


class LineFunction:
    """``fn`` over one input line (bytes, no newline); returns the output line, or None.

    Runs on the workers (picklable: ``fn`` is pickled by reference, for the process backend).
    Plain mode: ``fn`` gets the line as ``str`` (UTF-8; undecodable bytes pass through as
    surrogate escapes) and its result is written as ``str(result)``, or as is if it is bytes.
    JSON mode: ``fn`` gets the parsed line and its result is written as one compact JSON line;
    a blank line is skipped. A result of None writes nothing.
    """

    __slots__ = ("fn", "json")

    def __init__(self, fn: Callable[[Any], Any], json_mode: bool) -> None:
        self.fn = fn
        self.json = json_mode

    def __call__(self, line: bytes) -> bytes | None:
        if self.json:
            if not line or line.isspace():
                return None
            result = self.fn(_loads(line))
            return None if result is None else _dumps_line(result)
        result = self.fn(line.decode("utf-8", "surrogateescape"))
        if result is None:
            return None
        if isinstance(result, (bytes, bytearray)):
            return bytes(result) + b"\n"
        text = result if isinstance(result, str) else str(result)
        return text.encode("utf-8", "surrogateescape") + b"\n"

    def __reduce__(self) -> tuple[Any, ...]:
        return (LineFunction, (self.fn, self.json))


def resolve_function(spec: str) -> Callable[[Any], Any]:
    """Import ``MODULE:FUNCTION`` (the attribute may be dotted); UsageError if that fails."""
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        raise UsageError(f"--fn must be MODULE:FUNCTION, e.g. mypkg.clean:fix_line (got {spec!r})")
    # Like `python -m` (and uvicorn, celery): a module in the current directory is found.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure to import is reported in one line
        raise UsageError(f"--fn {spec}: cannot import module {module_name!r}: "
                         f"{_one_line(exc)}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"--fn {spec}: {type(obj).__name__} {_name_of(obj)!r} has no "
                             f"attribute {part!r}") from None
    if not callable(obj):
        raise UsageError(f"--fn {spec}: not callable (it is a {type(obj).__name__})")
    fn: Callable[[Any], Any] = obj
    return fn


def _name_of(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)


def _one_line(exc: BaseException) -> str:
    """``Type: message`` on one line."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


# -- input -----------------------------------------------------------------------------------

class Counters:
    """Written by one thread each, read by the progress thread (stale reads are harmless)."""

    def __init__(self) -> None:
        self.read = 0  # lines read from the input (feeder thread)
        self.done = 0  # lines taken from the results, written or not (main thread)
        self.failed = 0  # main thread


class LineReader:
    """The lines of ``fd`` as bytes without their newline; a last line without one counts.

    Read with ``os.read`` (no buffered-file lock: a read blocked on an idle pipe never stalls
    the interpreter's exit). ``buffered()`` says how many lines can be taken without blocking:
    the feeder of ``map_tasks`` caps each chunk at the lines already there, so that none
    waits in a half-filled chunk for input that has not come yet.
    """

    def __init__(self, fd: int, counters: Counters) -> None:
        self.fd = fd
        self.counters = counters
        self.current: Iterator[bytes] = iter(())

    def buffered(self) -> int:
        return operator.length_hint(self.current)

    def __iter__(self) -> Iterator[bytes]:
        read, fd, counters = os.read, self.fd, self.counters
        carry = b""
        while True:
            block = read(fd, READ_SIZE)
            if not block:
                break
            lines = block.split(b"\n")
            if carry:
                lines[0] = carry + lines[0]
            carry = lines.pop()
            counters.read += len(lines)
            self.current = iter(lines)
            yield from self.current
        if carry:
            counters.read += 1
            yield carry


# -- output ----------------------------------------------------------------------------------

class OutputClosed(Exception):
    """The writer could not write (a closed pipe, a full disk)."""


class Writer(threading.Thread):
    """Writes the lines the main thread queues; the only thread that writes the output.

    ``lines`` is a deque: ``append`` (main thread) and ``popleft`` (here) are atomic, so the
    main thread queues a line without a lock. Signals run their handlers on the main thread,
    so a Ctrl-C never cuts a write here; ``stop`` writes everything queued, then ends.
    """

    def __init__(self, fd: int, close_fd: bool) -> None:
        super().__init__(name="orderedtask-map-writer")  # not a daemon: exit waits for it
        self.fd = fd
        self.close_fd = close_fd  # once started, the writer closes the fd when it ends
        self.lines: collections.deque[bytes] = collections.deque()
        self.wake = threading.Event()
        self.drained = threading.Condition()
        self.taken = 0  # bytes taken off the queue (written, or dropped after an error)
        self.written_lines = 0
        self.stopping = False
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            self._run()
        finally:
            if self.close_fd:
                os.close(self.fd)

    def _run(self) -> None:
        lines = self.lines
        while True:
            self.wake.wait(FLUSH_SECONDS)
            self.wake.clear()
            stopping = self.stopping  # read before draining: all its lines are queued
            count = len(lines)
            if count:
                data = b"".join([lines.popleft() for _ in range(count)])
                if self.error is None:
                    try:
                        self._write_all(data)
                        self.written_lines += count
                    except OSError as exc:
                        self.error = exc  # from now on lines are dropped; the main thread stops
                with self.drained:
                    self.taken += len(data)
                    self.drained.notify_all()
            # The main thread also ends when interrupted twice while stopping: then the
            # interpreter's exit waits for this (non-daemon) thread to write what is queued.
            if stopping or not threading.main_thread().is_alive():
                if not lines:
                    return

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def kick(self, queued: int) -> None:
        """Main thread, after queuing ``queued`` bytes in all: write now; wait if far behind."""
        self.wake.set()
        if self.error is not None:
            raise OutputClosed(self.error)
        if queued - self.taken > MAX_QUEUED_BYTES:
            with self.drained:
                while queued - self.taken > MAX_QUEUED_BYTES and self.is_alive():
                    self.drained.wait()
            if self.error is not None:
                raise OutputClosed(self.error)

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        self.join()


# -- progress --------------------------------------------------------------------------------

class Progress(threading.Thread):
    """Refreshes a tqdm bar on stderr: count and rate of lines done, in-flight, reorder depth.

    ``in_flight``: lines read from the input and not yet written (queued, running, finished
    and held back for order). ``reorder``: finished chunks the engine holds back behind an
    unfinished earlier one (head-of-line blocking), from ``stats()['reorder_depth']``.
    """

    def __init__(self, counters: Counters) -> None:
        super().__init__(name="orderedtask-map-progress")
        from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

        self.tqdm = tqdm
        self.counters = counters
        self.engine: Any = None
        self.halt = threading.Event()
        # smoothing=0: the rate is the average since the start (the last line: the run's).
        self.bar = tqdm(desc=PROG, unit=" lines", unit_scale=True, file=sys.stderr,
                        dynamic_ncols=True, mininterval=0, miniters=1, smoothing=0,
                        bar_format="{desc}: {n:,} lines [{elapsed}, {rate_fmt}{postfix}]")

    def run(self) -> None:
        while not self.halt.wait(PROGRESS_SECONDS) and threading.main_thread().is_alive():
            self.refresh()

    def refresh(self, final: bool = False) -> None:
        counters = self.counters
        done = counters.done
        postfix: dict[str, Any] = {"in_flight": max(0, counters.read - done)}
        engine = self.engine
        if engine is not None:
            try:
                stats = engine.stats()
                postfix["reorder"] = stats["reorder_depth"]
                if "max_workers" in stats:  # adaptive: the level it runs at now
                    postfix["workers"] = stats["level"]
            except Exception:  # noqa: BLE001 - the display must never stop the run
                pass
        if counters.failed:
            postfix["failed"] = counters.failed
        bar = self.bar
        bar.set_postfix(postfix, refresh=False)
        if final:
            bar.n = done  # close() shows it
        elif done > bar.n:
            bar.update(done - bar.n)
        else:
            bar.refresh()

    def write(self, message: str) -> None:
        self.tqdm.write(message, file=sys.stderr)

    def close(self) -> None:
        self.halt.set()
        if self.is_alive():
            self.join()
        self.refresh(final=True)
        self.bar.close()


# -- the command -----------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Apply a Python function to each input line on several workers and write "
                    "the results in input order (the `parallel --keep-order` of Python).",
        epilog="A line whose function raised (or, with --json, that is not JSON) is reported "
               "on stderr as 'line N: Type: message' and left out; the exit status is then 1. "
               "Ctrl-C stops after writing whole lines (status 130).")
    parser.add_argument("--fn", required=True, metavar="MODULE:FUNCTION",
                        help="the function to apply, e.g. mypkg.clean:fix_line (a module in "
                             "the current directory is found)")
    parser.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                        help="a fixed number of parallel workers (default: adaptive, from 0 - "
                             "this process runs each line itself - up to --max-workers, "
                             "following the measured throughput)")
    parser.add_argument("--max-workers", type=_positive_int, default=None, metavar="N",
                        help="the most workers adaptive concurrency starts (default: 64 "
                             "threads, or one process per CPU)")
    parser.add_argument("--backend", choices=["thread", "process"], default="thread",
                        help="thread (default) or process: one worker process each, for work "
                             "that holds the GIL")
    parser.add_argument("--window", type=_positive_int, default=None, metavar="W",
                        help="at most W lines inside the pool at once: taken from the input "
                             f"and not yet handed on in order (default: {MAP_WINDOW}; with the "
                             "GIL off, sized from the GC threshold)")
    parser.add_argument("--input", default="-", metavar="FILE",
                        help="input file, '-' for stdin (default)")
    parser.add_argument("--output", default="-", metavar="FILE",
                        help="output file, '-' for stdout (default)")
    parser.add_argument("--json", action="store_true",
                        help="NDJSON: parse each line as JSON before the function, write each "
                             "result as one JSON line; blank lines are skipped")
    parser.add_argument("--progress", action="store_true",
                        help="a progress bar on stderr (lines, rate, in-flight, reorder depth)")
    return parser


def _std_fd(stream: Any, what: str) -> int:
    try:
        fd: int = stream.fileno()
        return fd
    except (AttributeError, OSError, ValueError):
        raise UsageError(f"{what} is closed or not a file") from None


def _open_input(path: str) -> tuple[int, bool]:
    if path == "-":
        return _std_fd(sys.stdin, "standard input"), False
    try:
        return os.open(path, os.O_RDONLY), True
    except OSError as exc:
        raise UsageError(f"cannot open --input {path!r}: {exc.strerror or exc}") from None


def _open_output(path: str) -> tuple[int, bool]:
    if path == "-":
        fd = _std_fd(sys.stdout, "standard output")
        sys.stdout.flush()
        return fd, False
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666), True
    except OSError as exc:
        raise UsageError(f"cannot open --output {path!r}: {exc.strerror or exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        check_max_workers(args.max_workers, args.backend, args.workers)
    except ValueError:
        parser.error("--max-workers bounds adaptive concurrency; --workers fixes the count: "
                     "pass one of them")
    in_fd, close_in = -1, False
    writer: Writer | None = None
    try:
        line_fn = LineFunction(resolve_function(args.fn), args.json)
        in_fd, close_in = _open_input(args.input)
        writer = Writer(*_open_output(args.output))
        return run(line_fn, in_fd, writer, args)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before the run started, or a second Ctrl-C while stopping
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if close_in:
            os.close(in_fd)
        if writer is not None and writer.close_fd and writer.ident is None:
            os.close(writer.fd)  # never started; once started, it closes its fd itself


def run(line_fn: LineFunction, in_fd: int, writer: Writer, args: argparse.Namespace) -> int:
    counters = Counters()
    try:
        results = map_tasks(line_fn, LineReader(in_fd, counters), workers=args.workers,
                            window=args.window, backend=args.backend,
                            max_workers=args.max_workers)
    except (TypeError, ValueError) as exc:  # e.g. the process backend cannot pickle --fn
        raise UsageError(f"--fn {args.fn}: {_one_line(exc)}") from None
    progress = Progress(counters) if args.progress else None
    say = progress.write if progress is not None else _print_err
    writer.start()
    if progress is not None:
        progress.start()
    status = EXIT_OK
    try:
        _consume(results, writer, counters, say, progress)
    except KeyboardInterrupt:
        status = EXIT_INTERRUPTED
    except OutputClosed:
        status = EXIT_BROKEN_PIPE
    finally:
        results.close()  # stops the engine (a no-op once it has ended)
        writer.stop()
        if progress is not None:
            progress.close()
    if writer.error is not None:
        if isinstance(writer.error, BrokenPipeError):
            return EXIT_BROKEN_PIPE  # the reader left, as `head` does: quietly, like SIGPIPE
        _print_err(f"{PROG}: cannot write the output: {_one_line(writer.error)}")
        return EXIT_FAILED
    if status == EXIT_INTERRUPTED:
        failed = f", {counters.failed:,} failed" if counters.failed else ""
        _print_err(f"{PROG}: interrupted; {writer.written_lines:,} lines written{failed} "
                   "(whole lines, in input order)")
        return status
    if counters.failed:
        _print_err(f"{PROG}: {counters.failed} of {counters.done} lines failed")
        return EXIT_FAILED
    return status


def _print_err(message: str) -> None:
    print(message, file=sys.stderr)


def _consume(results: Iterator[Any], writer: Writer, counters: Counters,
             say: Callable[[str], None], progress: Progress | None) -> None:
    """Main thread: queue each result line for the writer, in order; report failed lines."""
    append = writer.lines.append
    kick = writer.kick
    queued = 0
    kick_at = HANDOFF_BYTES
    first = True
    for task in results:
        error = task.error
        if error is None:
            data = task.output
            if data is not None:
                append(data)
                queued += len(data)
                if queued >= kick_at:
                    kick(queued)
                    kick_at = queued + HANDOFF_BYTES
        else:
            counters.failed += 1
            say(f"line {task.index + 1}: {_one_line(error)}")
        counters.done = task.index + 1
        if first:
            first = False
            if progress is not None:
                progress.engine = results  # map_tasks' TaskStream: its stats()
    kick(queued)
