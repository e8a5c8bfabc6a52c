"""Three real ``coterie run`` processes on one PostgreSQL database, against the fake
Discord (which routes each guild's events to the sessions of its shard, as Discord
does) and a loopback LLMock: the shards are shared out (one session per shard), every
message is answered exactly once, ``coterie status`` lists them; SIGKILL one with a
run in flight: a survivor takes its shard over and settles its run (interrupted,
reservation charged) and offers its member Resume, while a live process's run in
flight is never touched; the member's press reaches whichever process serves the
guild now, which resumes the run. One of them leads the scheduler and posts every
guild's slots; SIGKILL it with 100 one-shot slots due: a survivor leads, catches up
what came due meanwhile and retries what the dead one was running, and no slot is
run twice by a claim (the ledger equals the audit). A scheduled skill that asks its
owner to approve a tool, in a guild the leader does not serve: the press goes to the
process serving the guild, which records it, and the leader's run goes on.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.fakediscord import FakeDiscord, FakeGuild
from tests.lifecycle.conftest import Proc, coterie_env, openai_env, webhook_shows
from tests.storage.dbs import PG_ENV

pytest.importorskip("llmock")

COUNT = 3
# Why not shorter: on a loaded CI machine a process may not beat for a few seconds
# (a provider SDK imported on the event loop); the default is 15.
TTL_S = "10"


@pytest.fixture
async def scaleout_url() -> AsyncIterator[str]:
    """An empty PostgreSQL database of this test's own (the processes migrate it)."""
    import asyncpg

    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"{PG_ENV} is not set: several processes need PostgreSQL")
    name = f"coterie_scaleout_{uuid.uuid4().hex[:10]}"
    admin_dsn = make_url(base).set(drivername="postgresql").render_as_string(hide_password=False)
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def _rows(url: str, sql: str, *args: Any) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def _env(
    tmp_path: Path, fake: FakeDiscord, llmock: Any, url: str, ttl_s: str = TTL_S
) -> dict[str, str]:
    return coterie_env(
        tmp_path,
        fake=fake,
        **openai_env(llmock),
        DATABASE_URL=url,
        COTERIE_LEASE_TTL_S=ttl_s,
        COTERIE_IDENTIFY_INTERVAL_S="0",
        COTERIE_SHUTDOWN_GRACE_S="1",
        # Three processes and the other tests share the server's 100 connections.
        COTERIE_DB_POOL_SIZE="3",
        COTERIE_DB_MAX_OVERFLOW="4",
        COTERIE_LOG_LEVEL="DEBUG",  # printed only when the test fails
    )


async def _start_three(
    procs: list[Proc],
    tmp_path: Path,
    fake: FakeDiscord,
    llmock: Any,
    url: str,
    *,
    ttl_s: str = TTL_S,
) -> list[Proc]:
    """One after another: each is ready once it serves a shard (the ones before it
    hand one over), so with the third ready each serves one."""
    started = []
    for _ in range(COUNT):
        env = _env(tmp_path, fake, llmock, url, ttl_s)
        proc = await Proc.start("run", env=env, cwd=tmp_path)
        procs.append(proc)
        started.append(proc)
        await proc.wait_for(r"coterie ready as", timeout=60)
    await fake.wait_for_shards(set(range(COUNT)))
    return started


def _has_buttons(call: Any) -> bool:
    return bool((call.json or {}).get("components"))


def _buttons(call: Any) -> dict[str, str]:
    return {
        b["label"]: b["custom_id"] for row in call.json["components"] for b in row["components"]
    }


async def _owners(url: str) -> dict[int, int]:
    """Shard -> the pid of the process holding its lease."""
    rows = await _rows(
        url,
        "SELECT l.name, i.pid FROM leases l JOIN instances i ON i.id = l.holder "
        "WHERE l.name LIKE 'shard:%' AND l.expires_at > now()",
    )
    return {int(r["name"].split(":")[1]): int(r["pid"]) for r in rows}


def _guilds(fake: FakeDiscord) -> list[FakeGuild]:
    fake.recommended_shards = COUNT
    return [fake.add_guild(f"shard {i}", shard=i, shard_count=COUNT) for i in range(COUNT)]


