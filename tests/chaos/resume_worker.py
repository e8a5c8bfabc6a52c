"""The process the resume chaos test kills: ``coterie run`` (``bot.lifecycle.serve`` with
the real ``build_app``, on ``DATABASE_URL``, the OpenAI SDK against ``OPENAI_BASE_URL``,
discord.py pointed at the fake Discord by ``tests/lifecycle/shim``), with one tool more
than the built-ins: ``save_report``, which changes something (neither read-only nor
idempotent) and whose call waits on the loopback server (``CHAOS_WAIT_URL``), which
can hold it. Every persona may use it and the calculator.

Usage: ``python -m tests.chaos.resume_worker`` (the environment configures the rest).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from typing import Any

import aiohttp

from bot.app import App, build_app
from bot.cli._logging import setup_logging
from bot.lifecycle import serve
from bot.settings import Settings
from executor.agent import RunnableAgent
from executor.tools.registry import ToolContext, tool
from personas.model import Persona
from personas.runnable import to_runnable

TOOLS = ("calculator", "save_report")


def with_tools(persona: Persona) -> RunnableAgent:
    return dataclasses.replace(to_runnable(persona), tools=TOOLS)


async def main() -> int:
    settings = Settings()
    setup_logging(settings)
    wait_url = os.environ["CHAOS_WAIT_URL"]

    @tool
    async def save_report(title: str, ctx: ToolContext) -> str:
        """Save a report (slow: the server decides when it is saved).

        Args:
            title: the report's title
        """
        async with (
            aiohttp.ClientSession() as session,
            session.get(wait_url, params={"call": ctx.call_id}) as response,
        ):
            return f"saved {title!r} ({response.status})"

    async def build(settings: Settings, **options: Any) -> App:
        app = await build_app(settings, to_agent=with_tools, **options)
        app.tools.add(save_report)
        return app

    assert settings.discord_token is not None
    return await serve(settings, settings.discord_token.get_secret_value(), build=build)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
