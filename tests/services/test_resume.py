"""The resume service through the real app (``build_app``: the SQL checkpoints, audit and
budget), with a fake host for the offers and a recording delivery for the answer:
which interrupted runs are offered (a member's chat, never a resumed run, a skill or a
child run), and what a press does: only the member's, only before the offer expires,
only once (Resume or Discard, whichever comes first)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from adapters.services.approval import INTERRUPTED, INTERRUPTED_OFFERED
from adapters.services.errors import NotYourOffer, OfferExpired, OfferUnavailable
from adapters.services.resume import Offer, ResumeService
from adapters.storage.tables import AuditRun
from bot.app import App, build_app
from bot.settings import Settings
from executor.agent import Caller, RunStatus
from executor.messages import Message, ToolCallPart, Usage
from executor.ports import ApprovalRequest, Checkpoint, Delivery
from executor.testing import FakeClock, RecordingDelivery, Reply, ScriptedModel, ScriptedTiers
from personas.errors import PersonaNotFound
from personas.model import Persona

ALICE = Caller(user_id="100", display_name="alice", guild_id="1", channel_id="55")
BOB = Caller(user_id="200", display_name="bob", guild_id="1", channel_id="55")


class Host:
    """Where offers go: kept in a list; ``fail_for`` run ids cannot be reached."""

    def __init__(self, *fail_for: str) -> None:
        self.offers: list[Offer] = []
        self.fail_for = set(fail_for)
        self.closed: list[tuple[str, str, str]] = []
        self.questions: list[tuple[str, str, str]] = []

    async def post_offer(self, offer: Offer) -> tuple[str, str] | None:
        if offer.run_id in self.fail_for:
            raise RuntimeError("Discord said no")
        self.offers.append(offer)
        return offer.channel_id or "dm", str(len(self.offers))

    async def close_offer(self, channel_id: str, message_id: str, note: str) -> None:
        self.closed.append((channel_id, message_id, note))

    async def close_question(
        self, channel_id: str, message_id: str, approval_id: str, note: str
    ) -> None:
        self.questions.append((channel_id, message_id, note))


class Surface:
    def __init__(self) -> None:
        self.delivery_ = RecordingDelivery()
        self.persona: Persona | None = None

    async def history(self, source: Any, *, max_messages: int) -> list[Any]:
        return []

    async def open_thread(self, name: str, starter: str) -> str | None:
        return None

    async def delivery(self, persona: Persona) -> Delivery:
        self.persona = persona
        return self.delivery_


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[App, ScriptedModel, FakeClock]]:
    model = ScriptedModel()
    clock = FakeClock()
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'coterie.db'}",
        budget_default_usd=1.0,
        resume_offer_hours=2,
    )
    app = await build_app(settings, resolver=ScriptedTiers(model), clock=clock)
    try:
        yield app, model, clock
    finally:
        await app.close()


async def _interrupted(app: App, run_id: str, **changes: Any) -> None:
    """What a crash leaves: the run's audit row closed as interrupted, its checkpoint."""
    fields: dict[str, Any] = {
        "run_id": run_id,
        "step": 1,
        "messages": (
            Message.user("summarise the thread", name="alice"),
            Message(role="assistant", parts=(ToolCallPart(id="c1", name="calculator"),)),
        ),
        "usage": Usage(input_tokens=10, output_tokens=5, cost_micros=30, requests=1),
        "caller": ALICE,
        "trigger": "chat",
        "agent": "assistant",
        "tier": "standard",
        "persona": "assistant",
        "pending": (ToolCallPart(id="c1", name="calculator", arguments={"expression": "1+1"}),),
        "metadata": {"thread_id": "77"},
    }
    fields.update(changes)
    await app.checkpoints.save(Checkpoint(**fields))
    async with app.db.sessions() as s, s.begin():
        s.add(AuditRun(run_id=run_id, trigger="chat", user_id="100", status="interrupted"))


