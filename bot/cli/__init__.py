"""The ``coterie`` command line.

Each verb group lives in its own module with a ``register(subparsers)`` function;
heavy imports (SDKs, discord.py, SQLAlchemy) happen inside the handlers, so
``coterie --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

# Modules under bot.cli that contribute verbs, in --help order.
_VERB_MODULES = (
    "ask",
    "chat",
    "discord",
    "status",
    "doctor",
    "db",
    "audit",
    "budget",
    "forget",
    "mcp",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coterie",
        description="A self-hosted Discord bot for AI personas, skills, audit and budgets.",
    )
    parser.add_argument("--version", action="version", version="coterie 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _VERB_MODULES:
        try:
            module = importlib.import_module(f"bot.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bot.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Why: httpx imports its own command-line client whenever click is installed (it
    # is, for uvicorn), and with it click, rich and pygments when present: 40-100 ms
    # and several MB on every start that imports httpx. A None entry makes that
    # optional import fail the way httpx expects; coterie never runs httpx's CLI.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    from bot.cli._common import run_handler

    return run_handler(handler, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
