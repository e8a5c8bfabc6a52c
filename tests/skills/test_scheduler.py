"""The schedule store and SkillScheduler on a migrated database, with a fake clock.

No test waits for real time: slots are fired through ``due``/``fire_due`` with the
fake clock where it stands, or APScheduler is made to find a job due *now* by moving
its ``next_run_time`` into the past (``modify_job``), and the test awaits an event
set by the fire, never a sleep.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from adapters.storage.audit_queries import AuditQueries
from adapters.storage.db import Database
from adapters.storage.tables import AuditRun
from executor.testing import FakeClock
from skills import scheduling
from skills.errors import (
    InvalidCron,
    InvalidTime,
    ScheduleError,
    ScheduleNotFound,
    TooManySchedules,
    UnknownTimezone,
)
from skills.scheduler import (
    ANSWERED,
    DONE,
    INTERRUPTED,
    INTERRUPTED_AGAIN,
    MISSED,
    ONE_SHOT_INTERRUPTED,
    ONE_SHOT_SKIPPED,
    OVERLAP,
    RESUMED,
    RETRIED,
    SkillScheduler,
    SlotOutcome,
    SlotRun,
)
from skills.schedules import ScheduleInfo, ScheduleStore
from skills.tables import Schedule, Skill

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


def at(hour: int, minute: int = 0, day: int = 1) -> datetime:
    return datetime(2026, 1, day, hour, minute, tzinfo=UTC)


class WatchedStore(ScheduleStore):
    """The real store, telling the test when a skipped slot was written."""

    def __init__(self, sessions: Any) -> None:
        super().__init__(sessions)
        self.skipped = asyncio.Event()

    async def record_skipped_many(
        self, slots: Iterable[tuple[int, datetime, str]], *, at: datetime | None = None
    ) -> int:
        written = await super().record_skipped_many(slots, at=at)
        if written:
            self.skipped.set()
        return written


class Fire:
    """A fire that records (schedule id, slot), can block on a gate, and answers
    ``outcome`` (or raises ``raises``)."""

    def __init__(self, outcome: SlotOutcome | None = None) -> None:
        self.calls: list[tuple[int, datetime]] = []
        self.runs: list[SlotRun] = []  # the attempt each call was handed
        self.outcome = outcome or SlotOutcome(status="ok", run_id="run-1")
        self.gate: asyncio.Event | None = None
        self.raises: Exception | None = None
        self.called = asyncio.Event()

    async def __call__(
        self, schedule: ScheduleInfo, slot_at: datetime, run: SlotRun
    ) -> SlotOutcome:
        self.calls.append((schedule.id, slot_at))
        self.runs.append(run)
        self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.raises is not None:
            raise self.raises
        return self.outcome


class Events:
    def __init__(self) -> None:
        self.failing: list[tuple[int, int, str]] = []
        self.disabled: list[tuple[int, str, bool]] = []

    async def failing_(self, schedule: ScheduleInfo, failures: int, error: str) -> None:
        self.failing.append((schedule.id, failures, error))

    async def disabled_(self, schedule: ScheduleInfo, reason: str) -> None:
        self.disabled.append((schedule.id, reason, schedule.enabled))


class EventsPort:
    """ScheduleEvents, recording into an :class:`Events`."""

    def __init__(self, seen: Events) -> None:
        self.seen = seen

    async def failing(self, schedule: ScheduleInfo, failures: int, error: str) -> None:
        await self.seen.failing_(schedule, failures, error)

    async def disabled(self, schedule: ScheduleInfo, reason: str) -> None:
        await self.seen.disabled_(schedule, reason)


@pytest.fixture
async def skill_id(db: Database) -> int:
    async with db.sessions() as session, session.begin():
        skill = Skill(guild_id="1", name="digest", owner_id="100")
        session.add(skill)
        await session.flush()
        assert skill.id is not None
        return skill.id


@pytest.fixture
def store(db: Database) -> WatchedStore:
    return WatchedStore(db.sessions)


async def make(
    store: ScheduleStore,
    skill_id: int,
    *,
    cron: str | None = None,
    run_at: datetime | None = None,
    missed: str = "skip",
    timezone: str = "UTC",
    created_at: datetime | None = None,
    created_by: str = "100",
) -> ScheduleInfo:
    info = await store.create(
        skill_id=skill_id,
        guild_id="1",
        channel_id="55",
        created_by=created_by,
        cron=cron,
        run_at=run_at,
        timezone=timezone,
        arguments={"topic": "rust"},
        missed=missed,
    )
    if created_at is not None:
        async with store._sessions() as session, session.begin():
            await session.execute(
                update(Schedule).where(Schedule.id == info.id).values(created_at=created_at)  # type: ignore[arg-type]
            )
    got = await store.get(info.id)
    assert got is not None
    return got


# The schedulers a test made, with their fires (closed after it: :func:`_closed`).
_made: list[tuple[SkillScheduler, Fire]] = []


def scheduler(
    store: ScheduleStore,
    fire: Fire,
    clock: FakeClock,
    *,
    events: Events | None = None,
    **kwargs: Any,
) -> SkillScheduler:
    made = SkillScheduler(
        store,
        fire,
        events=EventsPort(events) if events is not None else None,
        clock=clock,
        **kwargs,
    )
    _made.append((made, fire))
    return made


@pytest.fixture(autouse=True)
async def _closed(db: Database) -> AsyncIterator[None]:
    """A test that fails half-way leaves its scheduler running, perhaps a slot held at
    its gate: closed here, before the database, so the failure is reported once, not
    again as a connection leaked into whichever test runs next (CI saw both)."""
    yield
    while _made:
        made, fire = _made.pop()
        made.shutdown()
        if fire.gate is not None:
            fire.gate.set()
        async with asyncio.timeout(10):
            await made.wait_idle()


async def stop(sched: SkillScheduler) -> None:
    sched.shutdown()
    await sched.wait_idle()  # bookkeeping tasks done before the database closes


def slots(got: Iterable[Any]) -> list[tuple[datetime, str, str | None]]:
    return [(s.slot_at, s.status, s.reason) for s in got]


# --- the store ---------------------------------------------------------------------


async def test_create_checks_what_the_table_must_never_hold(
    store: ScheduleStore, skill_id: int
) -> None:
    with pytest.raises(ScheduleError, match="exactly one"):
        await make(store, skill_id)
    with pytest.raises(ScheduleError, match="exactly one"):
        await make(store, skill_id, cron="0 9 * * *", run_at=T0)
    with pytest.raises(InvalidCron):
        await make(store, skill_id, cron="0 9 * *")
    with pytest.raises(UnknownTimezone):
        await make(store, skill_id, cron="0 9 * * *", timezone="Mars/Base")
    with pytest.raises(ScheduleError, match="skip` or `catch-up"):
        await make(store, skill_id, cron="0 9 * * *", missed="sometimes")
    assert await store.list("1") == []


async def test_create_sets_stagger_and_reads_back(store: ScheduleStore, skill_id: int) -> None:
    hourly = await make(store, skill_id, cron="0  9 * * 1-5", timezone="europe/paris".title())
    assert hourly.cron == "0 9 * * 1-5"
    assert hourly.timezone == "Europe/Paris"
    assert hourly.stagger_s == scheduling.stagger_s(hourly.id, hourly.cron)
    assert hourly.arguments == {"topic": "rust"}
    assert (hourly.missed, hourly.enabled, hourly.consecutive_failures) == ("skip", True, 0)
    quarter = await make(store, skill_id, cron="15 9 * * *")
    assert quarter.stagger_s == 0
    once = await make(store, skill_id, run_at=T0)
    assert once.one_shot and once.run_at == T0 and once.stagger_s == 0
    assert [s.id for s in await store.for_skill(skill_id)] == [hourly.id, quarter.id, once.id]


async def test_member_cap_counts_enabled_schedules_in_the_insert_transaction(
    store: ScheduleStore, skill_id: int
) -> None:
    for _ in range(2):
        await store.create(
            skill_id=skill_id,
            guild_id="1",
            channel_id="5",
            created_by="100",
            cron="15 9 * * *",
            max_per_member=2,
        )
    with pytest.raises(TooManySchedules, match="already have 2"):
        await store.create(
            skill_id=skill_id,
            guild_id="1",
            channel_id="5",
            created_by="100",
            cron="15 9 * * *",
            max_per_member=2,
        )
    assert await store.count_for_member("100") == 2
    first = (await store.list("1", created_by="100"))[0]
    assert await store.disable(first.id, "done")
    assert await store.count_for_member("100") == 1  # a disabled one does not count
    assert len(await store.list("1")) == 2
    assert await store.list("1", created_by="200") == []


async def test_slots_claim_once_finish_and_skip(store: ScheduleStore, skill_id: int) -> None:
    info = await make(store, skill_id, cron="15 * * * *")
    one, two, three = at(9, 15), at(10, 15), at(11, 15)
    assert await store.claim_slot(info.id, one, started_at=at(9, 15))
    assert not await store.claim_slot(info.id, one, started_at=at(9, 16))  # the constraint
    running = await store.running_slot(info.id)
    assert running is not None and running.slot_at == one and running.status == "running"
    assert await store.finish_slot(info.id, one, "failed", reason="boom") == 1
    assert await store.finish_slot(info.id, one, "failed", reason="again") == 1  # not running
    assert await store.claim_slot(info.id, two, started_at=at(10, 15))
    assert await store.finish_slot(info.id, two, "failed") == 2
    assert await store.claim_slot(info.id, three, started_at=at(11, 15, 1))
    assert await store.finish_slot(info.id, three, "ok", run_id="r3", ended_at=at(11, 16)) == 0
    got = await store.get(info.id)
    assert got is not None
    assert (got.last_status, got.last_run_id, got.consecutive_failures) == ("ok", "r3", 0)
    assert got.last_run_at == at(11, 15, 1)
    assert not await store.record_skipped(info.id, one, "late")  # keeps the failed row
    assert await store.record_skipped(info.id, at(12, 15), "late")
    assert not await store.record_skipped(info.id, at(12, 15), "late")  # idempotent
    assert await store.running_slot(info.id) is None
    assert slots(await store.recent_slots(info.id, 3)) == [
        (at(12, 15), "skipped", "late"),
        (three, "ok", None),
        (two, "failed", None),
    ]
    last = await store.last_slot(info.id)
    assert last is not None and last.slot_at == at(12, 15)
    assert (await store.last_slot_times()) == {info.id: at(12, 15)}
    assert await store.delete(info.id)
    assert await store.recent_slots(info.id, 10) == []  # ON DELETE CASCADE
    assert not await store.delete(info.id)
    assert not await store.claim_slot(info.id, one, started_at=one)  # gone: do not run


# --- firing ------------------------------------------------------------------------


async def test_a_schedule_fires_through_apscheduler_with_its_slot(
    store: ScheduleStore, skill_id: int
) -> None:
    # Top of the hour: staggered. APScheduler fires at slot + stagger; fire gets the slot.
    info = await make(store, skill_id, cron="0 * * * *", missed="catch-up")
    stagger = timedelta(seconds=info.stagger_s)
    real_now = datetime.now(UTC)
    slot = scheduling.last_fires(
        scheduling.parse_cron("0 * * * *", scheduling.zone("UTC")),
        real_now - timedelta(hours=3),
        real_now - stagger,
    )[-1]
    fire = Fire()
    sched = scheduler(store, fire, FakeClock(start=slot + stagger + timedelta(seconds=30)))
    await sched.start()
    aps = sched.apscheduler
    assert aps is not None
    aps.modify_job(str(info.id), next_run_time=slot + stagger)  # due now: APScheduler runs it
    await asyncio.wait_for(fire.called.wait(), 10)
    await sched.wait_idle()
    assert fire.calls == [(info.id, slot)]
    assert slots(await store.recent_slots(info.id, 5)) == [(slot, "ok", None)]
    following = sched.jobs()[info.id]
    assert following == slot + timedelta(hours=1) + stagger
    got = await store.get(info.id)
    assert got is not None and got.next_run_at == following and got.last_run_id == "run-1"
    await stop(sched)


async def test_jobs_are_rebuilt_from_the_table_on_restart(
    db: Database, store: ScheduleStore, skill_id: int
) -> None:
    weekdays = await make(store, skill_id, cron="0 9 * * 1-5", timezone="Europe/Paris")
    half_hourly = await make(store, skill_id, cron="*/30 * * * *")
    once = await make(store, skill_id, run_at=datetime.now(UTC) + timedelta(hours=2))
    off = await make(store, skill_id, cron="15 9 * * *")
    await store.disable(off.id, "by hand")
    clock = FakeClock(start=datetime.now(UTC))

    def expected(info: ScheduleInfo, after: datetime) -> datetime:
        if info.run_at is not None:
            return info.run_at
        assert info.cron is not None
        trigger = scheduling.parse_cron(info.cron, scheduling.zone(info.timezone))
        stagger = timedelta(seconds=info.stagger_s)
        return (
            scheduling.fires_between(trigger, after - stagger, after + timedelta(days=8))[0]
            + stagger
        )

    for generation in range(2):
        sched = scheduler(ScheduleStore(db.sessions), Fire(), clock)
        before = datetime.now(UTC)
        report = await sched.start()
        assert report.loaded == 3
        jobs = sched.jobs()
        assert set(jobs) == {weekdays.id, half_hourly.id, once.id}, generation
        for info in (weekdays, half_hourly, once):
            assert jobs[info.id] == expected(info, before)
            assert sched.next_run(info.id) == jobs[info.id]
            row = await store.get(info.id)
            assert row is not None and row.next_run_at == jobs[info.id]
        aps = sched.apscheduler
        assert aps is not None
        assert len(aps.get_jobs()) == 3  # exactly one APScheduler job per enabled row
        for job in aps.get_jobs():
            assert (job.misfire_grace_time, job.coalesce, job.max_instances) == (None, True, 1)
        assert sched.next_run(off.id) is None
        sched.shutdown()
        sched.shutdown()  # idempotent
        await sched.wait_idle()
        assert sched.jobs() == {}


async def test_catch_up_within_grace_runs_the_latest_missed_slot_once(
    store: ScheduleStore, skill_id: int
) -> None:
    info = await make(store, skill_id, cron="30 * * * *", missed="catch-up", created_at=T0)
    fire = Fire()
    sched = scheduler(store, fire, FakeClock(start=at(10, 40)))  # missed 8:30, 9:30, 10:30
    report = await sched.start()
    await sched.wait_idle()
    assert (report.caught_up, report.skipped) == (1, 1)
    assert fire.calls == [(info.id, at(10, 30))]
    assert slots(await store.recent_slots(info.id, 10)) == [
        (at(10, 30), "ok", None),
        (at(9, 30), "skipped", MISSED),  # the one before it; 8:30 leaves no row
    ]
    await stop(sched)


async def test_catch_up_beyond_grace_is_skipped(store: ScheduleStore, skill_id: int) -> None:
    info = await make(store, skill_id, cron="30 * * * *", missed="catch-up", created_at=T0)
    fire = Fire()
    sched = scheduler(store, fire, FakeClock(start=at(10, 40)), grace_s=300)
    report = await sched.start()
    await sched.wait_idle()
    assert (report.caught_up, report.skipped) == (0, 1)
    assert fire.calls == []
    assert slots(await store.recent_slots(info.id, 10)) == [(at(10, 30), "skipped", MISSED)]
    got = await store.get(info.id)
    assert got is not None and got.last_status == "skipped" and got.enabled
    await stop(sched)


async def test_skip_policy_records_the_missed_slot(store: ScheduleStore, skill_id: int) -> None:
    info = await make(store, skill_id, cron="30 * * * *", missed="skip", created_at=T0)
    fire = Fire()
    sched = scheduler(store, fire, FakeClock(start=at(10, 40)))
    report = await sched.start()
    await sched.wait_idle()
    assert (report.caught_up, report.skipped) == (0, 1)
    assert fire.calls == []
    assert slots(await store.recent_slots(info.id, 10)) == [(at(10, 30), "skipped", MISSED)]
    assert info.id in sched.jobs()  # still scheduled
    await stop(sched)


async def test_missed_is_counted_from_the_last_slot_not_creation(
    store: ScheduleStore, skill_id: int
) -> None:
    info = await make(store, skill_id, cron="30 * * * *", missed="catch-up", created_at=T0)
    assert await store.claim_slot(info.id, at(10, 30), started_at=at(10, 30))
    await store.finish_slot(info.id, at(10, 30), "ok")
    fire = Fire()
    sched = scheduler(store, fire, FakeClock(start=at(10, 40)))
    report = await sched.start()
    await sched.wait_idle()
    assert (report.caught_up, report.skipped, fire.calls) == (0, 0, [])
    await stop(sched)


@pytest.mark.parametrize("missed", ["catch-up", "skip"])
async def test_a_missed_one_shot(store: ScheduleStore, skill_id: int, missed: str) -> None:
    info = await make(store, skill_id, run_at=at(10), missed=missed, created_at=T0)
    fire = Fire()
    sched = scheduler(store, fire, FakeClock(start=at(10, 40)))
    await sched.start()
    await sched.wait_idle()
    status = "ok" if missed == "catch-up" else "skipped"
    assert fire.calls == ([(info.id, at(10))] if missed == "catch-up" else [])
    assert [s[:2] for s in slots(await store.recent_slots(info.id, 5))] == [(at(10), status)]
    got = await store.get(info.id)
    # A skipped one-shot says so (it listed as "it has run" in /skill schedules).
    reason = DONE if missed == "catch-up" else ONE_SHOT_SKIPPED
    assert got is not None and not got.enabled and got.disabled_reason == reason
    assert got.last_status == status
    assert info.id not in sched.jobs()
    await stop(sched)


async def test_an_interrupted_slot_is_retried_once_under_catch_up(
    db: Database, store: ScheduleStore, skill_id: int, caplog: pytest.LogCaptureFixture
) -> None:
    info = await make(store, skill_id, cron="30 * * * *", missed="catch-up", created_at=T0)
    first_fire = Fire()
    first_fire.gate = asyncio.Event()  # the run is going when the process "dies"
    first = scheduler(store, first_fire, FakeClock(start=at(10, 30)))
    running = asyncio.ensure_future(first.fire_due(info.id, at(10, 30)))
    await first_fire.called.wait()
    # The claim says which run the slot is: a restart knows what it interrupted.
    [attempt] = first_fire.runs
    assert (attempt.attempt, attempt.interrupted) == (1, None) and attempt.run_id
    [claimed] = await store.recent_slots(info.id, 5)
    assert (claimed.status, claimed.run_id) == ("running", attempt.run_id)

    # A new process on the same database, within catch-up's grace of that slot.
    second_fire = Fire(SlotOutcome(status="ok", run_id="run-2"))
    second_fire.gate = asyncio.Event()
    second = scheduler(ScheduleStore(db.sessions), second_fire, FakeClock(start=at(10, 35)))
    with caplog.at_level(logging.INFO, logger="skills.scheduler"):
        report = await second.start()
        await second_fire.called.wait()
        # The retry is handed the run it follows, and is a run of its own.
        [retry] = second_fire.runs
        assert (retry.attempt, retry.interrupted) == (2, attempt.run_id)
        assert retry.run_id not in (attempt.run_id, None)
        [claimed] = await store.recent_slots(info.id, 5)
        assert (claimed.status, claimed.attempt, claimed.run_id) == ("running", 2, retry.run_id)
        second_fire.gate.set()
        await second.wait_idle()
    assert (report.interrupted, report.retried, report.caught_up) == (0, 1, 0)
    assert second_fire.calls == [(info.id, at(10, 30))]
    [slot] = await store.recent_slots(info.id, 5)
    assert (slot.status, slot.reason, slot.attempt, slot.run_id) == ("ok", RETRIED, 2, "run-2")
    assert slot.started_at == at(10, 35)
    # One line for the retried slot, with what an operator greps for.
    [line] = [r for r in caplog.records if r.getMessage() == "schedule slot"]
    assert (line.schedule_id, line.skill, line.outcome, line.attempt, line.run_id) == (  # type: ignore[attr-defined]
        info.id,
        "digest",
        "ok",
        2,
        "run-2",
    )
    assert line.slot_at == at(10, 30).isoformat()  # type: ignore[attr-defined]
    assert not hasattr(line, "resumed_from")  # run from the start: nothing resumed
    # A claim never runs it a third time.
    assert await second.fire_due(info.id, at(10, 30)) == "duplicate"

    # The old run (its process "dead" but here still going) ends: it closes nothing of
    # the retry's, because it is attempt 1 and the slot is attempt 2.
    first_fire.gate.set()
    assert await running == "fired"
    [slot] = await store.recent_slots(info.id, 5)
    assert (slot.status, slot.attempt, slot.run_id) == ("ok", 2, "run-2")
    got = await store.get(info.id)
    assert got is not None and got.consecutive_failures == 0 and got.last_run_id == "run-2"
    await stop(second)


async def test_a_retry_that_resumed_the_interrupted_run_says_so(
    db: Database, store: ScheduleStore, skill_id: int, caplog: pytest.LogCaptureFixture
) -> None:
    info = await make(store, skill_id, cron="30 * * * *", missed="catch-up", created_at=T0)
    # The process died while the slot's run "r-1" ran.
    assert await store.claim_slot(info.id, at(10, 30), started_at=at(10, 30), run_id="r-1")
    note = "not run again, as it may have run before the restart: save_report"
    fire = Fire(SlotOutcome(status="ok", run_id="r-2", resumed_from="r-1", note=note))
    sched = scheduler(ScheduleStore(db.sessions), fire, FakeClock(start=at(10, 35)))
    with caplog.at_level(logging.INFO, logger="skills.scheduler"):
        assert (await sched.start()).retried == 1
        await sched.wait_idle()
    [run] = fire.runs
    assert (run.attempt, run.interrupted) == (2, "r-1")
    [slot] = await store.recent_slots(info.id, 5)
    resumed = RESUMED.format(run_id="r-1")
    assert (slot.status, slot.attempt, slot.run_id) == ("ok", 2, "r-2")
    assert slot.reason == f"{resumed}; {note}"
    [line] = [r for r in caplog.records if r.getMessage() == "schedule slot"]
    assert (line.outcome, line.attempt, line.run_id, line.resumed_from) == (  # type: ignore[attr-defined]
        "ok",
        2,
        "r-2",
        "r-1",
    )
    assert line.reason == slot.reason  # type: ignore[attr-defined]

    # A resumed retry that fails says why (its run, in the audit, says what it resumed).
    other = await make(store, skill_id, cron="45 * * * *", missed="catch-up", created_at=T0)
    assert await store.claim_slot(other.id, at(10, 45), started_at=at(10, 45), run_id="r-3")
    failed = Fire(SlotOutcome(status="failed", run_id="r-4", error="boom", resumed_from="r-3"))
    again = scheduler(ScheduleStore(db.sessions), failed, FakeClock(start=at(10, 50)))
    assert (await again.start()).retried == 1
    await again.wait_idle()
    [slot] = await store.recent_slots(other.id, 5)
    assert (slot.status, slot.reason, slot.run_id) == ("failed", "boom", "r-4")
    await stop(sched)
    await stop(again)


async def test_a_retried_slot_interrupted_again_fails_for_good(
    db: Database, store: ScheduleStore, skill_id: int
) -> None:
    info = await make(store, skill_id, cron="30 * * * *", missed="catch-up", created_at=T0)
    # The process died while the slot ran (a row left running, as a kill leaves it).
    assert await store.claim_slot(info.id, at(10, 30), started_at=at(10, 30), run_id="r-1")
    hung = Fire()
    hung.gate = asyncio.Event()  # the retry hangs: its process dies too
    second = scheduler(ScheduleStore(db.sessions), hung, FakeClock(start=at(10, 31)))
    assert (await second.start()).retried == 1
    await hung.called.wait()
    [slot] = await store.recent_slots(info.id, 5)
    assert (slot.status, slot.attempt) == ("running", 2)

    third_fire = Fire()
    third = scheduler(ScheduleStore(db.sessions), third_fire, FakeClock(start=at(10, 32)))
    forgotten: list[str] = []

    async def forget(run_ids: Sequence[str]) -> None:
        forgotten.extend(run_ids)

    third.forget_runs = forget
    report = await third.start()
    await third.wait_idle()
    assert (report.interrupted, report.retried, report.caught_up) == (1, 0, 0)
    assert third_fire.calls == []
    # Not resumed a second time: the retry's run (what it kept, if anything) is let go.
    assert forgotten == [hung.runs[0].run_id] and hung.runs[0].interrupted == "r-1"
    assert slots(await store.recent_slots(info.id, 5)) == [
        (at(10, 30), "failed", INTERRUPTED_AGAIN)
    ]
    assert await third.fire_due(info.id, at(10, 30)) == "duplicate"
    got = await store.get(info.id)
    assert got is not None and got.last_status == "failed"
    assert got.consecutive_failures == 0  # a restart is not the skill failing
    hung.gate.set()  # the second "dead" process's run ends: the slot stays failed
    await second.wait_idle()
    assert slots(await store.recent_slots(info.id, 5)) == [
        (at(10, 30), "failed", INTERRUPTED_AGAIN)
    ]
    await stop(second)
    await stop(third)


async def _ran(db: Database, run_id: str, status: str, delivered: bool | None) -> None:
    """The audit row of a slot's run, as the process that died left it."""
    async with db.sessions() as session, session.begin():
        session.add(
            AuditRun(
                run_id=run_id, trigger="schedule", user_id="100", status=status, delivered=delivered
            )
        )


