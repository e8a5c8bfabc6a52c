"""The process the scheduler SIGKILL test kills: coterie's ``SkillScheduler`` on the
real schedule store over ``DATABASE_URL`` (a fake clock at ``NOW``), whose fire says
``fired`` and answers ok, unless told to hang where the kill should land.

Usage: ``python -m tests.chaos.schedule_worker SCHEDULE_ID NOW DUE MODE``: ``DUE`` is the
slot (ISO 8601) that comes due once the scheduler started at ``NOW`` (the clock moves
to it), or ``-`` for none; ``MODE``
is ``after-claim`` (hang once the slot is claimed, before ``fire``: the model never
reached), ``in-run`` (hang inside ``fire``: the run going) or ``finish`` (run to the
end, print ``idle`` and exit). Each step is one line on stdout; the start report is a
line ``started {json}``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from datetime import datetime

from adapters.storage.db import Database
from executor.testing import FakeClock
from skills.scheduler import SkillScheduler
from skills.schedules import ScheduleInfo, ScheduleStore
from skills.slots import SlotOutcome, SlotRun


def say(line: str) -> None:
    print(line, flush=True)


async def forever() -> None:
    await asyncio.Event().wait()


class HangAfterClaim(ScheduleStore):
    async def claim_slot(
        self,
        schedule_id: int,
        slot_at: datetime,
        *,
        started_at: datetime,
        run_id: str | None = None,
    ) -> bool:
        claimed = await super().claim_slot(
            schedule_id, slot_at, started_at=started_at, run_id=run_id
        )
        say(f"claimed {claimed}")
        await forever()
        return claimed


async def main(schedule_id: int, now: datetime, due: datetime | None, mode: str) -> None:
    db = Database.open(os.environ["DATABASE_URL"])
    store = HangAfterClaim(db.sessions) if mode == "after-claim" else ScheduleStore(db.sessions)

    async def fire(info: ScheduleInfo, slot_at: datetime, run: SlotRun) -> SlotOutcome:
        say(f"fired {slot_at.isoformat()}")
        if mode == "in-run":
            await forever()
        return SlotOutcome(status="ok", run_id=f"run-{os.getpid()}")

    clock = FakeClock(start=now)
    scheduler = SkillScheduler(store, fire, clock=clock)
    report = await scheduler.start()
    say("started " + json.dumps(dataclasses.asdict(report)))
    if due is not None:
        # The slot comes due (as APScheduler calls the job, on the fake clock).
        await clock.advance((due - clock.now()).total_seconds())
        await scheduler.due(schedule_id, due)
    await scheduler.wait_idle()
    say("idle")
    scheduler.shutdown()
    await db.close()


if __name__ == "__main__":
    sid, now, due, mode = sys.argv[1:5]
    asyncio.run(
        main(
            int(sid),
            datetime.fromisoformat(now),
            None if due == "-" else datetime.fromisoformat(due),
            mode,
        )
    )