async def _answers(fake: FakeDiscord, guild: FakeGuild, n: int, text: str) -> None:
    """Until ``guild``'s #general holds ``n`` persona answers, each of them ``text``."""
    channel = guild.channel_id("general")

    def done() -> bool | None:
        answers = [m for m in fake.history(channel) if m.get("webhook_id")]
        return True if len(answers) >= n and all(a["content"] == text for a in answers) else None

    try:
        await fake._wait(done, 30, f"{n} answers in {guild.name}")
    except AssertionError:
        shown = [(m.get("webhook_id") is not None, m.get("content")) for m in fake.history(channel)]
        raise AssertionError(
            f"{n} answers {text!r} in {guild.name}; its channel: {shown}"
        ) from None


def _asked(llmock: Any, marker: str) -> int:
    """How many model requests carried ``marker`` as the member's latest message."""
    n = 0
    for record in llmock.requests:
        messages = (record.body or {}).get("messages") or []
        users = [m for m in messages if m.get("role") == "user"]
        if users and marker in json.dumps(users[-1].get("content")):
            n += 1
    return n


async def test_three_processes_share_the_shards_and_answer_each_message_once(
    scaleout_url: str, fake_discord: FakeDiscord, llmock: Any, tmp_path: Path, procs: list[Proc]
) -> None:
    fake = fake_discord
    guilds = _guilds(fake)
    llmock.reply("noted.", times=None)
    three = await _start_three(procs, tmp_path, fake, llmock, scaleout_url)
    owners = await _owners(scaleout_url)
    assert sorted(owners) == [0, 1, 2]
    assert sorted(owners.values()) == sorted(p.pid for p in three)  # one shard each

    # Every message, in every guild, answered once: one model request, one post.
    sent: dict[int, list[str]] = {}
    for round_ in range(3):
        for g in guilds:
            marker = f"m{round_}-{g.name.replace(' ', '')}"
            await fake.dispatch_message(
                f"<@{fake.bot_user['id']}> {marker}",
                channel_id=g.channel_id("general"),
                mentions=["bot"],
            )
            sent.setdefault(g.id, []).append(marker)
    for g in guilds:
        await _answers(fake, g, 3, "noted.")
    for g in guilds:
        answers = [m for m in fake.history(g.channel_id("general")) if m.get("webhook_id")]
        assert [a["content"] for a in answers] == ["noted."] * 3
        for marker in sent[g.id]:
            assert _asked(llmock, marker) == 1, marker

    # coterie status lists the three, each with its shard and its heartbeat.
    status = await Proc.start(
        "status", "--json", env=_env(tmp_path, fake, llmock, scaleout_url), cwd=tmp_path
    )
    procs.append(status)
    assert await status.exit_code() == 0
    listed = json.loads(status.stdout)["instances"]
    assert sorted(i["pid"] for i in listed) == sorted(p.pid for p in three)
    assert sorted(s for i in listed for s in i["shards"]) == [0, 1, 2]
    # One of them leads the scheduler: the first to start (it took the lease when ready).
    assert [i["pid"] for i in listed if i["leader"]] == [three[0].pid]
    for i in listed:
        assert set(i) == {"id", "host", "pid", "shards", "leader", "heartbeat_age_s", "runs"}
        assert i["heartbeat_age_s"] < float(TTL_S) and isinstance(i["runs"], int)

    # A rolling stop: the stopping process hands its shard over before it leaves.
    since = len(fake.gateway_frames)
    gone = three[0]
    [shard] = [s for s, pid in owners.items() if pid == gone.pid]
    gone.signal(signal.SIGTERM)
    await fake.wait_for_identify(shard, since=since)
    assert await gone.exit_code() == 0
    await fake.wait_for_shards({0, 1, 2})
    await fake.dispatch_message(
        f"<@{fake.bot_user['id']}> after-handover",
        channel_id=guilds[shard].channel_id("general"),
        mentions=["bot"],
    )
    await _answers(fake, guilds[shard], 4, "noted.")
    assert _asked(llmock, "after-handover") == 1

    for proc in three[1:]:
        proc.signal(signal.SIGTERM)
    for proc in three:
        assert await proc.exit_code() == 0
        assert "Traceback" not in proc.stderr
    runs = await _rows(scaleout_url, "SELECT status, owner FROM audit_runs")
    assert len(runs) == 10 and {r["status"] for r in runs} == {"ok"}
    assert {r["owner"] for r in runs} <= {i["id"] for i in listed}
    # Each process deregistered on its way out, its leases with it.
    assert await _rows(scaleout_url, "SELECT id FROM instances") == []
    assert await _rows(scaleout_url, "SELECT name FROM leases") == []
    assert fake.unknown_calls == []


