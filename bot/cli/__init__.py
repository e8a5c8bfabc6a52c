"""The ``coterie`` command line.

Each verb group lives in its own module with a ``register(subparsers)`` function;
heavy imports (SDKs, discord.py, SQLAlchemy) happen inside the handlers, so
``coterie --help`` stays fast.

The program (:func:`entry`: the ``coterie`` script and ``python -m bot``) ends a verb
that sets ``quick_exit`` (``ask``, ``chat``: one job, then done) without the
interpreter's teardown: once a provider's SDK is loaded, freeing every object of its
thousands of classes one by one takes 0.5-1 s, longer than the answer often took.
Such a verb has closed what it opened (the database, the providers, the audit's last
write) before it returns. :func:`main` (what tests call) always returns.

A verb that sets ``defer_gc`` (``ask``, ``chat``, ``run``) starts with the cyclic
garbage collector off, and turns it back on (after :func:`gc.freeze`: what the start
built stays) once its app is built and its SDKs imported
(:func:`bot.cli._common.started`): importing an SDK makes hundreds of thousands of
objects, and each full collection meanwhile walks all of them again (a quarter to
half a second of ``coterie ask``'s start).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

__all__ = ["entry", "main"]

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
    """Run the verb ``argv`` names (None: the process's arguments); its exit code."""
    return _main(argv)[0]


def entry() -> NoReturn:
    """The ``coterie`` program: :func:`main`, then the process ends (at once after a
    verb with ``quick_exit``: see the module's docstring)."""
    gc.disable()  # until the verb's start is over (see the module's docstring)
    code, quick = _main(None)
    if quick:
        _leave(code)
    sys.exit(code)


def _leave(code: int) -> NoReturn:
    import contextlib
    import logging

    logging.shutdown()  # what the skipped exit handlers would have flushed
    for stream in (sys.stdout, sys.stderr):
        # A reader gone, a stream closed: nothing left to keep.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def _main(argv: Sequence[str] | None) -> tuple[int, bool]:
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
        return 2, False
    from bot.cli._common import run_handler

    if not getattr(args, "defer_gc", False):
        gc.enable()
    return run_handler(handler, args), bool(getattr(args, "quick_exit", False))


if __name__ == "__main__":  # pragma: no cover
    entry()
