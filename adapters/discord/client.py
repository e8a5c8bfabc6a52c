"""The Discord client as the cogs see it: a ``commands.Bot`` with a typed ``app``.

``bot.client.CoterieBot`` is a ``CoterieClient[App]``. A cog may not import ``bot``
(the layers point down), so each cog names what it needs of the app as a small
``Protocol`` and types its interactions ``discord.Interaction[CoterieClient[ItsApp]]``;
mypy then checks every call from a cog to a service, and ``bot.client`` checks that
``App`` satisfies each cog's protocol.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from discord.ext import commands

from adapters.discord.identity import app_owner_ids
from adapters.discord.webhooks import Webhooks

__all__ = ["CoterieClient"]

AppT_co = TypeVar("AppT_co", covariant=True)


class CoterieClient(commands.Bot, Generic[AppT_co]):
    """``app``: the composition root's services; ``owner_ids``: from the settings;
    ``webhooks``: the persona webhooks, one cache for every cog and the scheduler (so a
    reply to a scheduled post is recognised as a reply to a persona)."""

    def __init__(self, *, app: AppT_co | None, owner_ids: frozenset[int], **options: Any) -> None:
        super().__init__(**options)
        self._app = app
        self._owner_ids = owner_ids
        self.webhooks = Webhooks()

    @property
    def app(self) -> AppT_co:
        """The app. Only ``coterie sync`` builds a client without one (and runs no command)."""
        if self._app is None:
            raise RuntimeError("this client was built without an app (coterie sync)")
        return self._app

    @property
    def has_app(self) -> bool:
        return self._app is not None

    @property
    def owner_user_ids(self) -> frozenset[int]:
        """Who counts as an owner of this coterie: the configured owner ids plus the
        application's owner (or its team's members)."""
        return self._owner_ids | app_owner_ids(self.application)