async def test_sigkill_a_process_a_survivor_takes_its_shard_settles_its_run_and_offers_it(
    scaleout_url: str, fake_discord: FakeDiscord, llmock: Any, tmp_path: Path, procs: list[Proc]
) -> None:
    fake = fake_discord
    guilds = _guilds(fake)
    three = await _start_three(procs, tmp_path, fake, llmock, scaleout_url)
    owners = await _owners(scaleout_url)
    victim, survivor = three[1], three[2]
    [dead_shard] = [s for s, pid in owners.items() if pid == victim.pid]
    [live_shard] = [s for s, pid in owners.items() if pid == survivor.pid]

    # Two answers start streaming and stall: one on the victim, one on a survivor.
    llmock.reply("half of an answer that never ends", times=2)
    llmock.stall(after_chunks=2, seconds=120, times=2)
    for shard in (dead_shard, live_shard):
        await fake.dispatch_message(
            f"<@{fake.bot_user['id']}> stall-{shard}",
            channel_id=guilds[shard].channel_id("general"),
            mentions=["bot"],
        )
    # (Words from the model, not the placeholder: the run is in the audit by then.)
    await fake._wait(
        lambda: (
            True
            if all(
                any(
                    m.get("webhook_id") and "half" in m.get("content", "")
                    for m in fake.history(guilds[s].channel_id("general"))
                )
                for s in (dead_shard, live_shard)
            )
            else None
        ),
        30,
        "both answers streaming",
    )
    running = await _rows(
        scaleout_url,
        "SELECT r.run_id, i.pid FROM audit_runs r JOIN instances i ON i.id = r.owner "
        "WHERE r.status = 'running'",
    )
    by_pid = {int(r["pid"]): str(r["run_id"]) for r in running}
    assert set(by_pid) == {victim.pid, survivor.pid}, [
        dict(r)
        for r in await _rows(scaleout_url, "SELECT run_id, status, owner, error FROM audit_runs")
    ]
    dead_run, live_run = by_pid[victim.pid], by_pid[survivor.pid]

    since = len(fake.gateway_frames)
    calls_before = len(fake.calls)
    victim.signal(signal.SIGKILL)
    assert await victim.exit_code() == -signal.SIGKILL
    # Its lease expires; a survivor reaps it, takes its shard and settles its run.
    await fake.wait_for_identify(dead_shard, since=since, timeout=60)
    await fake.wait_for_shards({0, 1, 2})
    survivors = [p for p in three if p is not victim]
    settled = {
        asyncio.ensure_future(p.wait_for(r"closed 1 run\(s\) of a stopped instance", timeout=60)): p
        for p in survivors
    }
    done, pending = await asyncio.wait(settled, return_when=asyncio.FIRST_COMPLETED)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for t in done:
        t.result()
    settler = settled[next(iter(done))]

    runs = {
        str(r["run_id"]): r
        for r in await _rows(scaleout_url, "SELECT run_id, status, cost_micros FROM audit_runs")
    }
    assert runs[dead_run]["status"] == "interrupted"
    assert runs[live_run]["status"] == "running"  # a live process's run: never touched
    open_ = {
        str(r["run_id"])
        for r in await _rows(scaleout_url, "SELECT run_id FROM budget_reservations")
    }
    assert dead_run not in open_ and live_run in open_
    charged = await _rows(
        scaleout_url,
        "SELECT coalesce(sum(amount_micros), 0) AS s FROM budget_ledger WHERE run_id = $1",
        dead_run,
    )
    assert charged[0]["s"] == runs[dead_run]["cost_micros"]
    pids = {int(r["pid"]) for r in await _rows(scaleout_url, "SELECT pid FROM instances")}
    assert victim.pid not in pids

    # The survivor that settled the run offers its member Resume, where it was answering
    # (whichever process serves that guild now; the offer goes by REST).
    general = guilds[dead_shard].channel_id("general")
    offer = await fake.wait_for_call(
        "POST", rf"/channels/{general}/messages", _has_buttons, since=calls_before, timeout=30
    )
    alice = str(fake.user("alice")["id"])
    assert offer.json["content"].startswith(f"<@{alice}> a restart interrupted my answer")
    assert f"stall-{dead_shard}" in offer.json["content"]
    await settler.wait_for(r"1 interrupted run\(s\): 1 offered to resume", timeout=30)
    others = [p for p in survivors if p is not settler]
    assert all("offered to resume" not in p.stderr for p in others)  # offered once
    offers = await _rows(scaleout_url, "SELECT run_id, offer FROM run_checkpoints")
    assert {str(r["run_id"]): r["offer"] for r in offers}.get(dead_run) == "offered"
    assert live_run not in {str(r["run_id"]) for r in offers if r["offer"]}

    # The member presses Resume: the press reaches the process serving the guild now
    # (the button carries the run id; the check is on the database), which resumes it.
    llmock.reset()
    llmock.reply("resumed, and finished.", times=None)
    server_pid = (await _owners(scaleout_url))[dead_shard]
    press = await fake.dispatch_component(
        _buttons(offer)["Resume"], int(offer.response["id"]), user="alice"
    )
    marked = await fake.wait_for_interaction_response(press, timeout=30)
    assert marked.json["type"] == 7 and marked.json["data"]["content"].endswith("-# Resumed.")
    await webhook_shows(fake, "resumed, and finished.")
    resumed = await _rows(
        scaleout_url,
        "SELECT r.run_id, i.pid FROM audit_runs r JOIN instances i ON i.id = r.owner "
        "WHERE r.resumed_from = $1",
        dead_run,
    )
    assert [int(r["pid"]) for r in resumed] == [server_pid]
    resumed_run = str(resumed[0]["run_id"])
    assert _asked(llmock, f"stall-{dead_shard}") == 1  # the resumed run's one request

    # The survivor that took the shard answers in the dead one's guild, once.
    llmock.reset()
    llmock.reply("back.", times=None)
    await fake.dispatch_message(
        f"<@{fake.bot_user['id']}> after-takeover",
        channel_id=guilds[dead_shard].channel_id("general"),
        mentions=["bot"],
    )
    await webhook_shows(fake, "back.")
    assert _asked(llmock, "after-takeover") == 1
    assert fake.unknown_calls == []

    # Stopped (the audit flushed): the resumed run ended well, and each run is charged
    # what it cost.
    for proc in survivors:
        proc.signal(signal.SIGTERM)
    for proc in survivors:
        assert await proc.exit_code() == 0
    runs = {
        str(r["run_id"]): r
        for r in await _rows(
            scaleout_url, "SELECT run_id, status, cost_micros, resumed_from FROM audit_runs"
        )
    }
    assert runs[resumed_run]["status"] == "ok" and runs[resumed_run]["resumed_from"] == dead_run
    assert runs[dead_run]["status"] == "interrupted"
    assert await _rows(scaleout_url, "SELECT run_id FROM budget_reservations") == []
    for run_id in (dead_run, resumed_run):
        charged = await _rows(
            scaleout_url,
            "SELECT coalesce(sum(amount_micros), 0) AS s FROM budget_ledger WHERE run_id = $1",
            run_id,
        )
        assert charged[0]["s"] == runs[run_id]["cost_micros"], run_id


