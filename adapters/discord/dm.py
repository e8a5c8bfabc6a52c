"""Direct messages to members: budget warnings and schedule failures (:class:`DirectMessages`).

It implements :class:`adapters.services.budget_alerts.AlertSender`; the client attaches
it in ``setup_hook`` and detaches it on close. Nothing it sends can ping.
"""

from __future__ import annotations

import discord

__all__ = ["DirectMessages"]


class DirectMessages:
    def __init__(self, client: discord.Client) -> None:
        self.client = client

    async def send_warning(self, user_id: str, text: str) -> None:
        """DM the member; raises ``discord.HTTPException`` when Discord refuses (DMs
        closed): the caller logs it."""
        await self.send(user_id, text)

    async def send(self, user_id: str, text: str) -> None:
        """DM the member (budget warnings, schedule failures); raises
        ``discord.HTTPException`` when Discord refuses."""
        uid = int(user_id)
        user = self.client.get_user(uid) or await self.client.fetch_user(uid)
        await user.send(text[:2000], allowed_mentions=discord.AllowedMentions.none())
