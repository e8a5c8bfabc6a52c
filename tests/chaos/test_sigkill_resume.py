"""Runs that resume (issue 18): a real ``coterie run`` (``tests/chaos/resume_worker.py``)
answering a member against the fake Discord and a loopback model is SIGKILLed while a
tool that changes something is running. The next process offers the member Resume and
Discard in the channel; nobody else can press them; Resume asks again about the tool
that may have run (approval buttons), and the answer completes from the last completed
step: the calculator is not run again, the tool finishes once, and the ledger equals
what every response cost, across both runs. Discard closes the offer with no model
call. A resumed run that is killed too is not offered again."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from adapters.services.approval import INTERRUPTED
from executor.messages import Usage
from executor.models.pricing import PriceTable
from tests.chaos.loopback import MODEL
from tests.fakediscord import FakeDiscord
from tests.lifecycle.conftest import Proc, coterie_env, query, webhook_shows

pytestmark = pytest.mark.chaos

READY = r"coterie ready as"
EPHEMERAL = 64
ANSWER = "All done: 42, and the report is saved."


class ScriptedLoopback:
    """An OpenAI-compatible server with a three-step script, by the number of answers
    already in the conversation: the calculator, then ``save_report``, then the
    answer. ``/wait?call=ID`` is the tool's own request: held while ``holding``, else
    answered (the tool's work is done: counted in ``finished``)."""

    def __init__(self) -> None:
        self.prices = PriceTable()
        self.completed: list[int] = []  # the cost of every response written whole
        self.started: Counter[str] = Counter()  # save_report calls that began
        self.finished: Counter[str] = Counter()  # ... and that did their work
        self.holding = True
        self.held = asyncio.Event()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/wait", self._wait)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def release(self) -> None:
        """Let held tool calls end (their process is gone) and hold no more."""
        self.holding = False
        self._release.set()
        self._release = asyncio.Event()
        self.held = asyncio.Event()

    def hold_again(self) -> None:
        self.holding = True

    async def _wait(self, request: web.Request) -> web.StreamResponse:
        call = request.query["call"]
        self.started[call] += 1
        if self.holding:
            self.held.set()
            await self._release.wait()
            return web.Response(status=503)
        self.finished[call] += 1
        return web.Response(text="ok")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = await request.json()
        messages: list[dict[str, Any]] = body["messages"]
        step = sum(1 for m in messages if m.get("role") == "assistant")
        call: tuple[str, str, dict[str, Any]] | None = None
        if step == 0:
            call = ("call_calc", "calculator", {"expression": "6 * 7"})
        elif step == 1:
            call = ("call_save", "save_report", {"title": "weekly"})
        usage = Usage(input_tokens=100 + 7 * len(messages), output_tokens=30 + 11 * step)
        response = await self._stream(request, call, usage)
        self.completed.append(self.prices.cost_micros(MODEL, usage))
        return response

    @staticmethod
    def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        data = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "gpt-5-mini",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(data)}\n\n".encode()

    async def _stream(
        self, request: web.Request, call: tuple[str, str, dict[str, Any]] | None, usage: Usage
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(self._chunk({"role": "assistant", "content": ""}))
        if call is None:
            await response.write(self._chunk({"content": ANSWER}))
        else:
            payload = {
                "index": 0,
                "id": call[0],
                "type": "function",
                "function": {"name": call[1], "arguments": json.dumps(call[2])},
            }
            await response.write(self._chunk({"tool_calls": [payload]}))
        await response.write(self._chunk({}, "tool_calls" if call else "stop"))
        tail = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "gpt-5-mini",
            "choices": [],
            "usage": {
                "prompt_tokens": usage.input_tokens,
                "completion_tokens": usage.output_tokens,
                "total_tokens": usage.input_tokens + usage.output_tokens,
            },
        }
        await response.write(f"data: {json.dumps(tail)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _env(tmp_path: Path, fake: FakeDiscord, model: ScriptedLoopback) -> dict[str, str]:
    return coterie_env(
        tmp_path,
        fake=fake,
        OPENAI_BASE_URL=f"http://127.0.0.1:{model.port}/v1",
        OPENAI_API_KEY="sk-chaos-loopback-key",
        COTERIE_TIER_FAST=MODEL,
        COTERIE_TIER_STANDARD=MODEL,
        COTERIE_TIER_SMART=MODEL,
        COTERIE_BUDGET_DEFAULT_USD="1000",
        CHAOS_WAIT_URL=f"http://127.0.0.1:{model.port}/wait",
    )


async def _life(lives: list[Proc], env: dict[str, str], cwd: Path) -> Proc:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.chaos.resume_worker",
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    life = Proc(proc)
    lives.append(life)
    await life.wait_for(READY)
    return life


async def _sigkill(life: Proc) -> None:
    life.signal(signal.SIGKILL)
    assert await life.exit_code() == -signal.SIGKILL


def _db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "coterie.db"


def _has_buttons(call: Any) -> bool:
    return bool((call.json or {}).get("components"))


def _buttons(call: Any) -> dict[str, str]:
    return {
        b["label"]: b["custom_id"] for row in call.json["components"] for b in row["components"]
    }


async def _interrupted_in_the_tool(
    fake: FakeDiscord, model: ScriptedLoopback, lives: list[Proc], env: dict[str, str], cwd: Path
) -> None:
    """Life 1: alice asks; the run computes, then starts saving; SIGKILL while it saves."""
    first = await _life(lives, env, cwd)
    await fake.dispatch_message("<@bot> compute and save the weekly report", mentions=["bot"])
    await model.held.wait()
    await _sigkill(first)
    model.release()


async def _offer(fake: FakeDiscord, since: int) -> Any:
    general = fake.guild.channel_id("general")
    return await fake.wait_for_call(
        "POST", rf"/channels/{general}/messages", _has_buttons, since=since, timeout=30
    )


async def _resumed_and_approved(fake: FakeDiscord, life: Proc, resume: str, offer_id: int) -> None:
    """Alice presses Resume on the offer (taken by ``life``): the offer says so and
    loses its buttons; the save that may have run is asked about again, not re-run
    blindly; she approves, and the answer completes."""
    since = len(fake.calls)
    press = await fake.dispatch_component(resume, offer_id, user="alice")
    marked = await fake.wait_for_interaction_response(press)
    assert marked.json["type"] == 7 and marked.json["data"]["components"] == []
    assert marked.json["data"]["content"].endswith("-# Resumed.")
    ask = await fake.wait_for_call(
        "POST", r"/channels/{c}/messages", _has_buttons, since=since, timeout=30
    )
    assert "may have run already" in ask.json["content"]
    await life.wait_for(r"asked member \d+ to approve save_report")  # its buttons listen
    approve = await fake.dispatch_component(
        _buttons(ask)["Approve"], int(ask.response["id"]), user="alice"
    )
    await fake.wait_for_interaction_response(approve)
    await webhook_shows(fake, ANSWER, timeout=30)


async def test_resume_continues_from_the_last_step_and_no_tool_runs_twice(
    fake_discord: FakeDiscord, model: ScriptedLoopback, lives: list[Proc], tmp_path: Path
) -> None:
    fake, env = fake_discord, _env(tmp_path, fake_discord, model)
    await _interrupted_in_the_tool(fake, model, lives, env, tmp_path)
    assert len(model.completed) == 2 and model.started == Counter({"call_save": 1})

    since = len(fake.calls)
    second = await _life(lives, env, tmp_path)
    offer = await _offer(fake, since)
    alice = str(fake.user("alice")["id"])
    assert offer.json["content"].startswith(f"<@{alice}> a restart interrupted my answer")
    assert "compute and save the weekly report" in offer.json["content"]
    assert [str(u) for u in offer.json["allowed_mentions"]["users"]] == [alice]
    buttons = _buttons(offer)
    assert set(buttons) == {"Resume", "Discard"}
    offer_id = int(offer.response["id"])

    # Bob cannot press them: told privately, nothing runs.
    press = await fake.dispatch_component(buttons["Resume"], offer_id, user="bob")
    told = await fake.wait_for_interaction_response(press)
    assert told.json["type"] == 4 and told.json["data"]["flags"] & EPHEMERAL
    assert told.json["data"]["content"].startswith("Not yours")

    await _resumed_and_approved(fake, second, buttons["Resume"], offer_id)

    second.signal(signal.SIGTERM)
    assert await second.exit_code() == 0
    db = _db(tmp_path)
    runs = query(db, "SELECT run_id, status, resumed_from FROM audit_runs ORDER BY started_at")
    assert [(r[1], r[2]) for r in runs] == [("interrupted", None), ("ok", runs[0][0])]
    # Each tool call ran once: the calculator in the first run, the report in the second
    # (its first start was cut off before it did its work).
    calls = query(db, "SELECT call_id, name, run_id FROM audit_tool_calls ORDER BY id")
    assert [(c[0], c[2]) for c in calls] == [
        ("call_calc", runs[0][0]),
        ("call_save", runs[1][0]),
    ]
    assert model.finished == Counter({"call_save": 1})
    # The ledger is what every response cost, across both runs, to the micro-dollar.
    [(charged,)] = query(db, "SELECT sum(amount_micros) FROM budget_ledger")
    assert len(model.completed) == 3 and charged == sum(model.completed)
    assert query(db, "SELECT count(*) FROM budget_reservations") == [(0,)]
    assert query(db, "SELECT offer, state FROM run_checkpoints") == [("resumed", "")]
    assert fake.unknown_calls == []


async def test_discard_closes_the_offer_and_runs_nothing(
    fake_discord: FakeDiscord, model: ScriptedLoopback, lives: list[Proc], tmp_path: Path
) -> None:
    fake, env = fake_discord, _env(tmp_path, fake_discord, model)
    await _interrupted_in_the_tool(fake, model, lives, env, tmp_path)
    since = len(fake.calls)
    second = await _life(lives, env, tmp_path)
    offer = await _offer(fake, since)
    buttons, offer_id = _buttons(offer), int(offer.response["id"])

    press = await fake.dispatch_component(buttons["Discard"], offer_id, user="alice")
    closed = await fake.wait_for_interaction_response(press)
    assert closed.json["type"] == 7 and closed.json["data"]["content"].endswith("-# Discarded.")
    assert closed.json["data"]["components"] == []

    second.signal(signal.SIGTERM)
    assert await second.exit_code() == 0
    assert len(model.completed) == 2  # nothing more was asked of the model
    db = _db(tmp_path)
    assert [r[0] for r in query(db, "SELECT status FROM audit_runs")] == ["interrupted"]
    assert query(db, "SELECT offer, state FROM run_checkpoints") == [("discarded", "")]
    [(charged,)] = query(db, "SELECT sum(amount_micros) FROM budget_ledger")
    assert charged == sum(model.completed)


async def test_a_resumed_run_interrupted_again_is_not_offered_again(
    fake_discord: FakeDiscord, model: ScriptedLoopback, lives: list[Proc], tmp_path: Path
) -> None:
    fake, env = fake_discord, _env(tmp_path, fake_discord, model)
    await _interrupted_in_the_tool(fake, model, lives, env, tmp_path)
    since = len(fake.calls)
    second = await _life(lives, env, tmp_path)
    offer = await _offer(fake, since)
    model.hold_again()
    since = len(fake.calls)
    await fake.dispatch_component(_buttons(offer)["Resume"], int(offer.response["id"]))
    ask = await fake.wait_for_call(
        "POST", r"/channels/{c}/messages", _has_buttons, since=since, timeout=30
    )
    await second.wait_for(r"asked member \d+ to approve save_report")
    await fake.dispatch_component(_buttons(ask)["Approve"], int(ask.response["id"]))
    await model.held.wait()  # the resumed run is in the tool again: kill it there
    await _sigkill(second)
    model.release()

    since = len(fake.calls)
    third = await _life(lives, env, tmp_path)
    await third.wait_for(r"1 interrupted run\(s\): 0 offered to resume")
    assert not fake.find_calls("POST", r"/channels/{c}/messages", _has_buttons, since=since)
    third.signal(signal.SIGTERM)
    assert await third.exit_code() == 0
    db = _db(tmp_path)
    statuses = [r[0] for r in query(db, "SELECT status FROM audit_runs ORDER BY started_at")]
    assert statuses == ["interrupted", "interrupted"]
    [(charged,)] = query(db, "SELECT sum(amount_micros) FROM budget_ledger")
    assert charged == sum(model.completed)
    assert query(db, "SELECT count(*) FROM budget_reservations") == [(0,)]


async def test_a_question_its_dead_process_left_is_greyed_by_the_next(
    fake_discord: FakeDiscord, model: ScriptedLoopback, lives: list[Proc], tmp_path: Path
) -> None:
    """Killed while the resumed run waits for alice's approval: the next process greys
    the question's buttons and says why (the run is not offered again: a resumed run is
    offered once); a press from a client that still showed them is answered privately,
    and decides nothing."""
    fake, env = fake_discord, _env(tmp_path, fake_discord, model)
    await _interrupted_in_the_tool(fake, model, lives, env, tmp_path)
    since = len(fake.calls)
    second = await _life(lives, env, tmp_path)
    offer = await _offer(fake, since)
    since = len(fake.calls)
    await fake.dispatch_component(_buttons(offer)["Resume"], int(offer.response["id"]))
    ask = await fake.wait_for_call(
        "POST", r"/channels/{c}/messages", _has_buttons, since=since, timeout=30
    )
    await second.wait_for(r"asked member \d+ to approve save_report")  # where it is, kept
    await _sigkill(second)

    since = len(fake.calls)
    third = await _life(lives, env, tmp_path)
    ask_id = int(ask.response["id"])
    greyed = await fake.wait_for_call(
        "PATCH", rf"/channels/{{c}}/messages/{ask_id}", since=since, timeout=30
    )
    assert greyed.json["content"].endswith(f"\n-# {INTERRUPTED}")
    assert all(b["disabled"] for row in greyed.json["components"] for b in row["components"])

    press = await fake.dispatch_component(_buttons(ask)["Approve"], ask_id, user="alice")
    refused = await fake.wait_for_interaction_response(press)
    assert refused.json["type"] == 7  # the buttons stay greyed
    told = await fake.wait_for_call(
        "POST", rf"/webhooks/{fake.application_id}/{press.token}", since=since
    )
    assert told.json["flags"] & EPHEMERAL and "interrupted" in told.json["content"]

    third.signal(signal.SIGTERM)
    assert await third.exit_code() == 0
    assert model.started == Counter({"call_save": 1})  # the save never ran again
    assert query(_db(tmp_path), "SELECT decision, decided_by, message_id FROM approvals") == [
        ("interrupted", None, None)
    ]
