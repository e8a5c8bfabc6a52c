"""A scheduled slot resumes after SIGKILL (issue 18): a real ``coterie run``
(``tests/chaos/resume_worker.py``: the real app against the fake Discord and a loopback
model, with ``save_report``, a tool that changes something) fires a one-shot skill
under ``missed: catch-up``; its run computes with the calculator, then starts saving,
and is SIGKILLed in the save. The next process retries the slot within the grace and
resumes the run from its last completed step instead of running the skill again: the
calculator does not run again, the save that may have run is asked of the schedule's
owner in its channel (approval buttons), and on approval it runs once; the post
completes once; the slot, the audit and the log say it resumed; the ledger equals what
every response cost. A resumed slot killed too is not resumed again: it is failed. A
slot whose process died after its answer was posted and before the slot was closed is
closed ok by the next process, not run (nor posted) again."""

from __future__ import annotations

import signal
import sqlite3
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.storage.db import Database
from executor.agent import Caller, Privilege
from executor.tools.builtin import default_registry
from executor.tools.registry import tool
from personas.markdown import load_builtins
from personas.store import PersonaStore
from skills.model import SkillSpec
from skills.scheduler import ANSWERED, DONE, INTERRUPTED_AGAIN, RESUMED
from skills.schedules import ScheduleStore
from skills.store import SkillStore
from tests.chaos.test_sigkill_resume import (
    ANSWER,
    ScriptedLoopback,
    _buttons,
    _db,
    _env,
    _has_buttons,
    _life,
    _sigkill,
)
from tests.fakediscord import FakeDiscord
from tests.lifecycle.conftest import Proc, query

pytestmark = pytest.mark.chaos


