"""The scheduler with several processes on one database: one leader by lease, driven
beat by beat (``Membership.tick``) against the instances table (SQLite and
PostgreSQL), each "process" a membership, a schedule store carrying its instance id
and a ``SkillScheduler`` on a fake clock. A process "dies" by its lease being moved
into the past, as a SIGKILL leaves it once the TTL has run out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text

from adapters.services.instances import SWEEP_EVERY, Identity, Membership
from adapters.services.leadership import SCHEDULER_LEASE, Leadership
from adapters.storage.db import Database
from adapters.storage.instances import SqlInstances
from executor.testing import FakeClock
from skills.scheduler import INTERRUPTED, RETRIED, SkillScheduler, SlotOutcome
from skills.schedules import ScheduleStore
from skills.tables import Skill
from tests.skills.test_scheduler import T0, Fire, at, make, slots
from tests.storage.dbs import db, pg_db, pg_url, sqlite_db, sqlite_template

__all__ = ["db", "pg_db", "pg_url", "sqlite_db", "sqlite_template"]  # the fixtures used here


@dataclass
class Process:
    name: str
    membership: Membership
    leadership: Leadership
    store: ScheduleStore
    scheduler: SkillScheduler
    fire: Fire


async def _process(
    db: Database, name: str, clock: FakeClock, published: list[str], fire: Fire | None = None
) -> Process:
    instances = SqlInstances(db.sessions)
    store = ScheduleStore(db.sessions)
    store.owner = name
    fire = fire or Fire(SlotOutcome(status="ok", run_id=f"run-{name}"))
    sched = SkillScheduler(store, fire, clock=clock)

    async def recover() -> int:
        return 0

    async def publish(topic: str) -> None:
        published.append(f"{name}:{topic}")

    membership = Membership(
        instances,
        Identity(id=name, kind="bot", host="h", pid=1),
        ttl_s=30,
        recover=recover,
        sole=db.is_sqlite,
        publish=publish,
    )
    leadership = Leadership(
        instances,
        name,
        ttl_s=30,
        led=sched,
        always=db.is_sqlite,
        before_gain=membership.reap,
        publish=publish,
    )
    membership.leadership = leadership
    await membership.register()
    return Process(name, membership, leadership, store, sched, fire)


async def move(clock: FakeClock, when: datetime) -> None:
    await clock.advance((when - clock.now()).total_seconds())


async def _die(db: Database, name: str) -> None:
    """The instance stopped beating long enough ago that its lease (and its leases) ran
    out."""
    past = "now() - interval '1 hour'" if not db.is_sqlite else "'2000-01-01 00:00:00'"
    async with db.engine.begin() as conn:
        await conn.execute(text(f"UPDATE instances SET expires_at = {past} WHERE id = '{name}'"))
        await conn.execute(text(f"UPDATE leases SET expires_at = {past} WHERE holder = '{name}'"))


async def _leader(db: Database) -> str | None:
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT holder FROM leases WHERE name = :n"), {"n": SCHEDULER_LEASE}
            )
        ).first()
    return None if row is None else str(row[0])


async def _close(*procs: Process) -> None:
    for p in procs:
        p.scheduler.shutdown()
        await p.scheduler.wait_idle()
        await p.membership.close()


async def _skill(db: Database) -> int:
    async with db.sessions() as session, session.begin():
        skill = Skill(guild_id="1", name="digest", owner_id="100")
        session.add(skill)
        await session.flush()
        assert skill.id is not None
        return skill.id


async def test_one_leader_fires_and_a_survivor_leads_when_it_dies(pg_db: Database) -> None:
    db = pg_db
    skill_id = await _skill(db)
    clock = FakeClock(start=at(10, 29))
    published: list[str] = []
    info = await make(
        ScheduleStore(db.sessions),
        skill_id,
        cron="30 * * * *",
        missed="catch-up",
        created_at=at(10, 0),
    )
    gated = Fire()
    gated.gate = asyncio.Event()  # a's run is going when a "dies"
    a = await _process(db, "a", clock, published, gated)
    b = await _process(db, "b", clock, published)
    await a.leadership.enable()
    await b.leadership.enable()
    assert (a.leadership.leader, b.leadership.leader) == (True, False)
    assert a.scheduler.running and not b.scheduler.running
    assert info.id in a.scheduler.jobs() and b.scheduler.jobs() == {}
    assert await _leader(db) == "a"
    await b.membership.tick()  # a beat does not move the lead while a renews it
    await a.membership.tick()
    assert not b.leadership.leader and await _leader(db) == "a"

    # The slot comes due on the leader: claimed with a's id, running when a dies.
    await move(clock, at(10, 30))
    running = asyncio.ensure_future(a.scheduler.due(info.id, at(10, 30)))
    await gated.called.wait()
    [slot] = await a.store.running_slots()
    assert slot.owner == "a"
    # A live leader's running slot is nobody's to settle.
    assert await b.store.stranded_slots() == []

    await _die(db, "a")
    await move(clock, at(10, 31))
    await b.membership.tick()  # reaps a, takes the lease, starts: retries a's slot
    assert b.leadership.leader and b.scheduler.running and await _leader(db) == "b"
    await b.scheduler.wait_idle()
    assert b.fire.calls == [(info.id, at(10, 30))]
    [slot] = await b.store.recent_slots(info.id, 5)
    assert (slot.status, slot.reason, slot.attempt, slot.owner) == ("ok", RETRIED, 2, "b")

    # a comes back from its stall: declared dead, it stops firing at once; its old
    # run ends and closes nothing of the retry's.
    await a.membership.tick()
    assert a.membership.lost.is_set() and not a.leadership.leader
    assert not a.scheduler.running
    gated.gate.set()
    await running
    [slot] = await b.store.recent_slots(info.id, 5)
    assert (slot.status, slot.attempt, slot.run_id) == ("ok", 2, "run-b")
    # The slot ran once on each attempt, never twice by a claim.
    assert await b.scheduler.fire_due(info.id, at(10, 30)) == "duplicate"
    await _close(a, b)


async def test_a_stopping_leader_hands_the_lead_over_at_once(pg_db: Database) -> None:
    db = pg_db
    clock = FakeClock(start=at(10, 0))
    published: list[str] = []
    a = await _process(db, "a", clock, published)
    b = await _process(db, "b", clock, published)
    await a.leadership.enable()
    await b.leadership.enable()
    assert a.leadership.leader and not b.leadership.leader
    # The drain: the scheduler stops, the lead is given up and the others told.
    a.scheduler.shutdown()
    await a.leadership.resign()
    assert "a:scheduler" in published and await _leader(db) is None
    await b.membership.tick()  # (woken by the notification)
    assert b.leadership.leader and b.scheduler.running
    await a.membership.tick()
    assert not a.leadership.leader  # resigned for good
    await _close(a, b)


async def test_a_slot_a_stopping_leaders_drain_cut_is_retried_by_the_next_leader(
    pg_db: Database,
) -> None:
    """The drain cut the slot's run (``interrupted``): the row stays running, owned by
    the stopping process; once that process has removed its instance, the new leader's
    next sweep retries the slot, handed the cut run to resume."""
    db = pg_db
    skill_id = await _skill(db)
    clock = FakeClock(start=at(10, 29))
    published: list[str] = []
    info = await make(
        ScheduleStore(db.sessions),
        skill_id,
        cron="30 * * * *",
        missed="catch-up",
        created_at=at(10, 0),
    )
    cut = Fire(SlotOutcome(status="interrupted", run_id="run-a"))
    cut.gate = asyncio.Event()
    a = await _process(db, "a", clock, published, cut)
    b = await _process(db, "b", clock, published)
    await a.leadership.enable()
    await b.leadership.enable()
    await move(clock, at(10, 30))
    running = asyncio.ensure_future(a.scheduler.due(info.id, at(10, 30)))
    await cut.called.wait()
    # The drain: the scheduler stops and the lead goes to b, while a's run goes on.
    a.scheduler.shutdown()
    await a.leadership.resign()
    await b.membership.tick()
    assert b.leadership.leader
    assert await b.store.stranded_slots() == []  # a is alive: its slot is its own
    cut.gate.set()  # past the grace: the runner cut the run
    await running
    [slot] = await a.store.running_slots()
    claimed = cut.runs[0].run_id  # the run the claim named
    assert (slot.owner, slot.run_id, slot.attempt) == ("a", claimed, 1)
    await a.membership.close()  # a exits
    for _ in range(SWEEP_EVERY):  # within a sweep's period of beats
        await b.membership.tick()
        await b.scheduler.wait_idle()
        if b.fire.calls:
            break
    assert b.fire.calls == [(info.id, at(10, 30))]
    assert (b.fire.runs[0].attempt, b.fire.runs[0].interrupted) == (2, claimed)
    [slot] = await b.store.recent_slots(info.id, 5)
    assert (slot.status, slot.attempt, slot.owner) == ("ok", 2, "b")
    await _close(a, b)


async def test_a_leader_that_loses_its_lease_stops_firing_and_can_lead_again(
    pg_db: Database,
) -> None:
    db = pg_db
    skill_id = await _skill(db)
    clock = FakeClock(start=at(10, 0))
    published: list[str] = []
    await make(ScheduleStore(db.sessions), skill_id, cron="30 * * * *", created_at=T0)
    a = await _process(db, "a", clock, published)
    b = await _process(db, "b", clock, published)
    await a.leadership.enable()
    await b.leadership.enable()
    # Only a's scheduler lease ran out (renewed late), and b took it.
    async with db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE leases SET expires_at = now() - interval '1 hour' WHERE name = :n"),
            {"n": SCHEDULER_LEASE},
        )
    await b.membership.tick()
    assert b.leadership.leader and b.scheduler.running
    await a.membership.tick()  # its beat finds the lease is b's: standby
    assert not a.leadership.leader and not a.scheduler.running and a.scheduler.jobs() == {}
    assert await a.scheduler.due(1, at(10, 30)) == "closed"
    # b stops; a leads again and loads the table again.
    b.scheduler.shutdown()
    await b.leadership.resign()
    await a.membership.tick()
    assert a.leadership.leader and a.scheduler.running and len(a.scheduler.jobs()) == 1
    await _close(a, b)


async def test_a_schedule_saved_on_another_process_reaches_the_leader(pg_db: Database) -> None:
    db = pg_db
    skill_id = await _skill(db)
    clock = FakeClock(start=at(10, 0))
    published: list[str] = []
    a = await _process(db, "a", clock, published)
    b = await _process(db, "b", clock, published)
    await a.leadership.enable()
    await b.leadership.enable()
    # b (not leading) saves a schedule: no job there; it tells the leader.
    b.scheduler.publish = published_to(a.scheduler)
    info = await make(b.store, skill_id, cron="30 * * * *", created_at=T0)
    assert await b.scheduler.add(info) == at(10, 30)
    assert b.scheduler.jobs() == {}
    await a.scheduler.wait_idle()
    assert list(a.scheduler.jobs()) == [info.id]
    # Removed on b: the leader drops the job.
    await b.store.delete(info.id)
    await b.scheduler.remove(info.id)
    await a.scheduler.wait_idle()
    assert a.scheduler.jobs() == {}

    # A notification lost (the listener reconnected: "everything"): the leader
    # compares the table with its jobs; a one-shot it never heard of and that came due
    # meanwhile is caught up as at start.
    once = await make(b.store, skill_id, run_at=at(10, 5), missed="catch-up", created_at=at(9, 0))
    await move(clock, at(10, 6))
    a.scheduler.changed(None)
    await a.scheduler.wait_idle()
    assert a.fire.calls == [(once.id, at(10, 5))]
    got = await a.store.get(once.id)
    assert got is not None and not got.enabled
    await _close(a, b)


def published_to(leader: SkillScheduler) -> Callable[[str], Awaitable[None]]:
    """A publish that delivers straight to the leader (as NOTIFY would)."""

    async def publish(key: str) -> None:
        leader.changed(key)

    return publish


async def test_a_dead_non_leaders_running_slot_is_settled_by_the_leader_only(
    pg_db: Database,
) -> None:
    db = pg_db
    skill_id = await _skill(db)
    clock = FakeClock(start=at(10, 29))
    published: list[str] = []
    info = await make(
        ScheduleStore(db.sessions), skill_id, cron="30 * * * *", missed="skip", created_at=T0
    )
    a = await _process(db, "a", clock, published)
    b = await _process(db, "b", clock, published)
    c = await _process(db, "c", clock, published)
    for p in (a, b, c):
        await p.leadership.enable()
    assert a.leadership.leader
    # c led before, lost the lead, and was still finishing a slot when it died.
    assert await c.store.claim_slot(info.id, at(10, 30), started_at=at(10, 30))
    await move(clock, at(10, 31))
    await _die(db, "c")
    # A survivor that does not lead reaps c: it never touches the slot.
    await b.membership.tick()
    assert slots(await b.store.recent_slots(info.id, 1)) == [(at(10, 30), "running", None)]
    # The leader's next sweep settles it (skip policy: closed as interrupted).
    await a.leadership.follow(frozenset({SCHEDULER_LEASE}), sweep=True)
    assert slots(await a.store.recent_slots(info.id, 1)) == [(at(10, 30), "failed", INTERRUPTED)]
    await _close(a, b)
    c.scheduler.shutdown()


async def test_on_sqlite_the_process_always_leads(sqlite_db: Database) -> None:
    db = sqlite_db
    skill_id = await _skill(db)
    clock = FakeClock(start=at(10, 0))
    a = await _process(db, "a", clock, [])
    # A slot a killed process left running (no owner: before owners, or unregistered).
    info = await make(
        ScheduleStore(db.sessions), skill_id, cron="30 * * * *", missed="catch-up", created_at=T0
    )
    assert await ScheduleStore(db.sessions).claim_slot(info.id, at(9, 30), started_at=at(9, 30))
    await move(clock, at(9, 40))
    await a.leadership.enable()
    assert a.leadership.leader and a.scheduler.running and await _leader(db) == "a"
    await a.scheduler.wait_idle()
    assert a.fire.calls == [(info.id, at(9, 30))]
    # Its lease gone (say, deleted by hand): it leads all the same, and takes it back.
    async with db.engine.begin() as conn:
        await conn.execute(text("DELETE FROM leases"))
    await a.membership.tick()
    await a.membership.tick()
    assert a.leadership.leader and a.scheduler.running and await _leader(db) == "a"
    await _close(a)


async def test_only_a_gone_or_unknown_owners_running_slots_are_stranded(db: Database) -> None:
    skill_id = await _skill(db)
    instances = SqlInstances(db.sessions)
    await instances.register(Identity(id="live", kind="bot", host="h", pid=1), ttl_s=30)
    ids = []
    for owner in ("live", "gone", None):
        info = await make(ScheduleStore(db.sessions), skill_id, cron="30 * * * *")
        store = ScheduleStore(db.sessions)
        store.owner = owner
        assert await store.claim_slot(info.id, at(10, 30), started_at=at(10, 30))
        ids.append(info.id)
    mine = ScheduleStore(db.sessions)
    mine.owner = "live"
    assert {s.schedule_id for s in await mine.stranded_slots()} == {ids[1], ids[2]}
    # With no owner (one process, holding the database): every running slot.
    assert {s.schedule_id for s in await ScheduleStore(db.sessions).stranded_slots()} == set(ids)
    assert [s.owner for s in await mine.running_slots()] == ["live", "gone", None]
