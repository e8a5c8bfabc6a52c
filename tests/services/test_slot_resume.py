"""A scheduled slot's retry resumes its interrupted run (issue 18), through the real app
(``build_app``: the SQL checkpoints, audit, budget and schedule store, on SQLite and
PostgreSQL), the real scheduler on a fake clock, a scripted model and a fake skill host
whose channel records the post and answers approval requests as told.

What a crash leaves is written as recovery leaves it (the slot ``running`` with its run's
id, that run closed ``interrupted`` in the audit, its last checkpoint); the SIGKILL
through a real ``coterie run`` is ``tests/chaos/test_sigkill_slot_resume.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from adapters.services.chat import ChatSurface
from adapters.storage.tables import AuditRun, AuditToolCall
from bot.app import App, build_app
from bot.settings import Settings
from executor.agent import Caller, Privilege
from executor.messages import Message, TextPart, ToolCallPart, ToolResultPart, Usage
from executor.ports import ApprovalDecision, ApprovalRequest, Checkpoint, Delivery
from executor.testing import FakeClock, RecordingDelivery, Reply, ScriptedModel, ScriptedTiers, call
from executor.tools.registry import ToolContext, tool
from personas.model import Persona
from skills.model import SkillSpec
from skills.scheduler import INTERRUPTED, RESUMED, RETRIED
from skills.schedules import ScheduleInfo, ScheduleStore
from skills.slots import Missed
from tests.storage.dbs import BACKENDS, pg_db, pg_url

__all__ = ["pg_db", "pg_url"]  # the PostgreSQL fixtures, for the backend parameter

GUILD, CHANNEL = "1", "55"
OWNER = Caller(user_id="100", display_name="owner", guild_id=GUILD)
# Why years ahead: APScheduler times its jobs by the real clock; a one-shot in the real
# past would fire at once.
SLOT = datetime(2036, 12, 2, 9, 30, tzinfo=UTC)
OLD = "interrupted-run"


class Channel(RecordingDelivery):
    """The schedule's channel: the post, and the approval requests (``answer``: what
    the owner presses; None: nobody answers in time)."""

    def __init__(self, answer: bool | None) -> None:
        super().__init__()
        self.answer = answer
        self.asked: list[ApprovalRequest] = []

    async def ask_approval(self, request: ApprovalRequest) -> ApprovalDecision:
        self.asked.append(request)
        if self.answer is None:
            return ApprovalDecision(approved=False, reason="no answer in time")
        return ApprovalDecision(approved=self.answer, reason="" if self.answer else "denied")


@dataclass
class Surface:
    channel: Channel

    async def history(self, source: Any, *, max_messages: int) -> list[Any]:
        return []

    async def open_thread(self, name: str, starter: str) -> str | None:
        return None

    async def delivery(self, persona: Persona) -> Delivery:
        return self.channel


@dataclass
class Host:
    """The skill host: the owner is a member, the channel takes posts."""

    answer: bool | None = True
    channels: list[Channel] = field(default_factory=list)

    async def member(self, guild_id: str, user_id: str) -> Caller | None:
        return OWNER if user_id == OWNER.user_id else None

    async def channel_surface(
        self, guild_id: str, channel_id: str, requester: Caller, *, footer: str | None = None
    ) -> ChatSurface:
        channel = Channel(self.answer)
        self.channels.append(channel)
        return Surface(channel)

    async def failing(self, schedule: ScheduleInfo, failures: int, error: str) -> None:
        return None

    async def disabled(self, schedule: ScheduleInfo, reason: str) -> None:
        return None


@dataclass
class World:
    app: App
    model: ScriptedModel
    clock: FakeClock
    host: Host
    saved: list[str]  # save_report's calls that did their work, by call id
    gate: asyncio.Event | None = None  # set: save_report waits on it
    entered: asyncio.Event = field(default_factory=asyncio.Event)  # save_report began


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file of the test's own, or the session's PostgreSQL database, emptied.

    Why a sync fixture: an async fixture cannot request another by getfixturevalue."""
    if request.param == "postgresql":
        request.getfixturevalue("pg_db")
        pg: str = request.getfixturevalue("pg_url")
        return pg
    return f"sqlite+aiosqlite:///{tmp_path / 'coterie.db'}"


