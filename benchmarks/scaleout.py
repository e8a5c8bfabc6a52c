"""Runs per second with one and with three ``coterie run`` processes on one PostgreSQL,
and how long a dead process's shard waits for a survivor.

    COTERIE_TEST_POSTGRES_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/test \\
        python benchmarks/scaleout.py [--runs 120] [--pace-ms 20]

In one run, each figure from real processes against the fake Discord
(``tests/fakediscord``, three shards with one guild each) and a loopback LLMock (the
mock model: a short answer, streamed ``--pace-ms`` apart per chunk):

* throughput: ``--runs`` mentions spread over the three guilds and six members, all
  sent at once; from the first to the last answer in Discord, with one process
  (serving the three shards) and with three (one shard each);
* hand-over: SIGTERM one process (a rolling restart); the time until a survivor
  IDENTIFYs for its shard;
* takeover: SIGKILL the process serving a shard; the time until a survivor IDENTIFYs
  for that shard (its lease must expire first: ``COTERIE_LEASE_TTL_S``, measured with
  the default 15 s and with 6 s), and until that shard's guild is answered again;
* leader takeover: SIGKILL the process that leads the scheduler, with a one-shot slot
  due a second later (in a guild another process serves); the time until a survivor
  holds the scheduler's lease (its log says it leads), and until that slot is posted.

Figures, not a test: nothing here asserts. Each database is created and dropped here
(its name starts with ``coterie_bench_scaleout_``). Needs the dev extras.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakediscord import FakeDiscord, FakeGuild  # noqa: E402
from tests.lifecycle.conftest import Proc, coterie_env  # noqa: E402

ANSWER = "noted, thank you."
SHARDS = 3
MEMBERS = ("alice", "bob", "admin", "manager", "moderator", "owner")


async def _admin(base: str, statement: str) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    conn = await asyncpg.connect(
        make_url(base).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


class Database:
    """A fresh PostgreSQL database for one measurement."""

    def __init__(self, base: str) -> None:
        from sqlalchemy.engine import make_url

        self.base = base
        self.name = f"coterie_bench_scaleout_{uuid.uuid4().hex[:8]}"
        self.url = make_url(base).set(database=self.name).render_as_string(hide_password=False)

    async def __aenter__(self) -> Database:
        await _admin(self.base, f'CREATE DATABASE "{self.name}"')
        return self

    async def __aexit__(self, *exc: object) -> None:
        await _admin(self.base, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def _env(tmp: Path, fake: FakeDiscord, llmock: Any, url: str, **extra: str) -> dict[str, str]:
    return coterie_env(
        tmp,
        fake=fake,
        DATABASE_URL=url,
        OPENAI_BASE_URL=llmock.base_url("openai"),
        OPENAI_API_KEY="sk-bench",
        COTERIE_TIER_FAST="openai:gpt-5-mini",
        COTERIE_TIER_STANDARD="openai:gpt-5-mini",
        COTERIE_TIER_SMART="openai:gpt-5-mini",
        COTERIE_IDENTIFY_INTERVAL_S="0",
        COTERIE_LANE_SLOTS="32",
        COTERIE_BUDGET_DEFAULT_USD="1000",
        COTERIE_DB_POOL_SIZE="5",
        COTERIE_DB_MAX_OVERFLOW="10",
        **extra,
    )


async def _start(
    n: int, tmp: Path, fake: FakeDiscord, llmock: Any, url: str, **extra: str
) -> list[Proc]:
    procs = []
    for _ in range(n):
        proc = await Proc.start("run", env=_env(tmp, fake, llmock, url, **extra), cwd=tmp)
        procs.append(proc)
        await proc.wait_for("coterie ready as", timeout=90)
    await fake.wait_for_shards(set(range(SHARDS)), timeout=60)
    return procs


async def _answered(fake: FakeDiscord, guilds: list[FakeGuild], n: int, timeout: float) -> None:
    def count() -> int:
        return sum(
            1
            for g in guilds
            for m in fake.history(g.channel_id("general"))
            if m.get("webhook_id") and m.get("content") == ANSWER
        )

    await fake._wait(lambda: True if count() >= n else None, timeout, f"{n} answers")


async def _stop(procs: list[Proc]) -> None:
    for p in procs:
        if p.proc.returncode is None:
            p.signal(signal.SIGTERM)
    for p in procs:
        try:
            await p.exit_code(timeout=60)
        finally:
            await p.kill()


async def throughput(base: str, llmock: Any, processes: int, runs: int) -> float:
    """Runs answered per second with ``processes`` processes."""
    with tempfile.TemporaryDirectory() as d:
        async with Database(base) as db, FakeDiscord() as fake:
            fake.recommended_shards = SHARDS
            guilds = [fake.add_guild(f"g{i}", shard=i, shard_count=SHARDS) for i in range(SHARDS)]
            procs = await _start(processes, Path(d), fake, llmock, db.url)
            try:
                # Warm up: each process imports its SDK and makes its webhooks once.
                for g in guilds:
                    await fake.dispatch_message(
                        f"<@{fake.bot_user['id']}> warm up",
                        channel_id=g.channel_id("general"),
                        mentions=["bot"],
                    )
                await _answered(fake, guilds, SHARDS, 120)
                started = time.perf_counter()
                for i in range(runs):
                    g = guilds[i % SHARDS]
                    await fake.dispatch_message(
                        f"<@{fake.bot_user['id']}> task {i}",
                        author=MEMBERS[i % len(MEMBERS)],
                        channel_id=g.channel_id("general"),
                        mentions=["bot"],
                    )
                await _answered(fake, guilds, SHARDS + runs, 600)
                took = time.perf_counter() - started
            finally:
                await _stop(procs)
    return runs / took


async def takeover(base: str, llmock: Any, ttl_s: float) -> tuple[float, float]:
    """Seconds from SIGKILL to a survivor's IDENTIFY for the dead shard, and to the
    first answer in that shard's guild after it."""
    with tempfile.TemporaryDirectory() as d:
        async with Database(base) as db, FakeDiscord() as fake:
            fake.recommended_shards = SHARDS
            guilds = [fake.add_guild(f"g{i}", shard=i, shard_count=SHARDS) for i in range(SHARDS)]
            procs = await _start(
                SHARDS, Path(d), fake, llmock, db.url, COTERIE_LEASE_TTL_S=str(ttl_s)
            )
            try:
                import asyncpg
                from sqlalchemy.engine import make_url

                dsn = make_url(db.url).set(drivername="postgresql")
                conn = await asyncpg.connect(dsn.render_as_string(hide_password=False))
                try:
                    row = await conn.fetchrow(
                        "SELECT l.name, i.pid FROM leases l JOIN instances i ON i.id = l.holder "
                        "WHERE l.name LIKE 'shard:%' AND i.pid = $1",
                        procs[0].pid,
                    )
                finally:
                    await conn.close()
                shard = int(row["name"].split(":")[1])
                since = len(fake.gateway_frames)
                killed = time.perf_counter()
                procs[0].signal(signal.SIGKILL)
                await fake.wait_for_identify(shard, since=since, timeout=ttl_s * 4 + 30)
                identified = time.perf_counter() - killed
                await fake.wait_for_shards(set(range(SHARDS)), timeout=60)
                await fake.dispatch_message(
                    f"<@{fake.bot_user['id']}> are you back?",
                    channel_id=guilds[shard].channel_id("general"),
                    mentions=["bot"],
                )
                await _answered(fake, [guilds[shard]], 1, 60)
                answered = time.perf_counter() - killed
            finally:
                await _stop(procs)
    return identified, answered


