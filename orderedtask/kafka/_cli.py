"""``orderedtask kafka``: run a ``ParallelConsumer`` from the command line.

``--fn MODULE:FUNCTION`` gets each ``Record`` on the workers; ``--handle MODULE:FUNCTION``
gets ``(record, output)`` after it, in the order ``--ordering`` asks for. Without
``--handle``, each output that is not None is printed as one line (``str(output)``).
SIGINT and SIGTERM stop it cleanly: what is in flight is finished and committed, exit 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from .._cli._map import UsageError, resolve_function
from ._consumer import ORDERINGS, ParallelConsumer
from ._record import Record

PROG = "orderedtask kafka"
EXIT_USAGE = 2


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    parser.add_argument("--topic", required=True, action="append",
                        help="topic to consume (repeat for several; ^regex for a pattern)")
    parser.add_argument("--group", required=True, help="consumer group id (offsets live here)")
    parser.add_argument("--fn", required=True, metavar="MODULE:FUNCTION",
                        help="fn(record) -> output, run on the workers")
    parser.add_argument("--handle", metavar="MODULE:FUNCTION",
                        help="handle(record, output), in order (default: print the output)")
    parser.add_argument("--ordering", choices=ORDERINGS, default="partition",
                        help="partition (default), key or unordered")
    parser.add_argument("--workers", type=int, default=None, help="default: os.cpu_count()")
    parser.add_argument("--window", type=int, default=None,
                        help="records in flight (default: max(2048, 64 x workers))")
    parser.add_argument("--backend", choices=["thread", "process"], default="thread")
    parser.add_argument("--retries", type=int, default=0)
    parser.add_argument("--from-beginning", action="store_true",
                        help="a group without a commit starts at the earliest offset")
    parser.add_argument("--config", "-X", action="append", default=[], metavar="KEY=VALUE",
                        help="any other consumer setting (repeatable)")
    parser.add_argument("--log-level", default="INFO", help="(default: %(default)s)")
    return parser


class _Printer:
    """The default handle: print each output that is not None, one whole line at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __call__(self, record: Record, output: Any) -> None:
        if output is not None:
            line = f"{output}\n"
            with self._lock:
                sys.stdout.write(line)
                sys.stdout.flush()


def _resolve(spec: str, option: str) -> Callable[..., Any]:
    try:
        return resolve_function(spec)
    except UsageError as exc:
        raise UsageError(str(exc).replace("--fn", option, 1)) from None


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    config: dict[str, Any] = {"bootstrap.servers": args.bootstrap, "group.id": args.group}
    if args.from_beginning:
        config["auto.offset.reset"] = "earliest"
    for item in args.config:
        key, equals, value = item.partition("=")
        if not equals or not key:
            parser.error(f"--config wants KEY=VALUE, not {item!r}")
        config[key] = value
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        fn = _resolve(args.fn, "--fn")
        handle = _resolve(args.handle, "--handle") if args.handle else _Printer()
        consumer = ParallelConsumer(config, args.topic, fn, handle, ordering=args.ordering,
                                    workers=args.workers, window=args.window,
                                    backend=args.backend, retries=args.retries)
    except (UsageError, ValueError, TypeError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE

    def stop(signum: int, _frame: Any) -> None:
        logging.getLogger("orderedtask.kafka").info(
            "%s: finishing what is in flight, committing", signal.Signals(signum).name)
        consumer.stop()

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT,
                                                                   signal.SIGTERM)}
    try:
        consumer.run()
    except Exception as exc:  # noqa: BLE001 - the error that stopped it, after its commit
        print(f"{PROG}: stopped by {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    stats = consumer.stats()
    print(f"{PROG}: stopped cleanly, {stats['handled_total']:,} records handled", file=sys.stderr)
    return 0