async def _one_shot(tmp_path: Path, fake: FakeDiscord) -> int:
    """A migrated database with alice's skill ``report`` (the calculator, then
    ``save_report``) scheduled once, a few seconds from now, in #general (as
    ``/skill save`` and ``/skill schedule missed:catch-up`` would have left it)."""

    @tool
    def save_report(title: str) -> str:
        """Save a report (the worker's own; only its name is checked here).

        Args:
            title: the report's title
        """
        return title

    db_path = _db(tmp_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    db = Database.open(f"sqlite+aiosqlite:///{db_path}")
    try:
        await db.upgrade()
        tools = default_registry()
        tools.add(save_report)
        skills = SkillStore(
            db.sessions,
            tools=tools,
            tiers=("fast", "standard", "smart"),
            personas=PersonaStore(db.sessions, load_builtins(), tools=tools),
        )
        guild = str(fake.guild.id)
        alice = Caller(
            user_id=str(fake.user("alice")["id"]),
            display_name="alice",
            privilege=Privilege.USER,
            guild_id=guild,
        )
        skill, _ = await skills.save(
            guild,
            "report",
            SkillSpec(
                prompt="compute and save the weekly report",
                tools=("calculator", "save_report"),
            ),
            by=alice,
        )
        info = await ScheduleStore(db.sessions).create(
            skill_id=skill.id,
            guild_id=guild,
            channel_id=str(fake.guild.channel_id("general")),
            created_by=alice.user_id,
            run_at=datetime.now(UTC) + timedelta(seconds=3),
            missed="catch-up",
        )
        return info.id
    finally:
        await db.close()


async def _killed_in_the_save(
    fake: FakeDiscord, model: ScriptedLoopback, lives: list[Proc], env: dict[str, str], cwd: Path
) -> int:
    """Life 1: the slot fires (on time, or caught up at start); its run computes, then
    starts saving; SIGKILL while it saves. The schedule's id."""
    schedule_id = await _one_shot(cwd, fake)
    first = await _life(lives, env, cwd)
    await model.held.wait()
    await _sigkill(first)
    model.release()
    assert len(model.completed) == 2 and model.started == Counter({"call_save": 1})
    return schedule_id


async def _asked_again(fake: FakeDiscord, life: Proc, since: int) -> Any:
    """The question to the schedule's owner, in its channel, about the save that may
    have run; pressed Approve by alice once its buttons listen."""
    general = fake.guild.channel_id("general")
    ask = await fake.wait_for_call(
        "POST", rf"/channels/{general}/messages", _has_buttons, since=since, timeout=30
    )
    alice = str(fake.user("alice")["id"])
    assert ask.json["content"].startswith(f"<@{alice}> A restart interrupted the tool")
    assert "save_report" in ask.json["content"] and "may have run already" in ask.json["content"]
    await life.wait_for(r"asked member \d+ to approve save_report")
    return ask


def _answers(fake: FakeDiscord) -> int:
    """Posts in #general that show the finished answer (its final edit counts once)."""
    general = fake.guild.channel_id("general")
    return sum(1 for m in fake.history(general) if ANSWER in str(m.get("content") or ""))


async def test_a_killed_slot_resumes_from_its_last_step_once(
    fake_discord: FakeDiscord, model: ScriptedLoopback, lives: list[Proc], tmp_path: Path
) -> None:
    fake, env = fake_discord, _env(tmp_path, fake_discord, model)
    schedule_id = await _killed_in_the_save(fake, model, lives, env, tmp_path)
    db = _db(tmp_path)
    [(first_run, status)] = query(db, "SELECT run_id, status FROM schedule_slots")
    assert status == "running"  # what the kill left, with the run the claim named

    since = len(fake.calls)
    second = await _life(lives, env, tmp_path)
    ask = await _asked_again(fake, second, since)
    await fake.dispatch_component(_buttons(ask)["Approve"], int(ask.response["id"]), user="alice")
    line = await second.wait_for(r"schedule slot.*resumed_from=", timeout=30)
    assert f"resumed_from={first_run}" in line and "outcome=ok" in line and "attempt=2" in line

    second.signal(signal.SIGTERM)
    assert await second.exit_code() == 0
    assert _answers(fake) == 1  # the post completed once
    runs = query(db, "SELECT run_id, status, resumed_from FROM audit_runs ORDER BY started_at")
    assert [(r[1], r[2]) for r in runs] == [("interrupted", None), ("ok", first_run)]
    assert runs[0][0] == first_run
    [slot] = query(db, "SELECT status, attempt, run_id, reason FROM schedule_slots")
    assert slot == ("ok", 2, runs[1][0], RESUMED.format(run_id=first_run))
    [(enabled,)] = query(db, "SELECT enabled FROM schedules WHERE id = ?", schedule_id)
    assert not enabled  # a one-shot, done
    # Each tool call ran once: the calculator in the first run, the save in the second
    # (its first start was cut off before it did its work).
    calls = query(db, "SELECT call_id, run_id FROM audit_tool_calls ORDER BY id")
    assert calls == [("call_calc", runs[0][0]), ("call_save", runs[1][0])]
    assert model.finished == Counter({"call_save": 1})
    # The ledger is what every response cost, across both runs, to the micro-dollar.
    [(charged,)] = query(db, "SELECT sum(amount_micros) FROM budget_ledger")
    assert len(model.completed) == 3 and charged == sum(model.completed)
    [(audited,)] = query(db, "SELECT sum(cost_micros) FROM audit_runs")
    assert audited == charged
    assert query(db, "SELECT count(*) FROM budget_reservations") == [(0,)]
    assert query(db, "SELECT offer, state FROM run_checkpoints") == [("resumed", "")]
    assert fake.unknown_calls == []


async def test_a_resumed_slot_killed_again_is_not_resumed_again(
    fake_discord: FakeDiscord, model: ScriptedLoopback, lives: list[Proc], tmp_path: Path
) -> None:
    fake, env = fake_discord, _env(tmp_path, fake_discord, model)
    await _killed_in_the_save(fake, model, lives, env, tmp_path)
    since = len(fake.calls)
    second = await _life(lives, env, tmp_path)
    ask = await _asked_again(fake, second, since)
    model.hold_again()
    await fake.dispatch_component(_buttons(ask)["Approve"], int(ask.response["id"]), user="alice")
    await model.held.wait()  # the resumed run is in the save again: kill it there
    await _sigkill(second)
    model.release()

    since = len(fake.calls)
    third = await _life(lives, env, tmp_path)
    await third.wait_for(r"scheduler started: .* 1 interrupted, 0 retried")
    third.signal(signal.SIGTERM)
    assert await third.exit_code() == 0
    assert not fake.find_calls("POST", r"/channels/{c}/messages", _has_buttons, since=since)
    db = _db(tmp_path)
    statuses = query(
        db, "SELECT status, resumed_from IS NOT NULL FROM audit_runs ORDER BY started_at"
    )
    assert statuses == [("interrupted", 0), ("interrupted", 1)]
    [slot] = query(db, "SELECT status, attempt, reason FROM schedule_slots")
    assert slot == ("failed", 2, INTERRUPTED_AGAIN)
    assert model.finished == Counter()  # the save never did its work twice (nor once)
    [(charged,)] = query(db, "SELECT sum(amount_micros) FROM budget_ledger")
    assert charged == sum(model.completed)
    assert query(db, "SELECT count(*) FROM budget_reservations") == [(0,)]
    assert _answers(fake) == 0


async def test_a_slot_whose_answer_was_posted_before_the_crash_is_not_run_again(
    fake_discord: FakeDiscord, model: ScriptedLoopback, lives: list[Proc], tmp_path: Path
) -> None:
    """Life 1 runs the one-shot to the end: the answer is posted (the audit says
    delivered), the slot closed ok. The database is then put back as a kill in the
    milliseconds between the post and the slot's close leaves it (the slot running, the
    one-shot not yet done): the next process closes the slot ok and runs nothing."""
    fake, env = fake_discord, _env(tmp_path, fake_discord, model)
    model.release()  # nothing holds: the run goes to its answer
    schedule_id = await _one_shot(tmp_path, fake)
    first = await _life(lives, env, tmp_path)
    await first.wait_for(r"schedule slot.*outcome=ok", timeout=30)
    first.signal(signal.SIGTERM)
    assert await first.exit_code() == 0
    assert _answers(fake) == 1 and len(model.completed) == 3
    db = _db(tmp_path)
    [(run_id, status, delivered)] = query(db, "SELECT run_id, status, delivered FROM audit_runs")
    assert (status, delivered) == ("ok", 1)
    assert query(db, "SELECT run_id FROM schedule_slots") == [(run_id,)]
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(
                "UPDATE schedule_slots SET status = 'running', ended_at = NULL, reason = NULL"
            )
            conn.execute(
                "UPDATE schedules SET enabled = 1, disabled_reason = NULL, last_status = NULL"
            )
    finally:
        conn.close()

    since = len(fake.calls)
    second = await _life(lives, env, tmp_path)
    await second.wait_for(r"scheduler started: .* 0 interrupted, 0 retried")
    line = await second.wait_for(r"schedule slot.*outcome=ok")
    assert f"run_id={run_id}" in line
    second.signal(signal.SIGTERM)
    assert await second.exit_code() == 0
    assert len(model.completed) == 3  # no model call
    assert _answers(fake) == 1  # nothing posted again
    assert not fake.find_calls("POST", r"/channels/{c}/messages", since=since)
    assert query(db, "SELECT count(*) FROM audit_runs") == [(1,)]
    [slot] = query(db, "SELECT status, attempt, run_id, reason FROM schedule_slots")
    assert slot == ("ok", 1, run_id, ANSWERED)
    [schedule] = query(
        db, "SELECT enabled, disabled_reason FROM schedules WHERE id = ?", schedule_id
    )
    assert schedule == (0, DONE)  # a one-shot, done