async def test_only_a_members_chat_is_offered_and_the_rest_forgotten(
    world: tuple[App, ScriptedModel, FakeClock],
) -> None:
    app, _, clock = world
    await _interrupted(app, "chat")
    await _interrupted(app, "again", resumed_from="first")
    await _interrupted(app, "skill", skill="digest", trigger="slash")
    await _interrupted(app, "child", parent_run_id="chat")
    await _interrupted(app, "unreachable")
    host = Host("unreachable")
    app.resume.host = host

    offered = await app.resume.offer_interrupted(
        ["chat", "again", "skill", "child", "unreachable", "gone"]
    )
    assert offered == 1
    [offer] = host.offers
    assert (offer.run_id, offer.user_id, offer.channel_id, offer.guild_id) == (
        "chat",
        "100",
        "77",  # the thread the run answered in
        "1",
    )
    assert offer.prompt == "summarise the thread" and offer.steps == 1
    assert offer.expires_at == clock.now() + timedelta(hours=2)
    for run_id in ("again", "skill", "child", "unreachable"):
        assert await app.checkpoints.record(run_id) is None  # nothing kept about them
    # Offered once: a second pass (another start) does not offer it again.
    assert await app.resume.offer_interrupted(["chat"]) == 0


async def test_the_questions_an_interrupted_run_left_lose_their_buttons(
    world: tuple[App, ScriptedModel, FakeClock],
) -> None:
    """A dead process's runs left questions for approval showing buttons: the process
    that offers its runs takes them off, saying whether the run was offered to resume."""
    app, _, _ = world
    await _interrupted(app, "chat")
    await _interrupted(app, "again", resumed_from="first")  # not offered (once)
    app.approvals.owner = "dead0000dead0000"  # its process is gone
    posted = {}
    for n, run_id in enumerate(("chat", "again", "alive")):
        request = ApprovalRequest(
            run_id=run_id, caller=ALICE, tool="wipe", call_id="c1", arguments={}
        )
        question = await app.approvals.ask(request, user_id=ALICE.user_id, timeout_s=120)
        await app.approvals.posted(question, channel_id="55", message_id=str(900 + n))
        posted[run_id] = question
    host = Host()
    app.resume.host = host

    assert await app.resume.offer_interrupted(["chat", "again"]) == 1
    assert sorted(host.questions) == [
        ("55", "900", INTERRUPTED_OFFERED),
        ("55", "901", INTERRUPTED),
    ]
    for run_id in ("chat", "again"):
        row = await app.approvals.store.get(posted[run_id].id)
        assert row is not None and row.decision == "interrupted" and row.message_id is None
    alive = await app.approvals.store.get(posted["alive"].id)
    assert alive is not None and alive.is_open  # not one of the interrupted runs
    await app.resume.offer_interrupted(["chat", "again"])  # taken once
    assert len(host.questions) == 2


async def test_resume_is_the_members_once_and_continues_the_run(
    world: tuple[App, ScriptedModel, FakeClock],
) -> None:
    app, model, _ = world
    await _interrupted(app, "r1")
    app.resume.host = Host()
    await app.resume.offer_interrupted(["r1"])

    with pytest.raises(NotYourOffer, match="Not yours"):
        await app.resume.resume("r1", BOB, Surface())
    with pytest.raises(NotYourOffer):
        await app.resume.discard("r1", BOB.user_id)

    model.push(Reply(text="Here is the summary.", usage=Usage(output_tokens=4, cost_micros=9)))
    claimed: list[bool] = []

    async def on_claimed() -> None:
        claimed.append(True)

    surface = Surface()
    result = await app.resume.resume("r1", ALICE, surface, on_claimed=on_claimed)
    assert claimed == [True]
    assert result.status is RunStatus.OK and result.output == "Here is the summary."
    assert surface.persona is not None and surface.persona.name == "assistant"
    assert surface.delivery_.result is result
    # The read-only calculator the interrupted run had started ran again, unasked.
    [sent] = model.requests
    assert [r.content for m in sent.messages for r in m.tool_results] == ["2"]
    # A new audit run, linked to the interrupted one, charged its own response.
    detail = await app.audit_queries.get_run(result.run_id)
    assert detail is not None and detail.run.resumed_from == "r1"
    assert (detail.run.status, detail.run.cost_micros) == ("ok", 9)

    with pytest.raises(OfferUnavailable, match="Already resumed"):
        await app.resume.resume("r1", ALICE, Surface())
    with pytest.raises(OfferUnavailable, match="Already resumed"):
        await app.resume.discard("r1", ALICE.user_id)