@pytest.fixture
async def world(url: str) -> AsyncIterator[World]:
    model = ScriptedModel()
    clock = FakeClock(SLOT - timedelta(minutes=5))
    settings = Settings(_env_file=None, database_url=url, budget_default_usd=5.0)
    app = await build_app(settings, resolver=ScriptedTiers(model), clock=clock)
    world = World(app=app, model=model, clock=clock, host=Host(), saved=[])

    @tool
    async def save_report(title: str, ctx: ToolContext) -> str:
        """Save a report: it changes something (neither read-only nor idempotent).

        Args:
            title: the report's title
        """
        world.entered.set()
        if world.gate is not None:
            await world.gate.wait()
        world.saved.append(ctx.call_id)
        return f"saved {title}"

    app.tools.add(save_report)
    app.skill_service.host = world.host
    try:
        yield world
    finally:
        app.scheduler.shutdown()
        await app.scheduler.wait_idle()
        await app.close()


async def _schedule(w: World, *, missed: Missed = "catch-up") -> ScheduleInfo:
    admin = Caller(user_id="900", display_name="admin", privilege=Privilege.ADMIN, guild_id=GUILD)
    skill, _ = await w.app.skills.save(
        GUILD,
        "report",
        SkillSpec(prompt="Compute and save the weekly report", tools=("calculator", "save_report")),
        by=admin,
    )
    return await w.app.schedules.create(
        skill_id=skill.id,
        guild_id=GUILD,
        channel_id=CHANNEL,
        created_by=OWNER.user_id,
        run_at=SLOT,
        missed=missed,
    )


async def _crashed(
    w: World,
    info: ScheduleInfo,
    *,
    step: int = 1,
    pending: tuple[ToolCallPart, ...] = (),
    done: tuple[ToolResultPart, ...] = (),
    owner: str | None = None,
) -> None:
    """What a crash mid-run leaves once recovery has run: the slot claimed for run
    ``OLD`` (by the instance ``owner``), that run closed as interrupted, and its last
    checkpoint (None at step -1)."""
    claimer = ScheduleStore(w.app.db.sessions)
    claimer.owner = owner
    assert await claimer.claim_slot(info.id, SLOT, started_at=SLOT, run_id=OLD)
    async with w.app.db.sessions() as s, s.begin():
        s.add(
            AuditRun(
                run_id=OLD,
                trigger="schedule",
                user_id=OWNER.user_id,
                guild_id=GUILD,
                skill="report",
                status="interrupted",
                cost_micros=40,
            )
        )
    if step < 0:
        return
    messages: tuple[Message, ...] = (Message.user("Compute and save the weekly report"),)
    if step >= 1:
        messages += (Message(role="assistant", parts=(TextPart(text="On it."), *pending)),)
    await w.app.checkpoints.save(
        Checkpoint(
            run_id=OLD,
            step=step,
            messages=messages,
            usage=Usage(input_tokens=30, output_tokens=10, cost_micros=40, requests=1),
            caller=OWNER,
            trigger="schedule",
            agent="skill:report",
            tier="standard",
            persona="assistant",
            skill="report",
            pending=pending,
            done=done,
            metadata={
                "schedule_id": info.id,
                "slot_at": SLOT.isoformat(),
                "skill": "report",
                "skill_version": 1,
            },
        )
    )


async def _restart(w: World, minutes: float = 10) -> None:
    """A start within the grace: the scheduler settles the stranded slot."""
    await w.clock.advance(minutes * 60)
    await w.app.scheduler.start()
    await w.app.scheduler.wait_idle()
    await w.app.audit.flush()


async def _runs(w: World) -> list[AuditRun]:
    async with w.app.db.sessions() as s:
        return list((await s.scalars(select(AuditRun).order_by(AuditRun.started_at))).all())  # type: ignore[arg-type]


async def _tool_calls(w: World, run_id: str) -> list[str]:
    async with w.app.db.sessions() as s:
        rows = await s.scalars(
            select(AuditToolCall).where(AuditToolCall.run_id == run_id)  # type: ignore[arg-type]
        )
        return sorted(r.name for r in rows)


async def test_a_scheduled_slot_keeps_checkpoints_while_it_runs(world: World) -> None:
    w = world
    info = await _schedule(w)
    w.gate = asyncio.Event()
    save = call("save_report", title="weekly")
    w.model.push(
        Reply(tool_calls=[save], usage=Usage(output_tokens=5, cost_micros=20)),
        Reply(text="Saved.", usage=Usage(output_tokens=2, cost_micros=10)),
    )
    await w.clock.advance(300)
    firing = asyncio.ensure_future(w.app.scheduler.fire_due(info.id, SLOT))
    await w.entered.wait()
    [slot] = await w.app.schedules.recent_slots(info.id, 1)
    # The run is in save_report: its last completed step is in the database (saved
    # before the call started), under the run id the slot's claim recorded.
    record = await w.app.checkpoints.record(slot.run_id or "")
    assert record is not None and record.checkpoint is not None
    assert record.checkpoint.step == 1
    assert [c.name for c in record.checkpoint.pending] == ["save_report"]
    assert record.checkpoint.metadata["schedule_id"] == info.id
    w.gate.set()
    assert await firing == "fired"
    [slot] = await w.app.schedules.recent_slots(info.id, 1)
    assert (slot.status, slot.reason) == ("ok", None)


