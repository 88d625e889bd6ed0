"""Command line: ``orderedtask demo`` (also ``python -m orderedtask demo``)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: orderedtask demo [--messages N] [--workers W] [--window W] "
              "[--decoder auto|orjson|json]\n\n"
              "demo  decode a Kafka-like JSON stream in parallel, in offset order, and "
              "compare with a plain loop")
        return 0 if args else 2
    if args[0] == "demo":
        from ._demo import main as demo

        return demo(args[1:])
    print(f"orderedtask: unknown command {args[0]!r} (try: orderedtask demo)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
