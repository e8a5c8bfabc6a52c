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


async def _chat(args: argparse.Namespace) -> int:
    from bot.app import build_app
    from bot.settings import Settings

    app = await build_app(Settings())
    try:
        return await chat_loop(app, persona=args.persona)
    finally:
        await app.close()