# --- the scheduler's leader ----------------------------------------------------------

SLOTS = 100
LEADER_TTL_S = "6"
ANSWER = "all is well."
FOOTER = re.compile(r"schedule #(\d+)\s*$")


async def _one_shots(url: str, guilds: list[FakeGuild], fake: FakeDiscord) -> list[int]:
    """A skill in each guild and ``SLOTS`` one-shot schedules of them, due from 4 s on,
    one every 0.15 s, spread over the guilds and six members; written straight to the
    database (as /skill schedule on any process would), then the leader told."""
    from adapters.storage.db import Database
    from executor.agent import Caller, Privilege
    from executor.tools.builtin import default_registry
    from personas.markdown import load_builtins
    from personas.store import PersonaStore
    from skills.model import SkillSpec
    from skills.schedules import ScheduleStore
    from skills.store import SkillStore

    db = Database.open(url)
    try:
        tools = default_registry()
        skills = SkillStore(
            db.sessions,
            tools=tools,
            tiers=("fast", "standard", "smart"),
            personas=PersonaStore(db.sessions, load_builtins(), tools=tools),
        )
        schedules = ScheduleStore(db.sessions)
        skill_ids = {}
        for g in guilds:
            admin = Caller(
                user_id=str(fake.user("admin")["id"]),
                display_name="admin",
                privilege=Privilege.ADMIN,
                guild_id=str(g.id),
            )
            skill, _ = await skills.save(
                str(g.id), "pulse", SkillSpec(prompt="Say how it goes."), by=admin
            )
            skill_ids[g.id] = skill.id
        first = datetime.now(UTC) + timedelta(seconds=4)
        members = ("alice", "bob", "admin", "manager", "moderator", "owner")
        ids = []
        for i in range(SLOTS):
            g = guilds[i % len(guilds)]
            info = await schedules.create(
                skill_id=skill_ids[g.id],
                guild_id=str(g.id),
                channel_id=str(g.channel_id("general")),
                created_by=str(fake.user(members[i % len(members)])["id"]),
                run_at=first + timedelta(seconds=0.15 * i),
                missed="catch-up",
            )
            ids.append(info.id)
    finally:
        await db.close()
    # As a process that saved a schedule does: NOTIFY, and the leader builds the jobs.
    await _rows(
        url,
        "SELECT pg_notify('coterie', $1)",
        json.dumps({"t": "schedules", "k": None, "f": "test"}),
    )
    return ids


