"""``coterie chat [--persona NAME]``: chat with a persona in the terminal.

The same chat service as Discord (personas, executor, budget, audit), with the
operator as the caller (``settings.operator_user_id``, owner privilege) and the
trigger ``console``. The history is kept for the session; ``/quit`` or end of
input (Ctrl-D) leaves.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

__all__ = ["StdinLines", "chat_loop", "register"]

QUIT = ("/quit", "/exit")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "chat",
        help="chat with a persona in the terminal",
        description="Chat with a persona in the terminal (the operator's budget and audit).",
    )
    p.add_argument("--persona", metavar="NAME", help="the persona (default: assistant)")
    p.set_defaults(handler=_chat, quick_exit=True, defer_gc=True)


async def chat_loop(
    app: Any,
    *,
    persona: str | None = None,
    read: Any = None,
    out: TextIO | None = None,
) -> int:
    """The REPL on an app; ``read(prompt) -> line | None`` (default: stdin)."""
    from adapters.services.console import ConsoleSession, stdin_reader

    out = out if out is not None else sys.stdout
    read = read or stdin_reader
    if app.chat is None:
        from bot.cli._common import fail

        return fail("chat is not available: the app has no chat service")
    if persona is not None:
        # An unknown persona is a clear error before the first prompt.
        from personas.errors import PersonaNotFound

        if await app.chat.find_persona(None, persona) is None:
            raise PersonaNotFound(persona)
    session = ConsoleSession(app.chat, app.operator(), persona=persona, out=out, ask=read)
    name = persona or app.chat.fallback_persona
    out.write(f"coterie chat with {name} — /quit to leave\n")
    while True:
        line = await read("you> ")
        if line is None or line.strip() in QUIT:
            break
        if not line.strip():
            continue
        out.write(f"{session.persona or name}> ")
        out.flush()
        await session.send(line)
    return 0


class StdinLines:
    """Lines from stdin on the event loop itself (``loop.add_reader``), so a SIGTERM
    while the operator types ends the session at once: no thread blocked in
    ``input()`` for the interpreter to wait on at exit. A file or /dev/null (which
    the loop cannot watch) is read in a thread; those never block."""

    def __init__(self, fd: int = 0) -> None:
        self.fd = fd
        self.buffer = b""
        self.eof = False

    async def __call__(self, prompt: str) -> str | None:
        import asyncio

        sys.stdout.write(prompt)
        sys.stdout.flush()
        while b"\n" not in self.buffer and not self.eof:
            chunk = await self._read(asyncio.get_running_loop())
            self.eof = not chunk
            self.buffer += chunk
        if not self.buffer:
            return None
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("utf-8", "replace").rstrip("\r")

    async def _read(self, loop: Any) -> bytes:
        import asyncio
        import os

        future: asyncio.Future[bytes] = loop.create_future()

        def ready() -> None:
            try:
                chunk = os.read(self.fd, 4096)
            except BlockingIOError:
                return
            except OSError as exc:
                future.set_exception(exc)
            else:
                future.set_result(chunk)
            loop.remove_reader(self.fd)

        try:
            loop.add_reader(self.fd, ready)
        except (OSError, ValueError):  # a regular file or /dev/null: reads never block
            return await asyncio.to_thread(os.read, self.fd, 4096)
        try:
            return await future
        finally:
            loop.remove_reader(self.fd)


async def _chat(args: argparse.Namespace) -> int:
    from bot.cli._common import load_settings
    from bot.cli._logging import setup_logging
    from bot.lifecycle import Stopped, cancel_on_sigterm

    settings = load_settings()
    setup_logging(settings, level="DEBUG" if settings.log_level == "DEBUG" else "WARNING")
    try:
        return await cancel_on_sigterm(_chat_with(args, settings))
    except Stopped as stop:
        print(f"\ncoterie: {stop}; the run in flight was closed as cancelled", file=sys.stderr)
        return stop.code


async def _chat_with(args: argparse.Namespace, settings: Any) -> int:
    from bot.app import build_app
    from bot.cli._common import started
    from bot.cli._preflight import check_tools

    app = await build_app(settings, instance="cli", warm=True, scheduler=False)
    started()
    try:
        check_tools(settings.enabled_tools, list(app.tools.names))
        return await chat_loop(app, persona=args.persona, read=StdinLines())
    finally:
        await app.close()