async def test_a_slot_whose_run_had_posted_its_answer_is_closed_ok_not_run_again(
    db: Database, store: ScheduleStore, skill_id: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The process died between posting a slot's answer and closing the slot: the next
    start finds the slot running and its run ok and delivered in the audit. It closes
    the slot ok (a success: the failure run resets) and runs nothing; a slot whose run
    had not delivered is retried as before."""
    answered = await make(store, skill_id, cron="30 * * * *", missed="catch-up", created_at=T0)
    unsure = await make(store, skill_id, cron="30 * * * *", missed="catch-up", created_at=T0)
    cut = await make(store, skill_id, cron="30 * * * *", missed="catch-up", created_at=T0)
    async with db.sessions() as session, session.begin():
        await session.execute(
            update(Schedule).where(Schedule.id == answered.id).values(consecutive_failures=1)  # type: ignore[arg-type]
        )
    for info, run_id in ((answered, "r-done"), (unsure, "r-unsure"), (cut, "r-cut")):
        assert await store.claim_slot(info.id, at(10, 30), started_at=at(10, 30), run_id=run_id)
    await _ran(db, "r-done", "ok", True)
    await _ran(db, "r-unsure", "ok", None)  # the post's outcome never reached the audit
    await _ran(db, "r-cut", "ok", False)  # finished, but its answer was not posted

    fire = Fire()
    sched = scheduler(ScheduleStore(db.sessions), fire, FakeClock(start=at(10, 35)))
    sched.answered_runs = AuditQueries(db.sessions).answered
    forgotten: list[str] = []

    async def forget(run_ids: Sequence[str]) -> None:
        forgotten.extend(run_ids)

    sched.forget_runs = forget
    with caplog.at_level(logging.INFO, logger="skills.scheduler"):
        report = await sched.start()
        await sched.wait_idle()
    assert (report.interrupted, report.retried, report.caught_up) == (0, 2, 0)
    assert sorted(fire.calls) == sorted([(unsure.id, at(10, 30)), (cut.id, at(10, 30))])
    [slot] = await store.recent_slots(answered.id, 5)
    assert (slot.status, slot.reason, slot.attempt, slot.run_id) == ("ok", ANSWERED, 1, "r-done")
    got = await store.get(answered.id)
    assert got is not None and got.enabled
    assert (got.last_status, got.last_run_id, got.consecutive_failures) == ("ok", "r-done", 0)
    assert forgotten == ["r-done"]
    lines = [r for r in caplog.records if getattr(r, "run_id", None) == "r-done"]
    assert [(r.outcome, r.reason) for r in lines] == [("ok", ANSWERED)]  # type: ignore[attr-defined]
    assert await sched.fire_due(answered.id, at(10, 30)) == "duplicate"
    await stop(sched)


async def test_a_one_shot_whose_run_had_posted_its_answer_is_done(
    db: Database, store: ScheduleStore, skill_id: int
) -> None:
    info = await make(store, skill_id, run_at=at(10), missed="catch-up", created_at=T0)
    assert await store.claim_slot(info.id, at(10), started_at=at(10), run_id="r-done")
    await _ran(db, "r-done", "ok", True)
    fire = Fire()
    sched = scheduler(ScheduleStore(db.sessions), fire, FakeClock(start=at(10, 5)))
    sched.answered_runs = AuditQueries(db.sessions).answered
    report = await sched.start()
    await sched.wait_idle()
    assert (report.retried, report.interrupted, fire.calls) == (0, 0, [])
    assert slots(await store.recent_slots(info.id, 5)) == [(at(10), "ok", ANSWERED)]
    got = await store.get(info.id)
    assert got is not None and not got.enabled and got.disabled_reason == DONE
    await stop(sched)


@pytest.mark.parametrize(
    ("missed", "now", "why"),
    [
        ("skip", at(10, 35), "the skip policy"),
        ("catch-up", at(11, 25), "past the grace"),
    ],
)
async def test_an_interrupted_slot_is_not_retried(
    db: Database, store: ScheduleStore, skill_id: int, missed: str, now: datetime, why: str
) -> None:
    info = await make(store, skill_id, cron="30 */2 * * *", missed=missed, created_at=T0)
    assert await store.claim_slot(info.id, at(10, 30), started_at=at(10, 30), run_id="r-1")
    fire = Fire()
    sched = scheduler(ScheduleStore(db.sessions), fire, FakeClock(start=now), grace_s=3000)
    forgotten: list[Sequence[str]] = []

    async def forget(run_ids: Sequence[str]) -> None:
        forgotten.append(run_ids)
        raise RuntimeError("the checkpoints' store is down")  # logged; the slot is closed

    sched.forget_runs = forget
    report = await sched.start()
    await sched.wait_idle()
    assert (report.interrupted, report.retried, report.caught_up) == (1, 0, 0), why
    assert fire.calls == []
    assert forgotten == [["r-1"]]  # what was kept to resume its run is let go
    assert slots(await store.recent_slots(info.id, 5)) == [(at(10, 30), "failed", INTERRUPTED)]
    assert await sched.fire_due(info.id, at(10, 30)) == "duplicate"
    got = await store.get(info.id)
    assert got is not None and got.last_status == "failed" and got.consecutive_failures == 0
    await stop(sched)


async def test_a_later_due_slot_is_caught_up_instead_of_the_interrupted_one(
    db: Database, store: ScheduleStore, skill_id: int
) -> None:
    info = await make(store, skill_id, cron="*/30 * * * *", missed="catch-up", created_at=T0)
    assert await store.claim_slot(info.id, at(10, 0), started_at=at(10, 0))
    fire = Fire()
    sched = scheduler(ScheduleStore(db.sessions), fire, FakeClock(start=at(10, 40)))
    report = await sched.start()
    await sched.wait_idle()
    assert (report.interrupted, report.retried, report.caught_up) == (1, 0, 1)
    assert fire.calls == [(info.id, at(10, 30))]  # the latest, once
    assert slots(await store.recent_slots(info.id, 5)) == [
        (at(10, 30), "ok", None),
        (at(10, 0), "failed", INTERRUPTED),
    ]
    await stop(sched)


async def test_two_processes_starting_at_once_retry_a_slot_once(
    db: Database, store: ScheduleStore, skill_id: int
) -> None:
    # Two starts race over the same stranded slot: one conditional UPDATE wins.
    info = await make(store, skill_id, cron="30 * * * *", missed="catch-up", created_at=T0)
    assert await store.claim_slot(info.id, at(10, 30), started_at=at(10, 30))
    fires = [Fire(), Fire()]
    both = [
        scheduler(ScheduleStore(db.sessions), fire, FakeClock(start=at(10, 31))) for fire in fires
    ]
    reports = await asyncio.gather(*(sched.start() for sched in both))
    for sched in both:
        await sched.wait_idle()
    assert sum(r.retried for r in reports) == 1
    assert sum(len(f.calls) for f in fires) == 1
    [slot] = await store.recent_slots(info.id, 5)
    assert (slot.status, slot.attempt) == ("ok", 2)
    for sched in both:
        await stop(sched)


async def test_an_interrupted_one_shot_is_retried_then_done(
    db: Database, store: ScheduleStore, skill_id: int
) -> None:
    info = await make(store, skill_id, run_at=at(10), missed="catch-up", created_at=T0)
    assert await store.claim_slot(info.id, at(10), started_at=at(10))
    fire = Fire()
    sched = scheduler(ScheduleStore(db.sessions), fire, FakeClock(start=at(10, 5)))
    report = await sched.start()
    await sched.wait_idle()
    assert (report.retried, report.interrupted) == (1, 0)
    assert fire.calls == [(info.id, at(10))]
    assert slots(await store.recent_slots(info.id, 5)) == [(at(10), "ok", RETRIED)]
    got = await store.get(info.id)
    assert got is not None and not got.enabled and got.disabled_reason == DONE
    assert info.id not in sched.jobs()
    await stop(sched)


async def test_an_interrupted_one_shot_not_retried_says_so(
    db: Database, store: ScheduleStore, skill_id: int
) -> None:
    info = await make(store, skill_id, run_at=at(10), missed="skip", created_at=T0)
    assert await store.claim_slot(info.id, at(10), started_at=at(10))
    sched = scheduler(ScheduleStore(db.sessions), Fire(), FakeClock(start=at(10, 5)))
    assert (await sched.start()).interrupted == 1
    got = await store.get(info.id)
    assert got is not None and not got.enabled
    assert got.disabled_reason == ONE_SHOT_INTERRUPTED
    await stop(sched)


async def test_a_slot_due_while_the_last_run_goes_on_is_skipped(
    store: ScheduleStore, skill_id: int
) -> None:
    info = await make(store, skill_id, cron="30 * * * *")
    fire = Fire()
    fire.gate = asyncio.Event()
    sched = scheduler(store, fire, FakeClock(start=at(10, 30)))
    await sched.start()
    first = asyncio.ensure_future(sched.fire_due(info.id, at(9, 30)))
    await fire.called.wait()
    assert await sched.fire_due(info.id, at(10, 30)) == "skipped"
    fire.gate.set()
    assert await first == "fired"
    assert fire.calls == [(info.id, at(9, 30))]
    assert slots(await store.recent_slots(info.id, 5)) == [
        (at(10, 30), "skipped", OVERLAP),
        (at(9, 30), "ok", None),
    ]
    await stop(sched)


@pytest.mark.parametrize("staggered", [False, True], ids=["plain", "staggered"])
async def test_apscheduler_max_instances_refusal_is_recorded_as_skipped(
    store: WatchedStore, skill_id: int, staggered: bool
) -> None:
    # Why the cron from the real clock: APScheduler runs every slot due by the real
    # clock; with the last slot half a period ago and the next half a period ahead,
    # none is due but the ones the test makes due (with a fixed `17 * * * *` it failed
    # when run between :17 and :18; at :30, `0 * * * *` came out staggered and the
    # refused run time, given without its stagger, coalesced into the running slot).
    real_now = datetime.now(UTC)
    if staggered:  # top of an hour: fires its stagger after the slot
        cron = f"0 {(real_now.hour + 12) % 24} * * *"
    else:
        cron = f"{(real_now.minute + 30) % 60 or 1} * * * *"  # never top of the hour
    info = await make(store, skill_id, cron=cron)
    stagger = timedelta(seconds=info.stagger_s)
    assert (stagger > timedelta(0)) == staggered
    trigger = scheduling.parse_cron(cron, scheduling.zone("UTC"))
    [latest] = scheduling.last_fires(trigger, real_now - timedelta(days=2), real_now)
    fire = Fire()
    fire.gate = asyncio.Event()
    sched = scheduler(store, fire, FakeClock(start=latest + stagger + timedelta(seconds=30)))
    await sched.start()
    aps = sched.apscheduler
    assert aps is not None
    aps.modify_job(str(info.id), next_run_time=latest + stagger)
    await asyncio.wait_for(fire.called.wait(), 10)  # running, held at the gate
    # Due again while it runs (a past run time before the next fire: coalescing would
    # fold a later one into it): max_instances=1 refuses, and the refusal becomes a
    # row for the slot that run time stands for.
    again = latest + timedelta(seconds=30)
    aps.modify_job(str(info.id), next_run_time=again + stagger)
    await asyncio.wait_for(store.skipped.wait(), 10)
    fire.gate.set()
    await sched.wait_idle()
    assert fire.calls == [(info.id, latest)]
    assert slots(await store.recent_slots(info.id, 5)) == [
        (again, "skipped", OVERLAP),
        (latest, "ok", None),
    ]
    await stop(sched)


async def test_a_slot_started_past_its_grace_is_skipped_not_dropped(
    store: ScheduleStore, skill_id: int
) -> None:
    skip = await make(store, skill_id, cron="30 * * * *", missed="skip")
    catch_up = await make(store, skill_id, cron="45 * * * *", missed="catch-up")
    fire = Fire()
    sched = scheduler(store, fire, FakeClock(start=at(10, 56)))
    await sched.start()
    assert await sched.due(skip.id, at(10, 30)) == "skipped"  # 26 min late, past 10 min
    assert await sched.due(catch_up.id, at(10, 45)) == "fired"  # within the hour
    assert fire.calls == [(catch_up.id, at(10, 45))]
    assert slots(await store.recent_slots(skip.id, 5)) == [
        (at(10, 30), "skipped", "started 1560 s late, past the 600 s grace")
    ]
    await stop(sched)


async def test_stagger_shifts_the_fire_not_the_slot_across_dst(
    store: ScheduleStore, skill_id: int
) -> None:
    info = await make(store, skill_id, cron="0 9 * * *", timezone="Europe/Paris")
    assert info.stagger_s == scheduling.stagger_s(info.id, "0 9 * * *")
    stagger = timedelta(seconds=info.stagger_s)
    plain = await make(store, skill_id, cron="5 9 * * *", timezone="Europe/Paris")
    assert plain.stagger_s == 0
    fire = Fire()
    clock = FakeClock(start=datetime(2026, 3, 30, 7, 10, tzinfo=UTC))
    sched = scheduler(store, fire, clock)
    await sched.start()
    aps = sched.apscheduler
    assert aps is not None
    trigger = aps.get_job(str(info.id)).trigger
    # Paris moves to summer time on 2026-03-29: 09:00 is 08:00 UTC before, 07:00 after.
    before = trigger.get_next_fire_time(None, datetime(2026, 3, 28, tzinfo=UTC))
    after = trigger.get_next_fire_time(None, datetime(2026, 3, 30, tzinfo=UTC))
    assert before == datetime(2026, 3, 28, 8, 0, tzinfo=UTC) + stagger
    assert after == datetime(2026, 3, 30, 7, 0, tzinfo=UTC) + stagger
    assert (
        trigger.get_next_fire_time(before, before)
        == datetime(2026, 3, 29, 7, 0, tzinfo=UTC) + stagger
    )
    assert await sched.due(info.id, after) == "fired"
    assert fire.calls == [(info.id, datetime(2026, 3, 30, 7, 0, tzinfo=UTC))]
    plain_trigger = aps.get_job(str(plain.id)).trigger
    plain_next = plain_trigger.get_next_fire_time(None, datetime(2026, 3, 30, tzinfo=UTC))
    assert plain_next == datetime(2026, 3, 30, 9, 5, tzinfo=scheduling.zone("Europe/Paris"))
    await stop(sched)


async def test_a_wall_clock_time_is_one_slot_on_the_fall_back_day(
    store: ScheduleStore, skill_id: int
) -> None:
    # Berlin, 2026-10-25: 02:30 happens at 00:30 UTC (CEST) and again at 01:30 UTC (CET).
    first = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    info = await make(
        store,
        skill_id,
        cron="30 2 * * *",
        timezone="Europe/Berlin",
        missed="catch-up",
        created_at=datetime(2026, 10, 24, 12, tzinfo=UTC),
    )
    assert await store.claim_slot(info.id, first, started_at=first)
    await store.finish_slot(info.id, first, "ok", run_id="r1")
    fire = Fire()
    # Restarted five minutes after the second 02:30, within catch-up's grace.
    sched = scheduler(store, fire, FakeClock(start=datetime(2026, 10, 25, 1, 35, tzinfo=UTC)))
    report = await sched.start()
    await sched.wait_idle()
    assert (report.caught_up, report.skipped, fire.calls) == (0, 0, [])  # not a second charge
    aps = sched.apscheduler
    assert aps is not None
    trigger = aps.get_job(str(info.id)).trigger
    assert trigger.get_next_fire_time(first, first) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)
    await stop(sched)


async def test_a_wall_clock_time_the_spring_day_skips_is_caught_up_at_three(
    store: ScheduleStore, skill_id: int
) -> None:
    # Berlin, 2026-03-29: 02:30 does not exist; the clocks land at 03:00 (01:00 UTC).
    info = await make(
        store,
        skill_id,
        cron="30 2 * * *",
        timezone="Europe/Berlin",
        missed="catch-up",
        created_at=datetime(2026, 3, 28, 12, tzinfo=UTC),
    )
    fire = Fire()
    sched = scheduler(store, fire, FakeClock(start=datetime(2026, 3, 29, 1, 5, tzinfo=UTC)))
    assert (await sched.start()).caught_up == 1
    await sched.wait_idle()
    assert fire.calls == [(info.id, datetime(2026, 3, 29, 1, 0, tzinfo=UTC))]
    await stop(sched)


async def test_two_failures_warn_once_five_disable(store: ScheduleStore, skill_id: int) -> None:
    info = await make(store, skill_id, cron="17 * * * *")
    fire = Fire(SlotOutcome(status="failed", run_id="r", error="the channel is gone"))
    seen = Events()
    sched = scheduler(store, fire, FakeClock(start=at(12)), events=seen)
    await sched.start()
    for hour in range(1, 5):
        assert await sched.fire_due(info.id, at(hour, 17)) == "fired"
        expected = [(info.id, 2, "the channel is gone")] if hour >= 2 else []
        assert seen.failing == expected
    assert seen.disabled == []
    assert info.id in sched.jobs()
    assert await sched.fire_due(info.id, at(5, 17)) == "fired"
    assert len(seen.disabled) == 1
    schedule_id, reason, enabled = seen.disabled[0]
    assert schedule_id == info.id and not enabled
    assert "5 times in a row" in reason and "the channel is gone" in reason
    got = await store.get(info.id)
    assert got is not None and not got.enabled and got.disabled_reason == reason
    assert got.consecutive_failures == 5
    assert info.id not in sched.jobs()
    assert await sched.fire_due(info.id, at(6, 17)) == "gone"
    assert len(fire.calls) == 5
    await stop(sched)


async def test_a_success_resets_the_failure_run(store: ScheduleStore, skill_id: int) -> None:
    info = await make(store, skill_id, cron="17 * * * *")
    failed = SlotOutcome(status="failed", error="boom")
    fire = Fire(failed)
    seen = Events()
    sched = scheduler(store, fire, FakeClock(start=at(12)), events=seen)
    await sched.start()
    for hour, outcome in enumerate([failed, failed, SlotOutcome(status="ok"), failed], start=1):
        fire.outcome = outcome
        await sched.fire_due(info.id, at(hour, 17))
    assert seen.failing == [(info.id, 2, "boom")]
    got = await store.get(info.id)
    assert got is not None and got.consecutive_failures == 1 and got.enabled
    await stop(sched)


async def test_a_fire_that_raises_is_a_failed_slot(store: ScheduleStore, skill_id: int) -> None:
    info = await make(store, skill_id, cron="17 * * * *")
    fire = Fire()
    fire.raises = RuntimeError("a bug")
    sched = scheduler(store, fire, FakeClock(start=at(12)))
    await sched.start()
    assert await sched.fire_due(info.id, at(1, 17)) == "fired"
    [slot] = await store.recent_slots(info.id, 5)
    assert slot.status == "failed" and slot.reason is not None and "RuntimeError" in slot.reason
    assert "a bug" not in slot.reason  # the traceback goes to the log, not to members
    await stop(sched)


async def test_a_one_shot_is_disabled_after_it_fires(store: ScheduleStore, skill_id: int) -> None:
    when = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    info = await make(store, skill_id, run_at=when)
    fire = Fire()
    clock = FakeClock(start=datetime.now(UTC))
    sched = scheduler(store, fire, clock)
    await sched.start()
    assert sched.jobs() == {info.id: when}
    await clock.advance((when - clock.now()).total_seconds() + 1)
    assert await sched.due(info.id, when) == "fired"
    assert fire.calls == [(info.id, when)]
    got = await store.get(info.id)
    assert got is not None and not got.enabled and got.disabled_reason == DONE
    assert info.id not in sched.jobs()
    await stop(sched)


async def test_add_and_remove_keep_jobs_with_the_table(store: ScheduleStore, skill_id: int) -> None:
    clock = FakeClock(start=datetime.now(UTC))
    sched = scheduler(store, Fire(), clock)
    early = await make(store, skill_id, cron="15 9 * * *")
    # Before start: no job, the next run computed, and start() loads the row.
    nxt = await sched.add(early)
    assert nxt is not None and nxt > clock.now() and sched.jobs() == {}
    await sched.start()
    assert set(sched.jobs()) == {early.id}

    info = await make(store, skill_id, cron="0 9 * * *")
    nxt = await sched.add(info)
    assert nxt is not None and nxt == sched.next_run(info.id) == sched.jobs()[info.id]
    row = await store.get(info.id)
    assert row is not None and row.next_run_at == nxt
    assert nxt.minute * 60 + nxt.second == info.stagger_s

    assert await store.delete(info.id)
    assert await sched.remove(info.id)
    assert not await sched.remove(info.id)
    assert info.id not in sched.jobs()
    with pytest.raises(ScheduleNotFound):
        await sched.add(info)  # the row is gone: no job without a row
    past = await make(store, skill_id, run_at=clock.now() - timedelta(minutes=1))
    with pytest.raises(InvalidTime, match="has passed"):
        await sched.add(past)
    assert past.id not in sched.jobs()
    await stop(sched)


async def test_after_shutdown_nothing_fires(store: ScheduleStore, skill_id: int) -> None:
    info = await make(store, skill_id, cron="17 * * * *")
    fire = Fire()
    sched = scheduler(store, fire, FakeClock(start=at(12)))
    await sched.start()
    await stop(sched)
    assert await sched.fire_due(info.id, at(1, 17)) == "closed"
    assert await sched.due(info.id, at(1, 17)) == "closed"
    assert fire.calls == [] and sched.jobs() == {}
    with pytest.raises(RuntimeError, match="starts once"):
        await sched.start()


async def test_concurrent_slot_writes_queue_instead_of_failing(
    store: ScheduleStore, skill_id: int
) -> None:
    # 100 slots at once, as at the top of a busy minute: claims, skips and next-run
    # writes interleave on one SQLite file; none may fail with "database is locked".
    infos = [await make(store, skill_id, cron="17 * * * *") for _ in range(20)]
    base = at(9, 17)

    async def one(i: int) -> None:
        info = infos[i % len(infos)]
        slot = base + timedelta(hours=i)
        if i % 3 == 0:
            await store.record_skipped_many([(info.id, slot, "x"), (info.id, slot, "x")])
        elif i % 3 == 1:
            assert await store.claim_slot(info.id, slot, started_at=slot)
            await store.finish_slot(info.id, slot, "ok")
        else:
            await store.set_next_run(info.id, slot)

    await asyncio.gather(*(one(i) for i in range(100)))
    total = sum([len(await store.recent_slots(info.id, 100)) for info in infos])
    assert total == 34 + 33
