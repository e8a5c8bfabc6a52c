"""A run cut by a restart's drain can be resumed (as one a crash cut): a real ``coterie
run`` (``tests/chaos/resume_worker.py``) is answering alice, and is in a tool that
changes something, when SIGTERM comes with a short grace period. The drain cancels the
run (her answer says "Stopped: coterie is restarting."), keeps its checkpoint and
posts her Resume and Discard before the process exits 0. The next process takes the
press: the tool that may have run is asked about again, the answer completes from the
last completed step (the calculator is not run again), and the ledger equals what every
response cost across both runs. A scheduled slot cut the same way is left running, and
the next process retries it from its run's last step (once), as after a crash."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import pytest

from skills.scheduler import LEFT_FOR_RESTART, RESUMED
from tests.chaos.test_sigkill_resume import (
    ScriptedLoopback,
    _buttons,
    _db,
    _env,
    _life,
    _offer,
    _resumed_and_approved,
)
from tests.chaos.test_sigkill_slot_resume import _answers, _asked_again, _one_shot
from tests.fakediscord import FakeDiscord
from tests.lifecycle.conftest import Proc, query

pytestmark = pytest.mark.chaos


async def test_a_run_the_drain_cut_is_offered_and_resumes_in_the_next_process(
    fake_discord: FakeDiscord, model: ScriptedLoopback, lives: list[Proc], tmp_path: Path
) -> None:
    fake = fake_discord
    env = _env(tmp_path, fake, model) | {"COTERIE_SHUTDOWN_GRACE_S": "0.5"}
    first = await _life(lives, env, tmp_path)
    await fake.dispatch_message("<@bot> compute and save the weekly report", mentions=["bot"])
    await model.held.wait()  # computed; now saving, held by the server
    since = len(fake.calls)
    first.signal(signal.SIGTERM)
    offer = await _offer(fake, since)  # posted by the stopping process
    assert await first.exit_code() == 0
    assert "Traceback" not in first.stderr
    model.release()
    alice = str(fake.user("alice")["id"])
    assert offer.json["content"].startswith(f"<@{alice}> a restart interrupted my answer")
    assert "compute and save the weekly report" in offer.json["content"]
    buttons = _buttons(offer)
    assert set(buttons) == {"Resume", "Discard"}
    # Her answer says why it stopped.
    cut = [
        m
        for m in fake.history(fake.guild.channel_id("general"))
        if m.get("webhook_id") and "Stopped: coterie is restarting." in m.get("content", "")
    ]
    assert len(cut) == 1

    second = await _life(lives, env, tmp_path)
    await _resumed_and_approved(fake, second, buttons["Resume"], int(offer.response["id"]))
    second.signal(signal.SIGTERM)
    assert await second.exit_code() == 0

    db = _db(tmp_path)
    runs = query(db, "SELECT run_id, status, resumed_from FROM audit_runs ORDER BY started_at")
    assert [(r[1], r[2]) for r in runs] == [("cancelled", None), ("ok", runs[0][0])]
    calls = query(db, "SELECT call_id, name, run_id FROM audit_tool_calls ORDER BY id")
    assert [(c[0], c[2]) for c in calls if c[0] == "call_calc"] == [("call_calc", runs[0][0])]
    assert model.finished == Counter({"call_save": 1})
    [(charged,)] = query(db, "SELECT sum(amount_micros) FROM budget_ledger")
    assert len(model.completed) == 3 and charged == sum(model.completed)
    assert query(db, "SELECT count(*) FROM budget_reservations") == [(0,)]
    assert query(db, "SELECT offer FROM run_checkpoints") == [("resumed",)]
    assert fake.unknown_calls == []


async def test_a_slot_the_drain_cut_is_resumed_by_the_next_start(
    fake_discord: FakeDiscord, model: ScriptedLoopback, lives: list[Proc], tmp_path: Path
) -> None:
    fake = fake_discord
    env = _env(tmp_path, fake, model) | {"COTERIE_SHUTDOWN_GRACE_S": "0.5"}
    schedule_id = await _one_shot(tmp_path, fake)
    first = await _life(lives, env, tmp_path)
    await model.held.wait()  # the slot's run computed, and is saving
    first.signal(signal.SIGTERM)
    assert await first.exit_code() == 0
    assert "outcome=interrupted" in first.stderr and LEFT_FOR_RESTART in first.stderr
    model.release()
    db = _db(tmp_path)
    [(first_run, status)] = query(db, "SELECT run_id, status FROM schedule_slots")
    assert status == "running"  # left for the next start, with the run it was
    [(enabled,)] = query(db, "SELECT enabled FROM schedules WHERE id = ?", schedule_id)
    assert enabled  # a one-shot not done yet

    since = len(fake.calls)
    second = await _life(lives, env, tmp_path)
    ask = await _asked_again(fake, second, since)
    await fake.dispatch_component(_buttons(ask)["Approve"], int(ask.response["id"]), user="alice")
    line = await second.wait_for(r"schedule slot.*resumed_from=", timeout=30)
    assert f"resumed_from={first_run}" in line and "outcome=ok" in line and "attempt=2" in line
    second.signal(signal.SIGTERM)
    assert await second.exit_code() == 0

    assert _answers(fake) == 1
    runs = query(db, "SELECT run_id, status, resumed_from FROM audit_runs ORDER BY started_at")
    assert [(r[1], r[2]) for r in runs] == [("cancelled", None), ("ok", first_run)]
    [slot] = query(db, "SELECT status, attempt, run_id, reason FROM schedule_slots")
    assert slot == ("ok", 2, runs[1][0], RESUMED.format(run_id=first_run))
    calls = query(db, "SELECT call_id, run_id FROM audit_tool_calls ORDER BY id")
    assert [c for c in calls if c[0] == "call_calc"] == [("call_calc", first_run)]
    assert model.finished == Counter({"call_save": 1})
    [(charged,)] = query(db, "SELECT sum(amount_micros) FROM budget_ledger")
    assert len(model.completed) == 3 and charged == sum(model.completed)
    assert query(db, "SELECT count(*) FROM budget_reservations") == [(0,)]
    assert fake.unknown_calls == []
