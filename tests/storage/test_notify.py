"""Caches across processes on PostgreSQL (LISTEN/NOTIFY): two apps on one database, as
two ``coterie run`` processes build them; a guild setting, a persona or a thread's
binding changed through one is seen by the other at once, not after its cache's TTL; a notification connection that drops
comes back and empties the cache (what it may have missed); ``coterie forget`` tells the
running processes too."""

from __future__ import annotations

import asyncio
import os
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from bot.app import App, build_app
from bot.settings import Settings
from executor.agent import Caller
from executor.testing import ScriptedModel
from personas.model import Persona


class _Tiers:
    tiers = ("standard",)
    default_tier = "standard"

    def resolve(self, tier: str | None = None) -> Any:
        return ScriptedModel(["-"])

    def estimate_micros(self, tier: str | None, input_tokens: int, output_tokens: int) -> int:
        return 0


@asynccontextmanager
async def _app(url: str) -> AsyncIterator[App]:
    app = await build_app(
        Settings(_env_file=None, database_url=url), resolver=_Tiers(), instance="cli"
    )
    try:
        yield app
    finally:
        await app.close()


def _told(app: App, topic: str) -> asyncio.Queue[str | None]:
    """The keys ``app`` is told about on ``topic`` (after its own subscribers ran)."""
    told: asyncio.Queue[str | None] = asyncio.Queue()
    assert app.notifier is not None
    app.notifier.subscribe(topic, told.put_nowait)
    return told


async def test_a_setting_changed_in_one_process_is_seen_by_another_at_once(pg_url: str) -> None:
    async with _app(pg_url) as a, _app(pg_url) as b:
        b.guild_settings.ttl_s = 3600  # only the notification can refresh it
        told = _told(b, "guild_settings")
        assert (await b.guild_settings.guild("42")).default_persona is None  # cached
        await b.guild_settings.channel_persona("7")

        await a.guild_settings.update_guild("42", default_persona="researcher")
        assert await asyncio.wait_for(told.get(), 10) == "guild:42"
        assert (await b.guild_settings.guild("42")).default_persona == "researcher"

        await a.guild_settings.set_channel_persona("42", "7", "reviewer")
        assert await asyncio.wait_for(told.get(), 10) == "channel:7"
        assert await b.guild_settings.channel_persona("7") == "reviewer"
        assert told.empty()  # a process is not told about its own changes
        a_told = _told(a, "guild_settings")
        await b.guild_settings.update_guild("42", default_persona=None)
        assert await asyncio.wait_for(a_told.get(), 10) == "guild:42"


async def test_a_dropped_notification_connection_comes_back_with_empty_caches(
    pg_url: str,
) -> None:
    async with _app(pg_url) as b:
        b.guild_settings.ttl_s = 3600
        told = _told(b, "guild_settings")
        assert (await b.guild_settings.guild("43")).default_persona is None  # cached
        dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
        admin = await asyncpg.connect(dsn)
        try:
            # A change b never hears of (as if made while its connection was down).
            await admin.execute(
                "INSERT INTO guild_settings (guild_id, default_persona, answer_channels, "
                "answer_categories, role_budgets, allow_dms, cost_footer) "
                "VALUES ('43', 'researcher', '[]', '[]', '{}', true, false)"
            )
            assert (await b.guild_settings.guild("43")).default_persona is None  # stale
            assert b.notifier is not None and b.notifier._conn is not None
            await admin.execute(
                "SELECT pg_terminate_backend($1)", b.notifier._conn.get_server_pid()
            )
        finally:
            await admin.close()
        # Reconnected, it drops everything it had cached: it may have missed anything.
        assert await asyncio.wait_for(told.get(), 30) is None
        assert (await b.guild_settings.guild("43")).default_persona == "researcher"