def _posts(fake: FakeDiscord, guilds: list[FakeGuild]) -> dict[int, int]:
    """Schedule id -> how many answers in the guilds' channels name it (a persona's
    post of the model's answer, signed with its schedule; not a "waiting" note)."""
    seen: dict[int, int] = {}
    for g in guilds:
        for m in fake.history(g.channel_id("general")):
            content = m.get("content") or ""
            answer = m.get("webhook_id") and content.startswith(ANSWER)
            found = FOOTER.search(content) if answer else None
            if found:
                sid = int(found.group(1))
                seen[sid] = seen.get(sid, 0) + 1
    return seen


async def _leader_pid(url: str) -> int | None:
    rows = await _rows(
        url,
        "SELECT i.pid FROM leases l JOIN instances i ON i.id = l.holder "
        "WHERE l.name = 'scheduler' AND l.expires_at > now()",
    )
    return int(rows[0]["pid"]) if rows else None


async def test_sigkill_the_scheduler_leader_a_survivor_leads_and_no_slot_runs_twice(
    scaleout_url: str, fake_discord: FakeDiscord, llmock: Any, tmp_path: Path, procs: list[Proc]
) -> None:
    fake = fake_discord
    guilds = _guilds(fake)
    llmock.reply(ANSWER, times=None)
    three = await _start_three(procs, tmp_path, fake, llmock, scaleout_url, ttl_s=LEADER_TTL_S)
    # One leads: the first to start (it took the lease when it was ready).
    pid = await _leader_pid(scaleout_url)
    [leader] = [p for p in three if p.pid == pid]
    survivors = [p for p in three if p is not leader]
    ids = await _one_shots(scaleout_url, guilds, fake)

    # Some slots posted (by the leader, in every guild: two of them over REST); kill it
    # with the rest due.
    await fake._wait(
        lambda: True if len(_posts(fake, guilds)) >= 30 else None, 60, "30 scheduled posts"
    )
    leader.signal(signal.SIGKILL)
    assert await leader.exit_code() == -signal.SIGKILL

    # A survivor leads once the dead one's lease has run out (6 s here; 15 by default).
    waits = [
        asyncio.ensure_future(p.wait_for(r"leading the scheduler", timeout=60)) for p in survivors
    ]
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for t in done:
        t.result()
    new_pid = await _leader_pid(scaleout_url)
    assert new_pid in {p.pid for p in survivors}

    # Every slot is posted: those due while nobody led are caught up, those the dead
    # leader was running are retried once.
    await fake._wait(
        lambda: True if set(_posts(fake, guilds)) >= set(ids) else None, 90, "every slot posted"
    )
    for proc in survivors:
        proc.signal(signal.SIGTERM)
    for proc in survivors:
        assert await proc.exit_code() == 0
        assert "Traceback" not in proc.stderr

    slots = await _rows(
        scaleout_url,
        "SELECT schedule_id, status, attempt, owner, reason FROM schedule_slots",
    )
    assert sorted(r["schedule_id"] for r in slots) == sorted(ids)  # one row per slot
    assert {r["status"] for r in slots} == {"ok"}, [dict(r) for r in slots if r["status"] != "ok"]
    owners = {r["owner"] for r in slots}
    assert len(owners) == 2  # fired across the kill: by the dead leader and the new one
    retried = {r["schedule_id"] for r in slots if r["attempt"] == 2}
    # A slot is posted once; twice only when the dead leader was running it (its answer
    # may have reached Discord before the kill) and the new leader retried it.
    posts = _posts(fake, guilds)
    assert all(n == 1 or (n == 2 and sid in retried) for sid, n in posts.items()), posts
    # Runs: one per slot, and one more only for a slot retried (its first attempt
    # finished or was closed as interrupted by the survivor that settled the dead one).
    runs = await _rows(
        scaleout_url,
        "SELECT r.run_id, r.status, (s.run_id IS NOT NULL) AS settles_a_slot FROM audit_runs r "
        "LEFT JOIN schedule_slots s ON s.run_id = r.run_id WHERE r.trigger = 'schedule'",
    )
    assert sum(1 for r in runs if r["settles_a_slot"]) == SLOTS
    assert SLOTS <= len(runs) <= SLOTS + len(retried), (len(runs), len(retried))
    assert {r["status"] for r in runs} <= {"ok", "interrupted"}
    # The ledger is the audit: what every run cost, charged once, nothing left open.
    [totals] = await _rows(
        scaleout_url,
        "SELECT (SELECT coalesce(sum(cost_micros), 0) FROM audit_runs) AS audit, "
        "(SELECT coalesce(sum(amount_micros), 0) FROM budget_ledger) AS ledger, "
        "(SELECT count(*) FROM budget_reservations) AS open",
    )
    assert totals["audit"] == totals["ledger"] and totals["open"] == 0, dict(totals)
    assert fake.unknown_calls == []


