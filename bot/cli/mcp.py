"""``coterie mcp list|accept``: the MCP servers of ``coterie.toml``, and accepting their tools.

``list`` shows each server (stdio command or URL; never an ``env`` or header value),
its health (it is started, or reached, to list what it offers; ``--offline`` reads the
database only; it never creates or upgrades the database: with none yet it says so, and
every listed tool is "not accepted"), each tool listed in ``tools = [...]`` with its status (offered, not
accepted, changed, missing), who may use it (privilege, approval) and which personas and
skills grant it, and how many tools the server has that nobody listed.

``accept NAME`` reaches the server, and pins what it offers now of the listed tools
(name, description, input schema, their hash). Run it after adding a server or a tool,
and after a server changed (``list``, ``coterie doctor`` and the admin channel say so):
a changed or new tool stays off until then. A running coterie reads the pins again
within a minute.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.mcp.servers import McpServers
    from adapters.storage.db import Database
    from bot.settings import Settings


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "mcp",
        help="list the MCP servers and accept their tools",
        description="The MCP servers declared as [mcp.<name>] in coterie.toml.",
    )
    verbs = p.add_subparsers(dest="mcp_command", metavar="VERB", required=True)
    ls = verbs.add_parser(
        "list", help="each server: where, health, its tools, and who may use them"
    )
    ls.add_argument(
        "--offline", action="store_true", help="do not start or reach the servers (pins only)"
    )
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    ls.set_defaults(handler=_list)
    acc = verbs.add_parser(
        "accept", help="pin the listed tools a server offers now (after adding or a change)"
    )
    acc.add_argument("name", help="the server, as in [mcp.NAME]")
    acc.set_defaults(handler=_accept)


@dataclass(slots=True)
class ToolLine:
    name: str
    status: str
    privilege: str | None
    approval: bool | None
    granted_by: list[str] = field(default_factory=list)
    # A call cut off by a restart: "runs again (read-only)", "... (idempotent)", "asks again".
    on_resume: str | None = None


@dataclass(slots=True)
class ServerReport:
    name: str
    transport: str
    target: str
    health: str
    ok: bool
    tools: list[ToolLine]
    unlisted: int | None  # tools on the server nobody listed (None: not reached)
    started_s: float | None = None


async def _open(settings: Settings) -> tuple[Database, McpServers]:
    from adapters.storage.db import Database
    from bot.app import load_environ
    from bot.tooling import mcp_servers

    db = Database.open(settings.database_url)
    try:
        await db.upgrade()
        servers = mcp_servers(settings, load_environ(settings), db.sessions, refresh_s=None)
    except BaseException:
        await db.close()
        raise
    return db, servers


async def reports(
    settings: Settings, servers: McpServers, db: Database | None, *, offline: bool
) -> list[ServerReport]:
    """What ``list`` and ``coterie doctor`` show; starts (and stops) the servers unless
    ``offline``."""
    from executor.errors import ConfigError, ToolFailed

    grants = await _grants(db) if db is not None else {}
    out: list[ServerReport] = []
    for source in servers.sources:
        c = source.config
        ok = True
        started: float | None = None
        try:
            await source.refresh()
            if offline:
                health = "not reached (--offline)"
            else:
                conn = await source.connect()
                started = conn.started_s
                health = f"up: {len(conn.tools)} tool(s) on the server"
        except (ToolFailed, ConfigError) as exc:
            ok, health = False, f"down: {exc}"
        finally:
            await source.close()
        lines = [
            ToolLine(
                name=s.exposed,
                status=s.status,
                privilege=s.policy.privilege.name.lower() if s.policy else None,
                approval=s.policy.approval if s.policy else None,
                granted_by=grants.get(s.exposed, []),
                on_resume=s.on_resume,
            )
            for s in source.states()
            if s.status != "not listed"
        ]
        unlisted = (
            sum(1 for s in source.states() if s.status == "not listed") if source.reached else None
        )
        out.append(
            ServerReport(c.name, c.transport, c.target, health, ok, lines, unlisted, started)
        )
    return out


async def _grants(db: Database) -> dict[str, list[str]]:
    """Tool name -> the personas and skills (by guild) that grant it."""
    from sqlalchemy import select

    from personas.markdown import load_builtins
    from personas.tables import PersonaRow
    from skills.tables import Skill, SkillVersion

    found: dict[str, list[str]] = {}
    for p in load_builtins().values():
        for t in p.tools:
            found.setdefault(t, []).append(f"persona {p.name} (built in)")
    async with db.sessions() as s:
        for name, guild, tools in (
            await s.execute(select(PersonaRow.name, PersonaRow.guild_id, PersonaRow.tools))  # type: ignore[call-overload]
        ).all():
            for t in tools or ():
                found.setdefault(t, []).append(f"persona {name} (guild {guild})")
        latest: dict[int, tuple[int, list[str]]] = {}
        for skill_id, version, tools in (
            await s.execute(select(SkillVersion.skill_id, SkillVersion.version, SkillVersion.tools))  # type: ignore[call-overload]
        ).all():
            if skill_id not in latest or version > latest[skill_id][0]:
                latest[skill_id] = (version, list(tools or ()))
        names = {
            i: (n, g)
            for i, n, g in (await s.execute(select(Skill.id, Skill.name, Skill.guild_id))).all()  # type: ignore[call-overload]
        }
        for skill_id, (_v, tools) in latest.items():
            n, g = names.get(skill_id, ("?", "?"))
            for t in tools:
                found.setdefault(t, []).append(f"skill {n} (guild {g})")
    return found


def _render(r: ServerReport) -> list[str]:
    lines = [f"{r.name}  {r.transport}  {r.target}", f"  health: {r.health}"]
    if not r.tools:
        lines.append("  no tools listed: add tools = [...] to offer some")
    width = max((len(t.name) for t in r.tools), default=0)
    for t in r.tools:
        who = f"{t.privilege}, {'approval' if t.approval else 'no approval'}"
        resume = f"; on resume {t.on_resume}" if t.on_resume else ""
        grants = f"; granted by {', '.join(t.granted_by)}" if t.granted_by else ""
        lines.append(f"  {t.name:<{width}}  {t.status:<12}  {who}{resume}{grants}")
    if r.unlisted:
        lines.append(
            f"  ({r.unlisted} more tool(s) on the server, not listed in tools = [...]: never offered)"
        )
    fix = [t.name for t in r.tools if t.status in ("not accepted", "changed")]
    if fix:
        lines.append(f"  to turn on {', '.join(fix)}: coterie mcp accept {r.name}")
    return lines


async def _list(args: argparse.Namespace) -> int:
    from adapters.mcp.config import load_mcp_config
    from adapters.mcp.pins import InMemoryPins, PinStore
    from adapters.mcp.servers import McpServers
    from adapters.storage.db import Database, DatabaseUnavailable
    from adapters.storage.mcp_pins import SqlMcpPins
    from bot.app import load_environ
    from bot.cli._common import fail, load_settings

    settings = load_settings()
    configs = load_mcp_config(settings.config_file)
    if not configs:
        if args.json:
            print(json.dumps({"servers": []}))
        else:
            print(f"no MCP servers: declare one as [mcp.<name>] in {settings.config_file}")
        return 0
    # Why create=False: a listing only reads. A database that is not there yet is said,
    # not made (coterie run, coterie db upgrade and coterie mcp accept make it).
    missing: str | None = None
    db: Database | None = None
    try:
        db = Database.open(settings.database_url, create=False)
    except DatabaseUnavailable as exc:
        missing = str(exc)
    try:
        if db is not None:
            version = await db.current()
            if version.current is None:
                missing = "the database has no coterie schema yet"
            elif not version.up_to_date:
                return fail(
                    f"the database is at revision {version.current}, not {version.head}: "
                    "`coterie run` upgrades it at start (or run `coterie db upgrade`)",
                    1,
                )
        pins: PinStore = (
            SqlMcpPins(db.sessions) if db is not None and missing is None else InMemoryPins()
        )
        servers = McpServers(configs, pins=pins, environ=load_environ(settings), refresh_s=None)
        found = await reports(
            settings, servers, db if missing is None else None, offline=args.offline
        )
    finally:
        if db is not None:
            await db.close()
    if args.json:
        body: dict[str, Any] = {"servers": [asdict(r) for r in found]}
        if missing is not None:
            body["no_database"] = missing
        print(json.dumps(body, ensure_ascii=False))
        return 0 if all(r.ok for r in found) else 1
    if missing is not None:
        print(
            f"no database yet ({missing}), so no tool has been accepted: "
            "`coterie mcp accept NAME` creates it and accepts the server's listed tools"
        )
        print()
    for i, r in enumerate(found):
        if i:
            print()
        print("\n".join(_render(r)))
    return 0 if all(r.ok for r in found) else 1


async def _accept(args: argparse.Namespace) -> int:
    from bot.cli._common import fail, load_settings

    settings = load_settings()
    db, servers = await _open(settings)
    try:
        source = servers.get(args.name)
        if source is None:
            known = ", ".join(servers.names) or "none"
            return fail(f"no MCP server {args.name!r} in {settings.config_file} (known: {known})")
        try:
            report = await source.accept(by=settings.operator_user_id)
        finally:
            await source.close()
    finally:
        await db.close()

    def names(items: list[str]) -> str:
        return ", ".join(items) or "none"

    print(f"accepted {report.server}: new {names(report.new)}; changed {names(report.changed)}")
    if report.unchanged:
        print(f"  unchanged: {names(report.unchanged)}")
    if report.missing:
        print(f"  listed in tools = [...] but not on the server: {names(report.missing)}")
    if report.unlisted:
        print(f"  on the server, not listed (never offered): {names(report.unlisted)}")
    print("a running coterie turns them on within a minute")
    return 0
