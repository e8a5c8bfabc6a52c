"""``SqlCheckpoints`` on SQLite and PostgreSQL: a checkpoint comes back as it was saved
(conversation, usage, pending calls, the calls that finished, who and where); only the
runs ``keep`` accepts cost a write; a run that ended leaves no row; an offer is decided
once, by its member, before it expires; start-up pruning never touches a run that is
still running."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from adapters.storage.checkpoints import DECIDED_KEPT_FOR, SqlCheckpoints
from adapters.storage.db import Database
from adapters.storage.tables import AuditRun, RunCheckpoint
from executor.agent import Caller, Privilege
from executor.messages import ImagePart, Message, ToolCallPart, ToolResultPart, Usage
from executor.ports import Checkpoint
from executor.testing import FakeClock
from skills.tables import Schedule, ScheduleSlot, Skill

NOW = datetime(2031, 5, 1, 12, 0, tzinfo=UTC)
ALICE = Caller(
    user_id="100",
    display_name="alice",
    privilege=Privilege.MODERATOR,
    guild_id="1",
    channel_id="55",
    roles=("7",),
)
CALL = ToolCallPart(id="call_9", name="write", arguments={"text": "héllo", "n": [1, 2]})


def _checkpoint(run_id: str = "r1", step: int = 0, **changes: object) -> Checkpoint:
    fields: dict[str, object] = {
        "run_id": run_id,
        "step": step,
        "messages": (
            Message.user("what is new?", name="alice", images=(ImagePart(url="https://x/y.png"),)),
        ),
        "usage": Usage(input_tokens=3, output_tokens=2, cost_micros=40, requests=1),
        "caller": ALICE,
        "trigger": "chat",
        "agent": "researcher",
        "tier": "standard",
        "persona": "researcher",
        "metadata": {"thread_id": "77", "persona_source": "prefix"},
    }
    fields.update(changes)
    return Checkpoint(**fields)  # type: ignore[arg-type]


async def _rows(db: Database) -> int:
    async with db.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(RunCheckpoint)) or 0)


async def _audit(db: Database, run_id: str, status: str) -> None:
    async with db.sessions() as s, s.begin():
        s.add(AuditRun(run_id=run_id, trigger="chat", user_id="100", status=status))


async def test_a_checkpoint_comes_back_as_it_was_saved(db: Database) -> None:
    store = SqlCheckpoints(db.sessions, clock=FakeClock(start=NOW))
    await store.save(_checkpoint(step=0))
    answer = Message(role="assistant", parts=(CALL,))
    later = _checkpoint(
        step=1,
        messages=(*_checkpoint().messages, answer),
        usage=Usage(input_tokens=9, output_tokens=4, cost_micros=90, requests=2),
        pending=(CALL,),
    )
    await store.save(later)
    result = ToolResultPart(tool_call_id="call_9", name="write", content="wrote", is_error=False)
    await store.tool_done("r1", result)

    record = await store.record("r1")
    assert record is not None and record.status is None and record.user_id == "100"
    assert record.checkpoint == dataclasses.replace(later, done=(result,))


async def test_only_kept_runs_are_written_and_an_ended_run_leaves_no_row(db: Database) -> None:
    store = SqlCheckpoints(db.sessions, keep=lambda c: c.trigger == "chat")
    await store.save(_checkpoint("cli-run", trigger="cli"))
    await store.tool_done("cli-run", ToolResultPart(tool_call_id="c", name="w", content="x"))
    assert await _rows(db) == 0

    await store.save(_checkpoint("a"))
    await store.save(_checkpoint("b"))
    assert await _rows(db) == 2
    await store.drop("a")
    assert await _rows(db) == 2  # written with the next write, not at once
    await store.save(_checkpoint("b", step=1))
    assert await _rows(db) == 1
    await store.drop("b")
    await store.close()
    assert await _rows(db) == 0


async def test_an_offer_is_decided_once_by_its_member_before_it_expires(db: Database) -> None:
    store = SqlCheckpoints(db.sessions)
    for run_id in ("r1", "r2", "r3"):
        await store.save(_checkpoint(run_id))
    found = await store.interrupted(["r3", "r1", "nope"])
    assert [c.run_id for c in found] == ["r3", "r1"]

    until = NOW + timedelta(hours=6)
    for run_id in ("r1", "r2", "r3"):
        await store.offered(run_id, expires_at=until)
        await store.posted(run_id, channel_id="77", message_id="9" + run_id[1])
    assert await store.interrupted(["r1"]) == []  # offered: never twice

    # Not the member's, or too late: nothing happens.
    assert await store.decide("r1", user_id="200", decision="resumed", now=NOW) is None
    assert await store.decide("r1", user_id="100", decision="resumed", now=until) is None
    claimed = await store.decide("r1", user_id="100", decision="resumed", now=NOW, resumed_as="r1b")
    assert claimed is not None and claimed.messages == _checkpoint().messages
    assert await store.decide("r1", user_id="100", decision="discarded", now=NOW) is None
    record = await store.record("r1")
    assert record is not None and record.status == "resumed" and record.checkpoint is None

    assert await store.decide("r2", user_id="100", decision="discarded", now=NOW) is not None
    assert await store.expire(until) == [("77", "93")]  # r3
    record = await store.record("r3")
    assert record is not None and record.status == "expired" and record.checkpoint is None


async def test_pruning_keeps_running_and_interrupted_runs(db: Database) -> None:
    store = SqlCheckpoints(db.sessions, clock=FakeClock(start=NOW))
    for run_id, status in (("live", "running"), ("cut", "interrupted"), ("done", "ok")):
        await _audit(db, run_id, status)
        await store.save(_checkpoint(run_id))
    await store.save(_checkpoint("old"))
    await store.offered("old", expires_at=NOW)
    await store.expire(NOW)

    assert await store.prune(NOW) == 1  # the run that ended
    assert await store.record("done") is None
    assert await store.record("live") is not None and await store.record("cut") is not None
    assert await store.record("old") is not None  # decided, still within its week
    # A week on: the old decision, and the interrupted run nobody offered (the process
    # that closed it died first); never the running one.
    assert await store.prune(NOW + DECIDED_KEPT_FOR + timedelta(seconds=1)) == 2
    assert await store.record("old") is None and await store.record("cut") is None
    assert await store.record("live") is not None


async def test_pruning_keeps_the_run_of_a_slot_a_drain_left_running(db: Database) -> None:
    """A drain closes a slot's run (cancelled) and leaves the slot running: its retry
    resumes the run from this row, so prune keeps it until the slot is settled."""
    store = SqlCheckpoints(db.sessions, clock=FakeClock(start=NOW))
    await _audit(db, "slot-run", "cancelled")
    await store.save(_checkpoint("slot-run", step=1, trigger="schedule"))
    async with db.sessions() as s, s.begin():
        skill = Skill(guild_id="1", name="digest")
        s.add(skill)
        await s.flush()
        assert skill.id is not None
        schedule = Schedule(skill_id=skill.id, channel_id="55", created_by="100", cron="0 9 * * *")
        s.add(schedule)
        await s.flush()
        assert schedule.id is not None
        slot = ScheduleSlot(
            schedule_id=schedule.id, slot_at=NOW, status="running", run_id="slot-run"
        )
        s.add(slot)
    assert await store.prune(NOW) == 0
    assert await store.record("slot-run") is not None
    async with db.sessions() as s, s.begin():
        found = await s.get(ScheduleSlot, slot.id)
        assert found is not None
        found.status = "failed"  # settled without its retry
    assert await store.prune(NOW) == 1
    assert await store.record("slot-run") is None


async def test_forget_and_delete_user_data(db: Database) -> None:
    store = SqlCheckpoints(db.sessions)
    await store.save(_checkpoint("r1"))
    await store.save(_checkpoint("r2"))
    await store.save(_checkpoint("r3", caller=Caller(user_id="300")))
    await store.offered("r2", expires_at=NOW)
    assert await store.forget(["r1", "r2"]) == 1  # an offered one stays
    assert await store.delete_user_data("100") == 1
    assert await store.record("r2") is None and await store.record("r3") is not None