# --- approvals: the press reaches a process the run is not in --------------------------


async def _skill_that_asks(url: str, guild: FakeGuild, fake: FakeDiscord) -> int:
    """A skill of alice's in ``guild`` that remembers a note, in a guild whose members
    confirm each save (Approve/Deny), scheduled once in 3 s; the processes told."""
    from adapters.storage.db import Database
    from adapters.storage.guild_settings import SqlGuildSettings
    from executor.agent import Caller
    from executor.tools.builtin import default_registry
    from memory import InMemoryNoteStore, memory_source
    from personas.markdown import load_builtins
    from personas.store import PersonaStore
    from skills.model import SkillSpec
    from skills.schedules import ScheduleStore
    from skills.store import SkillStore

    db = Database.open(url)
    try:
        tools = default_registry()
        tools.add_source(memory_source(InMemoryNoteStore()))
        skills = SkillStore(
            db.sessions,
            tools=tools,
            tiers=("fast", "standard", "smart"),
            personas=PersonaStore(db.sessions, load_builtins(), tools=tools),
        )
        alice = Caller(
            user_id=str(fake.user("alice")["id"]), display_name="alice", guild_id=str(guild.id)
        )
        await SqlGuildSettings(db.sessions).update_guild(str(guild.id), memory_confirm=True)
        skill, _ = await skills.save(
            str(guild.id),
            "keeper",
            SkillSpec(prompt="Remember that the pulse is fine.", tools=("remember",)),
            by=alice,
        )
        info = await ScheduleStore(db.sessions).create(
            skill_id=skill.id,
            guild_id=str(guild.id),
            channel_id=str(guild.channel_id("general")),
            created_by=alice.user_id,
            run_at=datetime.now(UTC) + timedelta(seconds=3),
            missed="catch-up",
        )
    finally:
        await db.close()
    for topic, key in (("guild_settings", f"guild:{guild.id}"), ("schedules", None)):
        await _rows(
            url,
            "SELECT pg_notify('coterie', $1)",
            json.dumps({"t": topic, "k": key, "f": "test"}),
        )
    return info.id


