"""The command line: ``orderedtask COMMAND`` dispatches to one module per command."""

from __future__ import annotations

import sys

USAGE = """\
usage: orderedtask {demo,map,kafka} ...

commands:
  demo  decode a Kafka-like JSON stream in parallel, in offset order, and compare with a plain
        loop: orderedtask demo [--messages N] [--workers W] [--window W]
        [--decoder auto|orjson|json]
  map   apply MODULE:FUNCTION to each input line on several workers, results in input order
        (the `parallel --keep-order` of Python): orderedtask map --fn MODULE:FUNCTION
        [--workers N | --max-workers N] [--backend thread|process] [--window W] [--input FILE|-]
        [--output FILE|-] [--json] [--progress]
  kafka consume Kafka topics in parallel, in order, committing safely (needs the kafka
        extra): orderedtask kafka --bootstrap B --topic T --group G --fn MODULE:FUNCTION
        [--handle MODULE:FUNCTION] [--ordering partition|key|unordered] [--workers N]

`orderedtask COMMAND --help` describes a command."""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] == "demo":
        from ._demo import main as demo

        return demo(args[1:])
    if args[0] == "map":
        from ._map import main as map_command

        return map_command(args[1:])
    if args[0] == "kafka":
        try:
            from ..kafka._cli import main as kafka_command
        except ImportError as exc:  # confluent-kafka is missing: the message names the extra
            print(f"orderedtask kafka: {exc}", file=sys.stderr)
            return 2
        return kafka_command(args[1:])
    print(f"orderedtask: unknown command {args[0]!r} (try: orderedtask demo, orderedtask map, "
          "orderedtask kafka)", file=sys.stderr)
    return 2

