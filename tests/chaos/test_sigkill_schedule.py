"""A scheduled slot survives SIGKILL (issue 20): a real scheduler process is killed at
the slot's due moment, once after the slot was claimed and before ``fire`` (the model
never reached) and once inside the run. Under ``missed: catch-up`` the next process
runs the slot again, once, within the grace; a retry killed too is failed for good,
and no later process runs it a third time."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from adapters.storage.db import Database
from skills.scheduler import INTERRUPTED_AGAIN, RETRIED
from skills.schedules import ScheduleStore, SlotInfo
from skills.tables import Schedule, Skill

pytestmark = pytest.mark.chaos

ROOT = Path(__file__).parents[2]
SLOT = datetime(2036, 1, 1, 9, 30, tzinfo=UTC)
# Why yearly on 1 January in 2036: APScheduler times jobs by the real clock, which
# never reaches this schedule's next slot while the test runs.
CRON = "30 9 1 1 *"
BEFORE = SLOT - timedelta(seconds=1)  # the first process starts just before the slot


async def _schedule(db: Database) -> int:
    async with db.sessions() as session, session.begin():
        skill = Skill(guild_id="1", name="digest", owner_id="100")
        session.add(skill)
        await session.flush()
        assert skill.id is not None
        skill_id = skill.id
    store = ScheduleStore(db.sessions)
    info = await store.create(
        skill_id=skill_id,
        guild_id="1",
        channel_id="55",
        created_by="100",
        cron=CRON,
        missed="catch-up",
    )
    async with db.sessions() as session, session.begin():
        # Created before the slot, so the slot is the only one it has.
        await session.execute(
            update(Schedule)
            .where(Schedule.id == info.id)  # type: ignore[arg-type]
            .values(created_at=SLOT - timedelta(hours=1))
        )
    return info.id


async def _life(
    db: Database, schedule_id: int, now: datetime, due: datetime | None, mode: str, kill_on: str
) -> list[str]:
    """One scheduler process: run it until it prints a line starting with ``kill_on``
    and SIGKILL it there (or, with ``kill_on`` empty, until it exits); its lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COTERIE_", "DATABASE_URL"))}
    env.update(DATABASE_URL=db.url.render_as_string(hide_password=False), PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.chaos.schedule_worker",
        str(schedule_id),
        now.isoformat(),
        due.isoformat() if due is not None else "-",
        mode,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        while True:
            raw = await asyncio.wait_for(proc.stdout.readline(), 60)
            if not raw:
                break
            lines.append(raw.decode().strip())
            if kill_on and lines[-1].startswith(kill_on):
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        if proc.returncode is None and not kill_on:
            await asyncio.wait_for(proc.wait(), 60)
        _, err = await proc.communicate()
    expected = -signal.SIGKILL if kill_on else 0
    assert proc.returncode == expected, (lines, err.decode()[-2000:])
    return lines


def _report(lines: list[str]) -> dict[str, Any]:
    [started] = [line for line in lines if line.startswith("started ")]
    report: dict[str, Any] = json.loads(started.removeprefix("started "))
    return report


async def _slot(db: Database, schedule_id: int) -> SlotInfo:
    [slot] = await ScheduleStore(db.sessions).recent_slots(schedule_id, 5)
    return slot


@pytest.mark.parametrize(("mode", "kill_on"), [("after-claim", "claimed"), ("in-run", "fired")])
async def test_a_slot_killed_at_its_due_moment_runs_again_once(
    sqlite_db: Database, mode: str, kill_on: str
) -> None:
    schedule_id = await _schedule(sqlite_db)
    await _life(sqlite_db, schedule_id, BEFORE, SLOT, mode, kill_on)
    left = await _slot(sqlite_db, schedule_id)
    assert (left.status, left.attempt) == ("running", 1)  # what the kill left

    lines = await _life(sqlite_db, schedule_id, SLOT + timedelta(minutes=2), None, "finish", "")
    assert _report(lines)["retried"] == 1
    assert f"fired {SLOT.isoformat()}" in lines
    slot = await _slot(sqlite_db, schedule_id)
    assert (slot.status, slot.attempt, slot.reason) == ("ok", 2, RETRIED)

    # And a later process has nothing left to do with it.
    lines = await _life(sqlite_db, schedule_id, SLOT + timedelta(minutes=3), None, "finish", "")
    assert not [line for line in lines if line.startswith("fired")]
    assert (await _slot(sqlite_db, schedule_id)).status == "ok"


async def test_a_retry_killed_too_is_failed_for_good(sqlite_db: Database) -> None:
    schedule_id = await _schedule(sqlite_db)
    await _life(sqlite_db, schedule_id, BEFORE, SLOT, "in-run", "fired")
    await _life(sqlite_db, schedule_id, SLOT + timedelta(minutes=1), None, "in-run", "fired")
    left = await _slot(sqlite_db, schedule_id)
    assert (left.status, left.attempt) == ("running", 2)

    lines = await _life(sqlite_db, schedule_id, SLOT + timedelta(minutes=2), None, "finish", "")
    report = _report(lines)
    assert (report["retried"], report["interrupted"], report["caught_up"]) == (0, 1, 0)
    assert not [line for line in lines if line.startswith("fired")]
    slot = await _slot(sqlite_db, schedule_id)
    assert (slot.status, slot.attempt, slot.reason) == ("failed", 2, INTERRUPTED_AGAIN)