async def test_a_scheduled_skill_asks_from_the_leader_and_the_press_lands_elsewhere(
    scaleout_url: str, fake_discord: FakeDiscord, llmock: Any, tmp_path: Path, procs: list[Proc]
) -> None:
    fake = fake_discord
    guilds = _guilds(fake)
    three = await _start_three(procs, tmp_path, fake, llmock, scaleout_url)
    leader_pid = await _leader_pid(scaleout_url)
    owners = await _owners(scaleout_url)
    # A guild the leader does not serve: its slots are posted over REST, and Discord
    # sends its button presses to another process.
    shard = next(s for s, pid in owners.items() if pid != leader_pid)
    guild = guilds[shard]
    [leader] = [p for p in three if p.pid == leader_pid]
    [server] = [p for p in three if p.pid == owners[shard]]
    alice = str(fake.user("alice")["id"])

    llmock.call_tool("remember", {"note": "the pulse is fine"})
    llmock.reply("noted, and kept.", times=None)
    general = guild.channel_id("general")
    since = len(fake.calls)
    schedule_id = await _skill_that_asks(scaleout_url, guild, fake)
    ask = await fake.wait_for_call(
        "POST", rf"/channels/{general}/messages", _has_buttons, since=since, timeout=30
    )
    assert ask.json["content"].startswith(f"<@{alice}> Allow the tool **remember**")
    await leader.wait_for(rf"asked member {alice} to approve remember", timeout=30)

    # Bob's press is refused by the process that receives it; alice's is recorded there,
    # and the leader's run goes on: the note is kept and the answer posted.
    buttons = _buttons(ask)
    press = await fake.dispatch_component(buttons["Approve"], int(ask.response["id"]), user="bob")
    told = await fake.wait_for_interaction_response(press, timeout=30)
    assert told.json["data"]["content"].startswith("Not yours")
    press = await fake.dispatch_component(buttons["Approve"], int(ask.response["id"]), user="alice")
    marked = await fake.wait_for_interaction_response(press, timeout=30)
    assert marked.json["type"] == 7 and marked.json["data"]["content"].endswith("-# Approved.")
    await server.wait_for(rf"member {alice} approved remember", timeout=30)
    await webhook_shows(fake, "noted, and kept.", timeout=30)
    # The question was the leader's (its run waited there), decided by alice.
    [approval] = await _rows(
        scaleout_url,
        "SELECT a.tool, a.user_id, a.decision, a.decided_by, i.pid FROM approvals a "
        "JOIN instances i ON i.id = a.owner",
    )
    assert dict(approval) == {
        "tool": "remember",
        "user_id": alice,
        "decision": "approved",
        "decided_by": alice,
        "pid": leader_pid,
    }

    for proc in three:
        proc.signal(signal.SIGTERM)
    for proc in three:
        assert await proc.exit_code() == 0
        assert "Traceback" not in proc.stderr
    assert f"member {alice} approved" not in leader.stderr  # the press never reached it
    notes = await _rows(scaleout_url, "SELECT user_id, text FROM memory_notes")
    assert [(r["user_id"], r["text"]) for r in notes] == [(alice, "the pulse is fine")]
    [slot] = await _rows(
        scaleout_url, "SELECT status FROM schedule_slots WHERE schedule_id = $1", schedule_id
    )
    assert slot["status"] == "ok"
    assert fake.unknown_calls == []
