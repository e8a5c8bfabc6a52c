"""The persona webhook cache: one look and at most one webhook per channel, however many
requests ask for it at once. Duck-typed channel objects: no Discord."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any
from unittest import mock

import discord

from adapters.discord.webhooks import Webhooks


class _Channel:
    """What ``Webhooks`` reads of a text channel; listing its webhooks waits for ``gate``."""

    def __init__(self, channel_id: int) -> None:
        self.id = channel_id
        self.me = SimpleNamespace(id=99)
        self.guild = SimpleNamespace(me=self.me)
        self.gate = asyncio.Event()
        self.listed = 0
        self.created: list[Any] = []

    def permissions_for(self, _member: Any) -> Any:
        return SimpleNamespace(manage_webhooks=True)

    async def webhooks(self) -> list[Any]:
        self.listed += 1
        await self.gate.wait()
        return list(self.created)

    async def create_webhook(self, *, name: str) -> Any:
        hook = SimpleNamespace(
            id=1000 + len(self.created), token="t", user=self.me, application_id=None
        )
        self.created.append(hook)
        return hook


async def test_a_burst_in_a_new_channel_looks_once_and_makes_one_webhook() -> None:
    """300 mentions arriving at once in a channel the process has not used yet asked for
    its webhook together: each listed the channel's webhooks (29 GETs in the 300-run
    test) and, had none existed, each would have made one."""
    hooks = Webhooks()
    channel = _Channel(7)
    with mock.patch.object(discord, "TextChannel", _Channel):
        asks = [asyncio.create_task(hooks.for_channel(channel)) for _ in range(10)]
        for _ in range(10):
            await asyncio.sleep(0)
        channel.gate.set()
        got = await asyncio.gather(*asks)
        assert channel.listed == 1 and len(channel.created) == 1
        assert all(h is channel.created[0] for h in got)
        assert await hooks.for_channel(channel) is channel.created[0]  # cached
        assert channel.listed == 1


async def test_a_caller_cancelled_while_waiting_leaves_the_others_their_webhook() -> None:
    hooks = Webhooks()
    channel = _Channel(8)
    with mock.patch.object(discord, "TextChannel", _Channel):
        first = asyncio.create_task(hooks.for_channel(channel))
        second = asyncio.create_task(hooks.for_channel(channel))
        for _ in range(10):
            await asyncio.sleep(0)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        channel.gate.set()
        hook = await second
        assert hook is channel.created[0] and len(channel.created) == 1
