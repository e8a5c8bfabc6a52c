"""The process the SIGKILL test kills: coterie's real composition (``build_app``: SQL
audit and budget on ``DATABASE_URL``, the OpenAI SDK against ``OPENAI_BASE_URL``, the
critic, compaction) running ``WORKERS`` runs at once for ever, each worker one run
after another, every other one streamed. ``wait_here`` is a slow tool: its call waits
on the loopback server (``CHAOS_WAIT_URL``), which holds it.

Usage: ``python -m tests.chaos.worker WORKERS`` (the environment configures the rest).
"""

from __future__ import annotations

import asyncio
import os
import sys

import aiohttp

from bot.app import build_app
from bot.settings import Settings
from executor.agent import Bounds, Invocation, RunnableAgent
from executor.messages import Message
from executor.ports import NullDelivery
from executor.tools.registry import tool


async def main(workers: int) -> None:
    app = await build_app(Settings(_env_file=None))
    wait_url = os.environ["CHAOS_WAIT_URL"]

    @tool
    async def wait_here() -> str:
        """Wait for the server (a slow tool)."""
        async with aiohttp.ClientSession() as session, session.get(wait_url) as response:
            return str(response.status)

    app.tools.add(wait_here)
    agent = RunnableAgent(
        name="chaos",
        system_prompt="You work through tasks with the tools.",
        tier="standard",
        tools=("calculator", "wait_here"),
        bounds=Bounds(max_steps=8),
    )

    async def worker(w: int) -> None:
        n = 0
        while True:
            n += 1
            await app.executor.run(
                agent,
                Invocation(
                    [Message.user(f"task {w}-{n}")],
                    caller=app.operator(),
                    trigger="cli",
                    # A delivery makes the run stream: half the workers do.
                    delivery=NullDelivery() if w % 2 else None,
                ),
            )

    print("ready", flush=True)
    await asyncio.gather(*(worker(w) for w in range(workers)))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