async def _schedule_once(url: str, fake: FakeDiscord, guild: FakeGuild, at: Any) -> int:
    """A skill in ``guild`` and a one-shot schedule of it at ``at``, written straight to
    the database; the leader is told as a process that saved one tells it (NOTIFY)."""
    import json

    import asyncpg
    from sqlalchemy.engine import make_url

    from adapters.storage.db import Database as Db
    from executor.agent import Caller, Privilege
    from executor.tools.builtin import default_registry
    from personas.markdown import load_builtins
    from personas.store import PersonaStore
    from skills.model import SkillSpec
    from skills.schedules import ScheduleStore
    from skills.store import SkillStore

    db = Db.open(url)
    try:
        tools = default_registry()
        personas = PersonaStore(db.sessions, load_builtins(), tools=tools)
        skills = SkillStore(
            db.sessions, tools=tools, tiers=("fast", "standard", "smart"), personas=personas
        )
        admin = Caller(
            user_id=str(fake.user("admin")["id"]),
            display_name="admin",
            privilege=Privilege.ADMIN,
            guild_id=str(guild.id),
        )
        skill, _ = await skills.save(
            str(guild.id), "pulse", SkillSpec(prompt="How goes?"), by=admin
        )
        info = await ScheduleStore(db.sessions).create(
            skill_id=skill.id,
            guild_id=str(guild.id),
            channel_id=str(guild.channel_id("general")),
            created_by=admin.user_id,
            run_at=at,
            missed="catch-up",
        )
    finally:
        await db.close()
    conn = await asyncpg.connect(
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        payload = json.dumps({"t": "schedules", "k": str(info.id), "f": "bench"})
        await conn.execute("SELECT pg_notify('coterie', $1)", payload)
    finally:
        await conn.close()
    return info.id


async def leader_takeover(base: str, llmock: Any, ttl_s: float) -> tuple[float, float]:
    """Seconds from SIGKILL of the scheduler's leader to a survivor leading, and to the
    post of a one-shot slot that came due a second after the kill."""
    from datetime import UTC, datetime, timedelta

    import asyncpg
    from sqlalchemy.engine import make_url

    with tempfile.TemporaryDirectory() as d:
        async with Database(base) as db, FakeDiscord() as fake:
            fake.recommended_shards = SHARDS
            guilds = [fake.add_guild(f"g{i}", shard=i, shard_count=SHARDS) for i in range(SHARDS)]
            procs = await _start(
                SHARDS, Path(d), fake, llmock, db.url, COTERIE_LEASE_TTL_S=str(ttl_s)
            )
            try:
                dsn = make_url(db.url).set(drivername="postgresql")
                conn = await asyncpg.connect(dsn.render_as_string(hide_password=False))
                try:
                    row = await conn.fetchrow(
                        "SELECT i.pid, i.shards FROM leases l JOIN instances i "
                        "ON i.id = l.holder WHERE l.name = 'scheduler'"
                    )
                finally:
                    await conn.close()
                [leader] = [p for p in procs if p.pid == int(row["pid"])]
                survivors = [p for p in procs if p is not leader]
                # A guild the leader does not serve: the new leader may not serve it either.
                served = set(json.loads(row["shards"]) if isinstance(row["shards"], str)
                             else row["shards"])  # fmt: skip
                guild = next(g for i, g in enumerate(guilds) if i not in served)
                due = datetime.now(UTC) + timedelta(seconds=3)
                await _schedule_once(db.url, fake, guild, due)
                await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds() - 1))
                killed = time.perf_counter()
                leader.signal(signal.SIGKILL)
                waits = [
                    asyncio.ensure_future(
                        p.wait_for("leading the scheduler", timeout=ttl_s * 4 + 30)
                    )
                    for p in survivors
                ]
                done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for t in pending:
                    t.cancel()
                for t in done:
                    t.result()
                led = time.perf_counter() - killed
                channel = guild.channel_id("general")
                await fake._wait(
                    lambda: (
                        True
                        if any(
                            m.get("webhook_id") and "schedule #" in (m.get("content") or "")
                            for m in fake.history(channel)
                        )
                        else None
                    ),
                    60,
                    "the slot's post",
                )
                fired = time.perf_counter() - killed
            finally:
                await _stop(procs)
    return led, fired


