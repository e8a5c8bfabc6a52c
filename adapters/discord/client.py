"""The Discord client as the cogs see it: a ``commands.AutoShardedBot`` with a typed
``app``, whose shards are decided by a planner and may change while it runs.

``bot.client.CoterieBot`` is a ``CoterieClient[App]``. A cog may not import ``bot``
(the layers point down), so each cog names what it needs of the app as a small
``Protocol`` and types its interactions ``discord.Interaction[CoterieClient[ItsApp]]``;
mypy then checks every call from a cog to a service, and ``bot.client`` checks that
``App`` satisfies each cog's protocol.

Shards: discord.py's ``AutoShardedClient`` launches a fixed ``shard_ids`` list at
connect. Here :meth:`CoterieClient.launch_shards` asks a
:class:`~adapters.services.instances.ShardPlanner` (the count and this process's
first shards: all of them on one process, a share of them among several on
PostgreSQL), and :meth:`add_shard` / :meth:`remove_shard` change them afterwards,
when another process dies or joins (:class:`~adapters.services.instances.Membership`
drives them). A process with no shard yet stands by: it is "ready" with no guilds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Generic, TypeVar

from discord.ext import commands
from discord.gateway import DiscordWebSocket

from adapters.discord.history import AttachmentTexts
from adapters.discord.identity import app_owner_ids
from adapters.discord.webhooks import Webhooks
from adapters.services.approval import ApprovalService, InMemoryApprovals
from adapters.services.instances import FixedShards, ShardPlanner

__all__ = ["CoterieClient"]

log = logging.getLogger("coterie.discord")

AppT_co = TypeVar("AppT_co", covariant=True)


class CoterieClient(commands.AutoShardedBot, Generic[AppT_co]):
    """``app``: the composition root's services; ``owner_ids``: from the settings;
    ``webhooks``: the persona webhooks, one cache for every cog and the scheduler (so a
    reply to a scheduled post is recognised as a reply to a persona); ``approvals``: the
    questions waiting for an Approve/Deny press, asked by every delivery and answered
    by the buttons (the app's, on the database, once the bot starts; until then, or
    for an app without one, this process's own); ``shards``: who
    decides the shards (default: ``shard_count``/``shard_ids`` if given, else every
    shard of the count Discord suggests); ``identify_interval_s``: the wait before each
    IDENTIFY after the first (Discord's rate limit); ``attachment_texts``: the text
    files conversations have shown, each downloaded once, not on every turn."""

    def __init__(
        self,
        *,
        app: AppT_co | None,
        owner_ids: frozenset[int],
        shards: ShardPlanner | None = None,
        identify_interval_s: float = 5.0,
        **options: Any,
    ) -> None:
        pinned_count = options.pop("shard_count", None)
        pinned_ids = options.pop("shard_ids", None)
        super().__init__(**options)
        self._app = app
        self._owner_ids = owner_ids
        self.webhooks = Webhooks()
        self.approvals = ApprovalService(InMemoryApprovals())
        self.attachment_texts = AttachmentTexts()
        self.shard_planner: ShardPlanner = shards or FixedShards(pinned_count, pinned_ids)
        self.identify_interval_s = identify_interval_s
        self._gateway: Any = None  # the gateway's URL, once the first shards connect
        self._served: set[int] = set()
        self._shard_changes = asyncio.Lock()

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

    async def close(self) -> None:
        # Why: AutoShardedClient.close signals a queue it makes at login; a client closed
        # without logging in (``coterie sync`` reading the command tree) has none yet.
        if not hasattr(self, "_AutoShardedClient__queue"):
            setattr(self, "_AutoShardedClient__queue", asyncio.PriorityQueue())  # noqa: B010
        await super().close()

    # --- shards --------------------------------------------------------------------

    @property
    def served_shards(self) -> frozenset[int]:
        """The shards this process is connected to (or connecting)."""
        return frozenset(self._served)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        if not initial and self.identify_interval_s > 0:
            await asyncio.sleep(self.identify_interval_s)

    async def launch_shards(self) -> None:
        """discord.py's, with the shards from the planner (see the module docstring)."""
        if self.is_closed():
            return
        recommended: int | None = None
        if self.shard_planner.needs_recommendation:
            recommended, _url, _limits = await self.http.get_bot_gateway()
        # Why the default gateway, as discord.py does whenever the count is given: a
        # shard added later connects to the same place as the first ones.
        self._gateway = DiscordWebSocket.DEFAULT_GATEWAY
        count, ids = await self.shard_planner.plan_shards(recommended)
        self.shard_count = count
        self._connection.shard_count = count
        self.shard_ids = list(ids)
        self._connection.shard_ids = list(ids)
        async with self._shard_changes:
            for n, shard_id in enumerate(ids):
                self._served.add(shard_id)
                await self.launch_shard(self._gateway, shard_id, initial=n == 0)
        if not ids:
            log.info("standing by: every one of the %d shard(s) is served elsewhere", count)
            # Why: "ready" means every shard this process serves is; with none, it is.
            self._ready.set()
        self.shard_planner.attach(self)

    async def add_shard(self, shard_id: int) -> None:
        """Connect one more shard (another process's, which stopped or made room)."""
        async with self._shard_changes:
            if shard_id in self._served or self.is_closed() or self._gateway is None:
                return
            self._served.add(shard_id)
            ids = [*self._connection.shard_ids, shard_id]
            self.shard_ids = ids
            self._connection.shard_ids = ids
            await self.launch_shard(self._gateway, shard_id)

    async def remove_shard(self, shard_id: int) -> None:
        """Disconnect one shard (another process takes it) and forget its guilds."""
        async with self._shard_changes:
            if shard_id not in self._served:
                return
            self._served.discard(shard_id)
            info = self.get_shard(shard_id)
            if info is not None:
                await info.disconnect()
            # Why the name-mangled map: discord.py keeps its shards there and offers no
            # way to drop one; a stale entry would be counted by `latency` and `close`.
            shards: dict[int, Any] = getattr(self, "_AutoShardedClient__shards", {})
            shards.pop(shard_id, None)
            ids = [s for s in self._connection.shard_ids if s != shard_id]
            self.shard_ids = ids
            self._connection.shard_ids = ids
            for guild in [g for g in self.guilds if g.shard_id == shard_id]:
                self._connection._remove_guild(guild)