async def test_a_persona_written_in_one_process_drops_the_others_cache(pg_url: str) -> None:
    member = Caller(user_id="5", display_name="Ann", guild_id="42")
    async with _app(pg_url) as a, _app(pg_url) as b:
        b.personas.ttl_s = 3600  # only the notification can refresh it
        told = _told(b, "personas")
        assert await b.personas.find("42", "pirate") is None  # cached: no such persona

        await a.personas.create("42", Persona(name="pirate", system_prompt="Arr."), by=member)
        assert await asyncio.wait_for(told.get(), 10) == "42"
        found = await b.personas.find("42", "pirate")
        assert found is not None and found.system_prompt == "Arr."

        await a.personas.update(
            "42", Persona(name="pirate", system_prompt="Arr!", description="loud"), by=member
        )
        assert await asyncio.wait_for(told.get(), 10) == "42"
        found = await b.personas.find("42", "pirate")
        assert found is not None and found.description == "loud"

        await a.personas.delete("42", "pirate", by=member)
        assert await asyncio.wait_for(told.get(), 10) == "42"
        assert await b.personas.find("42", "pirate") is None
        assert told.empty()

        # /forgetme on one process: the member's personas leave the others' caches too.
        a_told = _told(a, "personas")
        await b.personas.create("42", Persona(name="parrot", system_prompt="Squawk."), by=member)
        assert await asyncio.wait_for(a_told.get(), 10) == "42"
        assert await a.personas.find("42", "parrot") is not None
        await b.personas.delete_user_data("5")
        assert await asyncio.wait_for(a_told.get(), 10) == "*"
        assert await a.personas.find("42", "parrot") is None


async def test_a_thread_bound_or_unbound_in_one_process_drops_the_others_entry(
    pg_url: str,
) -> None:
    async with _app(pg_url) as a, _app(pg_url) as b:
        b.threads.ttl_s = 3600  # only the notification can refresh it
        told = _told(b, "threads")
        assert await b.threads.get("900") is None  # cached: not bound
        other = await b.threads.bind(
            thread_id="901", guild_id="42", channel_id="7", persona="pirate", created_by="6"
        )
        assert await b.threads.get("901") == other  # cached, and kept below

        bound = await a.threads.bind(
            thread_id="900", guild_id="42", channel_id="7", persona="pirate", created_by="5"
        )
        assert await asyncio.wait_for(told.get(), 10) == "900"
        assert await b.threads.get("900") == bound
        assert "901" in b.threads._cache  # only the thread written was dropped

        rebound = await a.threads.bind(
            thread_id="900", guild_id="42", channel_id="7", persona="reviewer", created_by="5"
        )
        assert await asyncio.wait_for(told.get(), 10) == "900"
        found = await b.threads.get("900")
        assert found is not None and found.persona == "reviewer" == rebound.persona

        assert await a.threads.unbind("900")
        assert await asyncio.wait_for(told.get(), 10) == "900"
        assert await b.threads.get("900") is None
        assert not await a.threads.unbind("900")  # nothing changed: nobody is told

        # /forgetme on one process: the member's threads leave the others' caches too.
        a_told = _told(a, "threads")
        await a.threads.bind(
            thread_id="902", guild_id="42", channel_id="7", persona="pirate", created_by="5"
        )
        assert await asyncio.wait_for(told.get(), 10) == "902"
        assert await b.threads.get("902") is not None
        assert await a.threads.delete_user_data("5") == 1
        assert await asyncio.wait_for(told.get(), 10) == "*"
        assert await b.threads.get("902") is None
        assert told.empty() and a_told.empty()  # a process is not told about its own


async def test_coterie_forget_drops_the_forgotten_members_personas_from_the_others_caches(
    pg_url: str, tmp_path: Path
) -> None:
    """``coterie forget`` as its own process: a running process's persona and thread
    caches (their TTL an hour) no longer serve the forgotten member's persona and
    thread once the command is done."""
    async with _app(pg_url) as b:
        b.personas.ttl_s = b.threads.ttl_s = 3600  # only the notification can refresh them
        told = _told(b, "personas")
        threads_told = _told(b, "threads")
        member = Caller(user_id="5")
        await b.personas.create("42", Persona(name="parrot", system_prompt="Squawk."), by=member)
        assert await b.personas.find("42", "parrot") is not None  # cached now
        await b.threads.bind(
            thread_id="903", guild_id="42", channel_id="7", persona="parrot", created_by="5"
        )
        assert await b.threads.get("903") is not None  # cached now
        env = {k: v for k, v in os.environ.items() if not k.startswith("COTERIE_")}
        env.update(DATABASE_URL=pg_url, PYTHONUNBUFFERED="1")
        forget = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "forget", "5", "--yes",
            cwd=tmp_path, env=env, stdout=PIPE, stderr=PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(forget.communicate(), 120)
        assert forget.returncode == 0, err.decode()
        assert "personas" in out.decode()
        assert await asyncio.wait_for(told.get(), 10) == "*"
        assert await b.personas.find("42", "parrot") is None
        assert await asyncio.wait_for(threads_told.get(), 10) == "*"
        assert await b.threads.get("903") is None