async def test_the_retry_resumes_from_the_last_step_and_no_call_runs_twice(
    world: World,
) -> None:
    w = world
    info = await _schedule(w)
    calc = ToolCallPart(id="c1", name="calculator", arguments={"expression": "6 * 7"})
    saved = ToolCallPart(id="c2", name="save_report", arguments={"title": "draft"})
    cut = ToolCallPart(id="c3", name="save_report", arguments={"title": "weekly"})
    kept = ToolResultPart(tool_call_id="c2", name="save_report", content="saved draft")
    await _crashed(w, info, pending=(calc, saved, cut), done=(kept,))
    w.model.push(Reply(text="All done: 42.", usage=Usage(output_tokens=4, cost_micros=9)))

    await _restart(w)

    # One model call, from where the run stood: the conversation, then each call's
    # result: the calculator run again (read-only), the finished save reused, the
    # unfinished one asked of the owner and run once on approval.
    [sent] = w.model.requests
    results = {r.tool_call_id: r.content for m in sent.messages for r in m.tool_results}
    assert results == {"c1": "42", "c2": "saved draft", "c3": "saved weekly"}
    assert sent.messages[1].text == "Compute and save the weekly report"
    assert w.saved == ["c3"]
    [channel] = w.host.channels
    assert [(a.tool, a.call_id, a.again) for a in channel.asked] == [("save_report", "c3", True)]
    assert channel.result is not None and channel.result.output == "All done: 42."

    [slot] = await w.app.schedules.recent_slots(info.id, 1)
    assert (slot.status, slot.attempt) == ("ok", 2)
    assert slot.reason == RESUMED.format(run_id=OLD)
    old, new = await _runs(w)
    assert (old.run_id, old.status) == (OLD, "interrupted")
    assert (new.run_id, new.status, new.resumed_from) == (slot.run_id, "ok", OLD)
    assert (new.trigger, new.skill, new.skill_version) == ("schedule", "report", 1)
    assert await _tool_calls(w, new.run_id) == ["calculator", "save_report"]
    # Charged its own response; the interrupted run's charges were recovery's.
    assert new.cost_micros == 9
    assert (await w.app.budget.status(OWNER.user_id)).spent_micros == 9
    # Taken once, linked to the run that resumed it; the resumed run keeps none.
    record = await w.app.checkpoints.record(OLD)
    assert record is not None and (record.status, record.checkpoint) == ("resumed", None)
    assert await w.app.checkpoints.record(new.run_id) is None
    done = await w.app.schedules.get(info.id)
    assert done is not None and not done.enabled  # a one-shot, done


async def test_a_call_nobody_approves_again_is_not_run_and_the_slot_says_so(
    world: World,
) -> None:
    w = world
    w.host.answer = None  # the owner is not there to press
    info = await _schedule(w)
    cut = ToolCallPart(id="c1", name="save_report", arguments={"title": "weekly"})
    await _crashed(w, info, pending=(cut,))
    w.model.push(Reply(text="Could not save it.", usage=Usage(output_tokens=4, cost_micros=9)))

    await _restart(w)

    assert w.saved == []  # it may have run before the restart: not again, unasked
    [sent] = w.model.requests
    [result] = [r for m in sent.messages for r in m.tool_results]
    assert result.is_error and result.content.startswith("denied: no answer in time")
    [slot] = await w.app.schedules.recent_slots(info.id, 1)
    assert (slot.status, slot.attempt) == ("ok", 2)
    assert slot.reason == (
        f"{RESUMED.format(run_id=OLD)}; "
        "not run again, as it may have run before the restart: save_report"
    )
    _, new = await _runs(w)
    assert new.resumed_from == OLD and new.status == "ok"


