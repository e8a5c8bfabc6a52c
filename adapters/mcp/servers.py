"""The deployment's MCP servers, built once from the config, with one place to report.

:class:`McpServers` builds a :class:`~adapters.mcp.source.McpServerSource` per
``[mcp.<name>]`` (the app adds them to its tool registry) and carries their reports: a
tool that changed, went missing or is listed but not accepted is logged, and, once the
Discord client has attached its poster (:meth:`McpServers.attach`), posted to the admin
channel of the guild whose call revealed it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from adapters.mcp.config import McpServerConfig
from adapters.mcp.pins import PinStore
from adapters.mcp.source import McpServerSource
from executor.agent import Caller
from executor.tools.ssrf import SSRFGuard

__all__ = ["AdminPoster", "McpServers"]

log = logging.getLogger(__name__)

#: ``(guild_id, text)``: post ``text`` to that guild's admin channel.
AdminPoster = Callable[[str, str], Awaitable[None]]


class McpServers:
    def __init__(
        self,
        configs: Sequence[McpServerConfig],
        *,
        pins: PinStore,
        environ: Mapping[str, str],
        base_guard: SSRFGuard | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        refresh_s: float | None = 60.0,
    ) -> None:
        from executor.tools.netguard import AllowlistGuard

        self.pins = pins
        self._poster: AdminPoster | None = None
        self.sources = [
            McpServerSource(
                c,
                pins=pins,
                environ=environ,
                guard=AllowlistGuard.of(networks=c.allow_networks, base=base_guard),
                notify=self._notify,
                monotonic=monotonic,
                refresh_s=refresh_s,
            )
            for c in configs
        ]

    def get(self, name: str) -> McpServerSource | None:
        return next((s for s in self.sources if s.config.name == name), None)

    @property
    def names(self) -> list[str]:
        return [s.config.name for s in self.sources]

    def attach(self, poster: AdminPoster) -> None:
        self._poster = poster

    def detach(self, poster: AdminPoster) -> None:
        if self._poster is poster:
            self._poster = None

    async def _notify(self, text: str, caller: Caller | None) -> None:
        guild = caller.guild_id if caller is not None else None
        if self._poster is not None and guild:
            await self._poster(guild, text)
