"""``sluiceway``: the command line. Each subcommand lives in its own module with
``add_parser(subparsers)`` and ``run(args) -> int``.

A reader that goes away (``sluiceway chat … | head -1``) is not an error: the command stops
quietly, as Unix tools do, with exit code 141 (128 + SIGPIPE) and no traceback; ``chat`` first asks
the server to cancel the answer it was printing."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from sluiceway.cli import bench, chat, doctor, serve

COMMANDS: tuple[ModuleType, ...] = (serve, chat, bench, doctor)
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell reports for a tool that stopped because its reader left."""


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="sluiceway",
        description="Stream LLM answers token by token, in the protocol each client speaks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    for command_parser in sub.choices.values():
        command_parser.set_defaults(command_parser=command_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 failure, 2 usage error, 141 output closed)."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command is None:
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        parser.print_help(sys.stderr)
        return 2
    if unknown:  # the subcommand's own usage, not the top-level one
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        code: int = args.run(args)
        sys.stdout.flush()  # now, so that a closed pipe is noticed here and not at exit
    except BrokenPipeError:
        silence_stdout()
        return EXIT_BROKEN_PIPE
    return code


def silence_stdout() -> None:
    """Point stdout at the null device, so the interpreter's flush at exit finds no closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture): replace it
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (open until exit)
    finally:
        os.close(devnull)


if __name__ == "__main__":
    raise SystemExit(main())