async def handover(base: str, llmock: Any) -> float:
    """Seconds from SIGTERM (a rolling restart) to a survivor's IDENTIFY for the
    stopping process's shard: the gap in which that shard has no session."""
    with tempfile.TemporaryDirectory() as d:
        async with Database(base) as db, FakeDiscord() as fake:
            fake.recommended_shards = SHARDS
            for i in range(SHARDS):
                fake.add_guild(f"g{i}", shard=i, shard_count=SHARDS)
            procs = await _start(SHARDS, Path(d), fake, llmock, db.url)
            try:
                # The first process started with every shard and kept the lowest.
                since = len(fake.gateway_frames)
                stopped = time.perf_counter()
                procs[0].signal(signal.SIGTERM)
                await fake.wait_for_identify(0, since=since, timeout=60)
                return time.perf_counter() - stopped
            finally:
                await _stop(procs)


async def main(base: str, runs: int, pace_ms: int) -> None:
    from llmock.pytest_plugin import LLMock
    from llmock.testing import LLMockServer

    with LLMockServer() as server:
        llmock = LLMock(server).reset()
        llmock.reply(ANSWER, times=None)
        if pace_ms:
            llmock.pace(pace_ms)
        one = await throughput(base, llmock, 1, runs)
        three = await throughput(base, llmock, 3, runs)
        print(f"{'figure':<66} measured")
        print(f"{'runs/s, 1 process (3 shards)':<66} {one:.1f}")
        print(f"{'runs/s, 3 processes (1 shard each)':<66} {three:.1f}  ({three / one:.2f}x)")
        gap = await handover(base, llmock)
        print(f"{'rolling restart: SIGTERM -> a survivor IDENTIFYs':<66} {gap:.2f} s")
        for ttl in (15.0, 6.0):
            identified, answered = await takeover(base, llmock, ttl)
            print(
                f"{f'takeover, lease {ttl:g} s: SIGKILL -> IDENTIFY / -> answered':<66} "
                f"{identified:.1f} s / {answered:.1f} s"
            )
        for ttl in (15.0, 6.0):
            led, fired = await leader_takeover(base, llmock, ttl)
            print(
                f"{f'leader, lease {ttl:g} s: SIGKILL -> a survivor leads / -> slot posted':<66} "
                f"{led:.1f} s / {fired:.1f} s"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=120)
    parser.add_argument("--pace-ms", type=int, default=20)
    args = parser.parse_args()
    base = os.environ.get("COTERIE_TEST_POSTGRES_URL")
    if not base:
        sys.exit("set COTERIE_TEST_POSTGRES_URL to a PostgreSQL server (a database is made there)")
    asyncio.run(main(base, args.runs, args.pace_ms))
