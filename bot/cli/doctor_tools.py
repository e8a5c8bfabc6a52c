"""``coterie doctor``'s checks of the configured tools: web search and the MCP servers.

    search       which web_search providers are configured (none: the tool is off)
    mcp NAME     the server starts (or answers, over HTTP) and lists its tools (not
                 --offline); each listed tool is accepted and unchanged since

A server that cannot be reached fails; a tool that changed since it was accepted, is
missing, or was never accepted is a warning naming ``coterie mcp accept NAME``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.cli.doctor import Report

__all__ = ["mcp_checks", "search_check"]


def search_check(report: Report, settings: Any) -> None:
    from executor.errors import ConfigError
    from executor.tools.search import search_providers

    try:
        providers = search_providers(
            searxng_url=settings.searxng_url,
            brave_key="set" if settings.brave_api_key else None,
            tavily_key="set" if settings.tavily_api_key else None,
            order=settings.search_providers,
        )
    except ConfigError as exc:
        report.add("search", "FAIL", str(exc), "fix the search settings")
        return
    if not providers:
        report.add(
            "search",
            "SKIP",
            "web_search is off: no search provider is configured",
            "set COTERIE_SEARXNG_URL (self-hosted), BRAVE_API_KEY or TAVILY_API_KEY",
        )
        return
    names = ", ".join(p.name for p in providers)
    report.add("search", "OK", f"web_search through {names} (tried in this order)")


async def mcp_checks(report: Report, settings: Any, url: Any, *, offline: bool) -> None:
    from adapters.mcp.config import load_mcp_config
    from executor.errors import ConfigError

    try:
        configs = load_mcp_config(settings.config_file)
    except ConfigError as exc:
        report.add("mcp", "FAIL", str(exc), f"fix the [mcp] tables of {settings.config_file}")
        return
    if not configs:
        return
    schema_ok = any(c.name == "schema" and c.status == "OK" for c in report.checks)
    if url is None or not schema_ok:
        for c in configs:
            report.add(f"mcp {c.name}", "SKIP", "the database is not at the newest revision")
        return
    from adapters.mcp.servers import McpServers
    from adapters.storage.db import Database
    from adapters.storage.mcp_pins import SqlMcpPins
    from bot.app import load_environ
    from bot.cli.doctor import _read_only
    from bot.cli.mcp import reports

    db = Database.open(_read_only(url))
    try:
        servers = McpServers(
            configs, pins=SqlMcpPins(db.sessions), environ=load_environ(settings), refresh_s=None
        )
        found = await reports(settings, servers, None, offline=offline)
    finally:
        await db.close()
    for r in found:
        name = f"mcp {r.name}"
        if not r.ok:
            report.add(name, "FAIL", f"{r.target}: {r.health}", "fix its [mcp] table or start it")
            continue
        on = [t.name for t in r.tools if t.status == "offered"]
        problems = [f"{t.name} {t.status}" for t in r.tools if t.status != "offered"]
        detail = f"{r.health}; offered: {', '.join(on) or 'none'}"
        if problems:
            report.add(
                name,
                "WARN",
                f"{detail}; off: {', '.join(problems)}",
                f"review, then: coterie mcp accept {r.name}",
            )
        elif not r.tools:
            report.add(name, "WARN", f"{detail}; no tools listed", "list some in tools = [...]")
        else:
            report.add(name, "OK", detail)
