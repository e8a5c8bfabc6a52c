"""The tools that need configuration: web search and the MCP servers.

Kept out of :mod:`bot.app` so the composition root stays one screen of wiring:
:func:`web_search_tools` builds ``web_search`` when a provider is configured (none:
the tool does not exist, and the researcher does without), :func:`mcp_servers` one
tool source per ``[mcp.<name>]`` in ``coterie.toml``, with the pins in the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from bot.settings import Settings
from executor.models.pricing import PriceTable
from executor.tools.registry import Tool

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from adapters.mcp.servers import McpServers

__all__ = ["mcp_servers", "web_search_tools"]


def web_search_tools(settings: Settings, prices: PriceTable) -> list[Tool]:
    """``[web_search]`` over the configured providers, or ``[]`` when there is none."""
    if not (
        settings.searxng_url
        or settings.brave_api_key
        or settings.tavily_api_key
        or settings.search_providers
    ):
        # Why before the import: with nothing configured there is nothing to check or
        # build, and the search module (its providers, the network guard) costs a start
        # ~10 ms (`coterie ask`).
        return []
    from executor.tools.search import search_providers, web_search_tool

    def secret(v: object) -> str | None:
        get = getattr(v, "get_secret_value", None)
        return str(get()) if get is not None else None

    providers = search_providers(
        searxng_url=settings.searxng_url,
        brave_key=secret(settings.brave_api_key),
        tavily_key=secret(settings.tavily_api_key),
        order=settings.search_providers,
        brave_price_micros=prices.call_micros("search:brave"),
        tavily_price_micros=prices.call_micros("search:tavily"),
        brave_url=settings.brave_url,
        tavily_url=settings.tavily_url,
    )
    return [web_search_tool(providers)] if providers else []


def mcp_servers(
    settings: Settings,
    environ: Mapping[str, str],
    sessions: async_sessionmaker[AsyncSession],
    *,
    refresh_s: float | None = 60.0,
) -> McpServers:
    """One source per ``[mcp.<name>]`` (none when the file declares none)."""
    from adapters.mcp.config import load_mcp_config
    from adapters.mcp.servers import McpServers
    from adapters.storage.mcp_pins import SqlMcpPins

    configs = load_mcp_config(settings.config_file)
    return McpServers(configs, pins=SqlMcpPins(sessions), environ=environ, refresh_s=refresh_s)
