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

__all__ = ["chat_loop", "register"]

QUIT = ("/quit", "/exit")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "chat",
        help="chat with a persona in the terminal",
        description="Chat with a persona in the terminal (the operator's budget and audit).",
    )
    p.add_argument("--persona", metavar="NAME", help="the persona (default: assistant)")
    p.set_defaults(handler=_chat)


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


def daemon_reader(prompt: str) -> Any:
    """Read a line in a daemon thread: a SIGTERM while the operator types must not wait
    for the Enter key (the default executor's threads are joined at exit)."""
    import asyncio
    import threading

    loop = asyncio.get_running_loop()
    future: asyncio.Future[str | None] = loop.create_future()

    def settle(value: str | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def read() -> None:
        try:
            line: str | None = input(prompt)
        except EOFError:
            line = None
        except BaseException as exc:  # e.g. a closed stdin
            loop.call_soon_threadsafe(settle, None, exc)
            return
        loop.call_soon_threadsafe(settle, line, None)

    threading.Thread(target=read, name="coterie-chat-input", daemon=True).start()
    return future


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
    from bot.cli._preflight import check_tools

    app = await build_app(settings)
    try:
        check_tools(settings.enabled_tools, list(app.tools.names))
        return await chat_loop(app, persona=args.persona, read=daemon_reader)
    finally:
        await app.close()
