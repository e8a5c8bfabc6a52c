"""``coterie doctor``: is this installation ready to run, and what to fix if not.

Each check prints one line, ``OK``, ``WARN``, ``FAIL`` or ``SKIP``, and the fix::

    settings     the environment and .env parse (one line per bad variable)
    config       coterie.toml (tiers, providers, prices) reads
    provider     each model a tier can use answers a one-word request   (not --offline)
    tier         each tier has a usable candidate (the default tier must)
    tools        every enabled tool exists and its libraries import
    search       which web_search providers are configured
    mcp NAME     each MCP server starts and lists its tools (not --offline); each
                 listed tool is accepted and unchanged since (coterie mcp accept)
    database     the URL is one coterie speaks; the file/server opens read-only,
                 passes an integrity check, and is at the newest migration
    instance     whether a `coterie run` holds the database (--running: one must)
    discord      the token is set and valid, the Message Content intent is on, and
                 in each server the bot has the permissions its features need (not --offline)
    scheduler    every enabled schedule can be scheduled, and while coterie runs the
                 next run the table shows is the one its job fires

Exit 0 when everything is OK (or skipped), 1 with warnings, 2 with a failure;
``--json`` prints one object for scripts. ``--running`` is a health check of a
running coterie (Docker's HEALTHCHECK): the instance must hold its database, and the
exit code is what a health check wants, 0 healthy (warnings included), 1 a failure.
It never changes anything: no schema upgrade, no file created, no lock kept.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Check", "Report", "doctor", "register"]

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"
_RANK = {OK: 0, SKIP: 0, WARN: 1, FAIL: 2}

# Discord permission bits coterie's features need, with what breaks without each.
_NEEDED = (
    (1 << 10, "View Channels", "coterie cannot see the channels"),
    (1 << 11, "Send Messages", "coterie cannot answer"),
    (1 << 38, "Send Messages in Threads", "no answers in /chat threads"),
    (1 << 35, "Create Public Threads", "/chat answers below its starter, not in a thread"),
    (1 << 16, "Read Message History", "reply chains and threads are not read"),
    (1 << 29, "Manage Webhooks", "personas speak as the bot, headed by their name"),
    (1 << 15, "Attach Files", "no charts in /audit and /budget, no /persona export"),
    (1 << 14, "Embed Links", "no embeds in /audit, /budget and /config"),
)
_ADMINISTRATOR = 1 << 3
# Application flags: GATEWAY_MESSAGE_CONTENT and its unverified-bot variant.
_MESSAGE_CONTENT = (1 << 18) | (1 << 19)
_PROVIDER_TIMEOUT_S = 30.0


@dataclass(slots=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str | None = None

    def line(self) -> str:
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{self.status:<5} {self.name}: {self.detail}{fix}"


@dataclass(slots=True)
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, status: str, detail: str, fix: str | None = None) -> Check:
        check = Check(name, status, detail, fix)
        self.checks.append(check)
        return check

    @property
    def code(self) -> int:
        return max((_RANK[c.status] for c in self.checks), default=0)

    def summary(self) -> str:
        return {0: "ok", 1: "warn", 2: "fail"}[self.code]

    def as_json(self) -> str:
        return json.dumps(
            {"status": self.summary(), "checks": [asdict(c) for c in self.checks]},
            ensure_ascii=False,
        )


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "doctor",
        help="check the settings, models, tools, database and Discord; print the fixes",
        description="Check that coterie can run here, one line per check with the fix. "
        "Exit 0 all OK, 1 warnings, 2 failures. Changes nothing.",
    )
    p.add_argument(
        "--offline",
        action="store_true",
        help="skip what needs the network (the providers' answers, Discord)",
    )
    p.add_argument(
        "--running",
        action="store_true",
        help="a health check of a running coterie: one must hold the database; "
        "exit 0 healthy (warnings included), 1 on a failure",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_doctor)


async def _doctor(args: argparse.Namespace) -> int:
    report = await doctor(offline=args.offline, running=args.running)
    if args.json:
        print(report.as_json())
    else:
        for check in report.checks:
            print(check.line())
    if args.running:  # a health check: only a failure is unhealthy
        return 1 if report.code == 2 else 0
    return report.code


async def doctor(*, offline: bool = False, running: bool = False) -> Report:
    """Run every check (see the module docstring)."""
    report = Report()
    settings = _settings(report)
    if settings is None:
        return report
    resolver = _config(report, settings)
    await _models(report, settings, resolver, offline=offline)
    _tools(report, settings)
    url = await _database(report, settings)
    if url is not None:
        await _instance(report, url, running=running)
    from bot.cli.doctor_tools import mcp_checks, search_check

    search_check(report, settings)
    await mcp_checks(report, settings, url, offline=offline)
    await _discord(report, settings, offline=offline)
    await _scheduler(report, settings, url)
    return report


# --- settings and config -------------------------------------------------------------


def _settings(report: Report) -> Any:
    from bot.cli._common import SettingsInvalid, load_settings

    try:
        settings = load_settings()
    except SettingsInvalid as exc:
        for line in exc.lines:
            var = line.split(":", 1)[0].split("=", 1)[0]
            report.add("settings", FAIL, line, f"correct {var} (see .env.example)")
        return None
    source = ".env and the environment" if Path(".env").is_file() else "the environment"
    report.add("settings", OK, f"read from {source}")
    return settings


def _config(report: Report, settings: Any) -> Any:
    from bot.app import build_resolver
    from executor.errors import ConfigError

    try:
        config, _, resolver = build_resolver(settings)
    except ConfigError as exc:
        report.add("config", FAIL, str(exc), "fix the file or the variable it names")
        return None
    where = str(settings.config_file) if settings.config_file.is_file() else "built-in defaults"
    report.add(
        "config", OK, f"{len(config.tiers)} tiers from {where} (default {config.default_tier})"
    )
    return resolver


# --- providers and tiers -------------------------------------------------------------


async def _ping(resolver: Any, name: str) -> tuple[bool, str]:
    from executor.errors import CoterieError
    from executor.messages import Message
    from executor.models.base import ModelRequest
    from executor.redaction import excerpt

    started = time.perf_counter()
    try:
        model = resolver.providers.model(name)
        await asyncio.wait_for(
            model.generate(ModelRequest(messages=[Message.user("Say OK.")], max_tokens=16)),
            _PROVIDER_TIMEOUT_S,
        )
    except TimeoutError:
        return False, f"no answer in {_PROVIDER_TIMEOUT_S:g}s"
    except CoterieError as exc:
        return False, excerpt(str(exc), 300)
    except Exception as exc:  # an SDK's own error: say what it was, not a traceback
        return False, excerpt(f"{type(exc).__name__}: {exc}", 300)
    return True, f"answered in {(time.perf_counter() - started) * 1000:.0f} ms"


async def _models(report: Report, settings: Any, resolver: Any, *, offline: bool) -> None:
    from bot.cli._preflight import tier_checks

    if resolver is None:
        report.add("tier", SKIP, "the configuration did not read")
        return
    checks = tier_checks(resolver) or []
    answered: dict[str, tuple[bool, str]] = {}
    usable = sorted({name for c in checks for name in c.usable})
    if offline:
        report.add("provider", SKIP, "--offline: no request sent")
    elif usable:
        results = await asyncio.gather(*(_ping(resolver, name) for name in usable))
        answered = dict(zip(usable, results, strict=True))
        for name, (ok, detail) in answered.items():
            provider = name.split(":", 1)[0]
            var = _key_var(resolver, provider)
            fix = None if ok else f"check {var} and the model name" if var else "check the server"
            report.add(f"provider {name}", OK if ok else FAIL, detail, fix)
        await resolver.providers.aclose()
    default = resolver.default_tier
    for check in checks:
        working = [n for n in check.usable if answered.get(n, (True, ""))[0]]
        bad = [f"{n} (unknown provider)" for n in check.unknown]
        if working:
            detail = ", ".join(working) + (" (answered)" if answered else " (configured)")
            status = WARN if bad else OK
            report.add(f"tier {check.tier}", status, detail + "".join(f"; {b}" for b in bad))
            continue
        status = FAIL if check.tier == default else WARN
        why = "no candidate answered" if check.usable else "no usable candidate"
        role = " (the default tier)" if check.tier == default else ""
        report.add(
            f"tier {check.tier}",
            status,
            f"{why}{role}: {', '.join(check.candidates) or 'none'}",
            check.hint() if not check.usable else "fix the provider lines above",
        )


def _key_var(resolver: Any, provider: str) -> str | None:
    try:
        var = resolver.providers.spec(provider).api_key_env
    except Exception:
        return None
    return var if isinstance(var, str) else None


# --- tools -----------------------------------------------------------------------------


def _probe_web_fetch() -> None:
    # Why extract a page: trafilatura imports lxml.html.clean (lxml_html_clean) only then.
    import trafilatura

    trafilatura.extract("<html><body><article><p>coterie doctor</p></article></body></html>")


def _probe_current_time() -> None:
    from zoneinfo import ZoneInfo

    ZoneInfo("Asia/Tokyo")


# What each built-in tool needs beyond the standard library, tried for real.
_TOOL_PROBES: dict[str, tuple[Callable[[], None], str]] = {
    "web_fetch": (_probe_web_fetch, "trafilatura and lxml_html_clean"),
    "current_time": (_probe_current_time, "the IANA time zones (tzdata)"),
    "calculator": (lambda: None, "nothing beyond Python"),
}


def _tools(report: Report, settings: Any) -> None:
    from bot.cli._preflight import check_tools
    from executor.errors import ConfigError
    from executor.tools.builtin import default_registry

    registry = default_registry(settings.enabled_tools)
    try:
        check_tools(settings.enabled_tools, list(registry.names))
    except ConfigError as exc:
        report.add("tools", FAIL, str(exc), "fix COTERIE_ENABLED_TOOLS")
    for name in registry.enabled_names:
        probe, needs = _TOOL_PROBES.get(name, (lambda: None, "nothing coterie knows of"))
        try:
            probe()
        except Exception as exc:  # ImportError above all: a missing library
            report.add(
                f"tool {name}",
                FAIL,
                f"does not work here: {type(exc).__name__}: {exc}",
                f"it needs {needs}: reinstall coterie (pip install -e .) or disable the tool",
            )
        else:
            report.add(f"tool {name}", OK, "ready")


# --- database --------------------------------------------------------------------------


async def _database(report: Report, settings: Any) -> Any:
    from adapters.storage.db import DatabaseError, async_url, sqlite_path

    try:
        url = async_url(settings.database_url)
    except DatabaseError as exc:
        report.add("database", FAIL, str(exc), "set DATABASE_URL")
        return None
    if url.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        if path is None:
            report.add("database", WARN, "in memory: nothing is kept", "set DATABASE_URL to a file")
            return url
        await asyncio.to_thread(_sqlite_checks, report, path.expanduser().absolute())
    else:
        await _postgres_checks(report, url)
    return url


def _head() -> str | None:
    from adapters.storage.db.schema import head_revision

    return head_revision()


def _schema(report: Report, current: str | None, head: str | None) -> None:
    from adapters.storage.db import known_revision

    if current is None:
        report.add("schema", WARN, "empty (no migration yet)", "coterie run upgrades it at start")
    elif current == head:
        report.add("schema", OK, f"at the newest revision ({head})")
    elif known_revision(current):
        report.add(
            "schema",
            WARN,
            f"at {current}, behind the newest ({head})",
            "coterie run upgrades it at start (or: coterie db upgrade)",
        )
    else:
        report.add(
            "schema",
            FAIL,
            f"at {current}, which this coterie does not know: a newer coterie upgraded it",
            "upgrade coterie, or restore a backup taken before that upgrade",
        )


def _sqlite_checks(report: Report, path: Path) -> None:
    if not path.exists():
        report.add(
            "database",
            WARN,
            f"SQLite database {path} does not exist yet",
            "coterie run (or coterie db upgrade) creates it",
        )
        return
    writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        report.add("database", FAIL, f"cannot open {path}: {exc}", "check the path and rights")
        return
    try:
        rows = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
        try:
            version = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.OperationalError:
            version = None
    except sqlite3.DatabaseError as exc:
        report.add(
            "database",
            FAIL,
            f"{path} is not a readable SQLite database: {exc}",
            "restore the last backup (docs/operations.md, Backups)",
        )
        return
    finally:
        conn.close()
    size = path.stat().st_size / 1e6
    if rows != ["ok"]:
        report.add(
            "database",
            FAIL,
            f"{path} fails its integrity check: {'; '.join(rows)}",
            "stop coterie and restore the last backup (docs/operations.md, Backups)",
        )
    elif not writable:
        report.add(
            "database",
            FAIL,
            f"{path} is read-only for this user",
            "give it (and its directory, for the -wal and -shm files) write access",
        )
    else:
        report.add("database", OK, f"SQLite {path} ({size:.1f} MB), integrity ok")
    _schema(report, version[0] if version else None, _head())


async def _postgres_checks(report: Report, url: Any) -> None:
    from adapters.storage.db import Database, DatabaseError

    db = Database.open(url)
    try:
        server = await db.server_version()
        version = await db.current()
    except DatabaseError as exc:
        report.add("database", FAIL, str(exc), "fix DATABASE_URL or the server")
        return
    finally:
        await db.close()
    report.add("database", OK, f"{db.describe()} ({server})")
    _schema(report, version.current, version.head)


async def _instance(report: Report, url: Any, *, running: bool) -> None:
    from adapters.storage.db import DatabaseError
    from adapters.storage.lock import lock_holder

    try:
        holder = await lock_holder(url)
    except DatabaseError as exc:
        said = any(c.name == "database" and c.detail == str(exc) for c in report.checks)
        report.add(
            "instance",
            SKIP,
            "cannot tell: the database did not open" if said else f"cannot tell: {exc}",
        )
        return
    if holder is None:
        if running:
            report.add(
                "instance", FAIL, "no coterie run holds the database", "start it: coterie run"
            )
        else:
            report.add("instance", OK, "no other coterie is running on this database")
    elif running:
        report.add("instance", OK, f"coterie run ({holder}) holds the database")
    elif url.get_backend_name() == "postgresql":
        report.add(
            "instance",
            OK,
            f"a coterie ({holder}) is running on this database; more `coterie run` may "
            "join it on PostgreSQL (coterie status lists them)",
        )
    else:
        report.add(
            "instance",
            WARN,
            f"a coterie ({holder}) is running on this database: a second `coterie run` "
            "would refuse to start",
            "stop that one first, or point this one at another DATABASE_URL",
        )


# --- discord ---------------------------------------------------------------------------


async def _discord(report: Report, settings: Any, *, offline: bool) -> None:
    from bot.cli.discord import application_id_from_token

    token = settings.discord_token.get_secret_value().strip() if settings.discord_token else ""
    if not token:
        report.add(
            "discord",
            WARN,
            "DISCORD_TOKEN is not set (coterie run needs it; ask and chat do not)",
            "copy the bot token from the developer portal (Bot > Token)",
        )
        return
    if application_id_from_token(token) is None:
        report.add("discord", FAIL, "DISCORD_TOKEN does not look like a bot token", "copy it again")
        return
    if offline:
        report.add("discord", SKIP, "--offline: the token is set; not checked with Discord")
        return
    await _discord_online(report, token)


async def _discord_online(report: Report, token: str) -> None:
    import aiohttp
    import discord

    http = discord.http.HTTPClient(asyncio.get_running_loop())
    try:
        try:
            me = await http.static_login(token)
        except discord.LoginFailure:
            report.add("discord", FAIL, "Discord rejected DISCORD_TOKEN", "copy it again (Bot)")
            return
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            report.add("discord", FAIL, f"cannot reach Discord: {exc}", "check the network")
            return
        report.add("discord", OK, f"the token is valid: {me['username']} ({me['id']})")
        app = await http.application_info()
        if int(app.get("flags") or 0) & _MESSAGE_CONTENT:
            report.add("intents", OK, "Message Content is enabled")
        else:
            report.add(
                "intents",
                FAIL,
                "the Message Content intent is off: coterie cannot read the messages it answers",
                "developer portal > Bot > Privileged Gateway Intents > Message Content",
            )
        guilds = await http.get_guilds(200)
        if not guilds:
            report.add("servers", WARN, "the bot is in no server yet", "coterie invite")
        for guild in guilds:
            _guild_permissions(report, guild)
    finally:
        await http.close()


def _guild_permissions(report: Report, guild: Any) -> None:
    perms = int(guild.get("permissions") or 0)
    name = f"server {guild.get('name')} ({guild.get('id')})"
    if perms & _ADMINISTRATOR:
        report.add(name, OK, "Administrator: every permission")
        return
    missing = [(label, why) for bit, label, why in _NEEDED if not perms & bit]
    if not missing:
        report.add(name, OK, "every permission coterie uses")
        return
    report.add(
        name,
        WARN,
        "missing " + "; ".join(f"{label} ({why})" for label, why in missing),
        "grant them to the bot's role, or re-invite it with the URL from coterie invite",
    )


# --- scheduler ------------------------------------------------------------------------


def _read_only(url: Any) -> Any:
    """A SQLite URL opened read-only (no -wal written by us, no file created)."""
    from adapters.storage.db import sqlite_path

    path = sqlite_path(url)
    if url.get_backend_name() != "sqlite" or path is None:
        return url
    return url.set(database=f"file:{path.expanduser().absolute()}?mode=ro", query={"uri": "true"})


async def _scheduler(report: Report, settings: Any, url: Any) -> None:
    """The jobs the scheduler builds from the schedules table: every enabled schedule
    can be scheduled (its cron parses, its zone exists) and, while a coterie runs on
    this database, the next run the table shows is the one its job will fire."""
    from datetime import UTC, datetime, timedelta

    from adapters.storage.db import Database, DatabaseError, sqlite_path
    from adapters.storage.lock import lock_holder

    try:
        from skills.errors import ScheduleError
        from skills.scheduler import SkillScheduler
        from skills.schedules import ScheduleStore
    except ImportError:
        report.add("scheduler", SKIP, "this coterie has no scheduler")
        return
    if url is None or not any(c.name == "schema" and c.status == OK for c in report.checks):
        report.add("scheduler", SKIP, "the database is not at the newest revision")
        return
    if url.get_backend_name() == "sqlite" and sqlite_path(url) is None:
        report.add("scheduler", SKIP, "an in-memory database has no schedules")
        return
    db = Database.open(_read_only(url))
    try:
        store = ScheduleStore(db.sessions)
        schedules = await store.enabled()
        running = await lock_holder(url) is not None
    except DatabaseError as exc:
        report.add("scheduler", WARN, f"could not read the schedules: {exc}")
        return
    finally:
        await db.close()

    async def no_fire(*args: Any, **kwargs: Any) -> Any:  # never called: nothing starts
        raise AssertionError("coterie doctor fires nothing")

    # Why the scheduler's own triggers: these are the jobs it builds from the table.
    builder = SkillScheduler(store, no_fire)
    now = datetime.now(UTC)
    broken, drifted = 0, 0
    soonest: datetime | None = None
    for info in schedules:
        try:
            _, trigger, _ = builder._triggers(info)
            due = trigger.get_next_fire_time(None, now)
        except (ScheduleError, ValueError) as exc:
            broken += 1
            report.add(
                f"schedule #{info.id}",
                FAIL,
                f"cannot be scheduled: {exc}",
                "fix it or remove it (/skill unschedule); coterie run disables it at start",
            )
            continue
        due = due.astimezone(UTC) if due is not None else None
        if due is not None and (soonest is None or due < soonest):
            soonest = due
        shown = info.next_run_at.replace(tzinfo=UTC) if info.next_run_at else None
        if shown is not None and shown.tzinfo is not None:
            shown = shown.astimezone(UTC)
        if running and due is not None and shown != due:
            firing_now = shown is not None and timedelta(0) <= now - shown < timedelta(minutes=10)
            if not firing_now:
                drifted += 1
                report.add(
                    f"schedule #{info.id}",
                    WARN,
                    f"the table says its next run is {shown or 'none'}, its job fires at {due}",
                    "restart coterie: jobs are rebuilt from the schedules table",
                )
    if not schedules:
        report.add("scheduler", OK, "no enabled schedules")
    elif not broken and not drifted:
        where = "as the running coterie's jobs" if running else "(jobs are built at start)"
        next_at = f"; the next at {soonest:%Y-%m-%d %H:%M} UTC" if soonest else ""
        report.add("scheduler", OK, f"{len(schedules)} enabled schedule(s) {where}{next_at}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(asyncio.run(_doctor(argparse.Namespace(offline=False, running=False, json=False))))