async def test_without_a_checkpoint_past_the_first_call_the_retry_starts_over(
    world: World,
) -> None:
    w = world
    info = await _schedule(w)
    await _crashed(w, info, step=0)  # it died before the model answered
    w.model.push(Reply(text="Fresh report.", usage=Usage(output_tokens=3, cost_micros=7)))

    await _restart(w)

    [sent] = w.model.requests
    assert sent.messages[-1].text.endswith("Compute and save the weekly report")
    [slot] = await w.app.schedules.recent_slots(info.id, 1)
    assert (slot.status, slot.attempt, slot.reason) == ("ok", 2, RETRIED)
    _, new = await _runs(w)
    assert (new.run_id, new.resumed_from, new.status) == (slot.run_id, None, "ok")
    record = await w.app.checkpoints.record(OLD)
    assert record is not None and record.checkpoint is None  # taken: never resumed later
    # A retry keeps no checkpoint of its own: it is not retried again.
    assert await w.app.checkpoints.record(new.run_id) is None


async def test_with_no_checkpoint_at_all_the_retry_starts_over(world: World) -> None:
    w = world
    info = await _schedule(w)
    await _crashed(w, info, step=-1)
    w.model.push(Reply(text="Fresh report.", usage=Usage(output_tokens=3, cost_micros=7)))
    await _restart(w)
    [slot] = await w.app.schedules.recent_slots(info.id, 1)
    assert (slot.status, slot.attempt, slot.reason) == ("ok", 2, RETRIED)
    assert len(w.model.requests) == 1


async def test_chat_offers_leave_a_slots_checkpoint_to_its_retry(world: World) -> None:
    w = world
    info = await _schedule(w)
    calc = ToolCallPart(id="c1", name="calculator", arguments={"expression": "1 + 1"})
    await _crashed(w, info, pending=(calc,))
    # Recovery hands every interrupted run to the offers first: not a member's chat,
    # so not offered, and not forgotten either.

    class NoHost:
        async def post_offer(self, offer: Any) -> tuple[str, str] | None:
            raise AssertionError("a scheduled run is never offered")

        async def close_offer(self, channel_id: str, message_id: str, note: str) -> None:
            return None

        async def close_question(
            self, channel_id: str, message_id: str, approval_id: str, note: str
        ) -> None:
            return None

    w.app.resume.host = NoHost()
    assert await w.app.resume.offer_interrupted([OLD]) == 0
    record = await w.app.checkpoints.record(OLD)
    assert record is not None and record.status is None and record.checkpoint is not None
    w.model.push(Reply(text="2.", usage=Usage(output_tokens=1, cost_micros=3)))

    await _restart(w)

    [slot] = await w.app.schedules.recent_slots(info.id, 1)
    assert slot.reason == RESUMED.format(run_id=OLD)
    assert w.host.channels[0].asked == []  # the calculator ran again, unasked


async def test_a_slot_closed_instead_of_retried_forgets_its_checkpoint(world: World) -> None:
    w = world
    info = await _schedule(w, missed="skip")
    calc = ToolCallPart(id="c1", name="calculator", arguments={"expression": "1 + 1"})
    await _crashed(w, info, pending=(calc,))
    await _restart(w)
    assert w.model.requests == []
    [slot] = await w.app.schedules.recent_slots(info.id, 1)
    assert (slot.status, slot.reason) == ("failed", INTERRUPTED)
    assert await w.app.checkpoints.record(OLD) is None


async def test_the_leader_resumes_a_slot_a_dead_instance_left(world: World) -> None:
    """Several processes: the scheduler's leader, already running, settles the slot of
    an instance that died since (a survivor reaped it and closed its run): the same
    retry, resumed from the same checkpoint, now owned by the leader."""
    w = world
    w.app.schedules.owner = "leader"
    info = await _schedule(w)
    await w.app.scheduler.start()  # leading; nothing stranded yet
    cut = ToolCallPart(id="c1", name="save_report", arguments={"title": "weekly"})
    await _crashed(w, info, pending=(cut,), owner="dead")  # "dead" has no instance row
    w.model.push(Reply(text="Saved.", usage=Usage(output_tokens=2, cost_micros=5)))
    await w.clock.advance(600)

    report = await w.app.scheduler.settle_stranded()
    await w.app.scheduler.wait_idle()
    await w.app.audit.flush()

    assert (report.retried, report.interrupted) == (1, 0)
    assert w.saved == ["c1"]  # asked of the owner, approved, run once
    [slot] = await w.app.schedules.recent_slots(info.id, 1)
    assert (slot.status, slot.attempt, slot.owner) == ("ok", 2, "leader")
    assert slot.reason == RESUMED.format(run_id=OLD)
    _, new = await _runs(w)
    assert (new.run_id, new.resumed_from) == (slot.run_id, OLD)