async def test_discard_and_expiry_close_the_offer(
    world: tuple[App, ScriptedModel, FakeClock],
) -> None:
    app, model, clock = world
    await _interrupted(app, "r1")
    await _interrupted(app, "r2")
    await _interrupted(app, "r3", persona="deleted-since")
    host = Host()
    app.resume.host = host
    await app.resume.offer_interrupted(["r1", "r2", "r3"])

    await app.resume.discard("r1", ALICE.user_id)
    with pytest.raises(OfferUnavailable, match="Already discarded"):
        await app.resume.resume("r1", ALICE, Surface())
    with pytest.raises(PersonaNotFound):
        await app.resume.resume("r3", ALICE, Surface())

    await clock.advance(2 * 3600)
    with pytest.raises(OfferExpired, match="expired"):
        await app.resume.resume("r2", ALICE, Surface())
    assert model.requests == []  # nothing ran
    record = await app.checkpoints.record("r2")
    assert record is not None and record.checkpoint is not None  # until the next sweep
    assert await app.resume.sweep() == 2  # r2 and r3
    assert sorted(host.closed) == [("77", "2", "Expired."), ("77", "3", "Expired.")]
    record = await app.checkpoints.record("r2")
    assert record is not None and record.status == "expired" and record.checkpoint is None


async def test_runs_found_later_wait_for_the_offer_loop_once_each(
    world: tuple[App, ScriptedModel, FakeClock],
) -> None:
    """The seam a survivor's heartbeat uses: it hands over the dead process's runs and
    never waits on Discord; the bot's offer loop takes them (once) and offers them."""
    import asyncio

    app, _, _ = world
    resume = app.resume
    assert resume.take_found() == []  # nothing was interrupted at this start
    waiting = asyncio.ensure_future(resume.wait_found(3600))
    await asyncio.sleep(0)
    assert not waiting.done()
    await _interrupted(app, "r1")
    resume.found(["r1"])
    resume.found(["r1"])  # two sweeps naming one run: offered once
    await waiting  # woken at once, not after the sweep interval
    taken = resume.take_found()
    assert taken == ["r1"] and resume.take_found() == []
    resume.host = host = Host()
    assert await resume.offer_interrupted(taken) == 1
    assert [o.run_id for o in host.offers] == ["r1"]
    # A retry after a failure waits for the next sweep instead of waking the loop.
    resume.found(["r2"], wake=False)
    still = asyncio.ensure_future(resume.wait_found(3600))
    await asyncio.sleep(0)
    assert not still.done()
    still.cancel()
    await asyncio.gather(still, return_exceptions=True)
    assert resume.take_found() == ["r2"]


async def test_a_resumed_run_has_the_memory_a_run_would_have_now(
    world: tuple[App, ScriptedModel, FakeClock],
) -> None:
    """The checkpoint holds no system prompt: the resumed run gets the guild's lore and
    the member's notes as a run started now would (and no memory tools where it is off)."""
    from memory.notes import place_of

    app, model, _ = world
    await app.memory_store.add_lore(
        place_of("1"), "assistant", "The server's bake-off is on Friday.", by="900"
    )
    await _interrupted(app, "r1")
    app.resume.host = Host()
    await app.resume.offer_interrupted(["r1"])
    model.push(Reply(text="Friday.", usage=Usage(output_tokens=1, cost_micros=2)))

    await app.resume.resume("r1", ALICE, Surface())

    [sent] = model.requests
    assert sent.messages[0].role == "system"
    assert "The server's bake-off is on Friday." in sent.messages[0].text
    assert {"remember", "recall"} <= {t.name for t in sent.tools}


async def test_the_offer_loops_wait_ends_when_cancelled_as_runs_are_found() -> None:
    """The bot's offer loop waits in ``wait_found``; a cancellation (the bot closing)
    in the same breath as runs are found must end it, not be taken for the wake-up
    (Python 3.11's ``asyncio.wait_for`` did that: see Membership's heartbeat)."""
    service = ResumeService(store=cast(Any, None), chat=cast(Any, None))

    async def offer_loop() -> None:
        while True:
            service.take_found()
            await service.wait_found(60)

    for turns in range(6):
        loop = asyncio.create_task(offer_loop())
        await asyncio.sleep(0)
        service.found(["r1"])
        for _ in range(turns):
            await asyncio.sleep(0)
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(loop, 10)
