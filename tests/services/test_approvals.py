"""Approvals whichever process receives the press: the questions in SQL (SQLite and
PostgreSQL), two services on one database standing for two processes (the run waits in
one, the press lands in the other), and two real apps on one PostgreSQL database, the
second telling the first by ``NOTIFY``.

What a press does: only the member who may decide counts (anyone else is refused); the
first decision wins (a second press is told what was decided, and by whom); no answer in
time closes the question as expired (denied) and a later press is refused; a run that
stops waiting, or whose process died, leaves a question nobody can answer any more."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from adapters.services.approval import KEPT_FOR, Approval, ApprovalService, InMemoryApprovals
from adapters.services.errors import ApprovalDecided, ApprovalUnavailable, NotYourApproval
from adapters.services.instances import Identity
from adapters.storage.approvals import SqlApprovals
from adapters.storage.db import Database
from adapters.storage.instances import SqlInstances
from bot.app import App, build_app
from bot.settings import Settings
from executor.agent import Caller, Invocation, RunnableAgent
from executor.messages import Message
from executor.ports import ApprovalDecision, ApprovalRequest
from executor.testing import FakeClock, RecordingDelivery, Reply, ScriptedModel, call
from executor.tools.registry import tool
from tests.storage.dbs import db, pg_db, pg_url, sqlite_db, sqlite_template

__all__ = ["db", "pg_db", "pg_url", "sqlite_db", "sqlite_template"]  # the fixtures used here

ALICE = Caller(user_id="100", display_name="alice", guild_id="1", channel_id="5")
REQUEST = ApprovalRequest(
    run_id="run-1", caller=ALICE, tool="wipe", call_id="call-1", arguments={"target": "logs"}
)
WAIT_S = 120.0


def _two(db: Database, clock: FakeClock) -> tuple[ApprovalService, ApprovalService]:
    """Two processes on one database: ``a`` runs the run, ``b`` receives the press. No
    notifications between them: ``a`` finds the press at its periodic read."""
    return (
        ApprovalService(SqlApprovals(db.sessions), clock=clock),
        ApprovalService(SqlApprovals(db.sessions), clock=clock),
    )


async def _waiting(
    service: ApprovalService, approval: Approval, clock: FakeClock
) -> asyncio.Task[Approval]:
    """``service`` waits for ``approval`` (parked on the clock once this returns)."""
    parked = clock.sleepers
    task = asyncio.ensure_future(service.wait(approval))
    await clock.wait_for_sleepers(parked + 1)
    return task


async def test_a_press_in_the_same_process_wakes_the_run_at_once(db: Database) -> None:
    clock = FakeClock()
    a, _ = _two(db, clock)
    approval = await a.ask(REQUEST, user_id=ALICE.user_id, timeout_s=WAIT_S)
    assert approval.tool == "wipe" and approval.user_id == ALICE.user_id
    waiting = await _waiting(a, approval, clock)
    decided = await a.decide(approval.id, user_id=ALICE.user_id, name="alice", approved=True)
    assert decided.decision == "approved" and decided.decided_by == ALICE.user_id
    # No clock moved: the press was handed over, not found by a poll.
    done = await asyncio.wait_for(waiting, 5)
    assert done.decision == "approved" and done.verdict() == ApprovalDecision(approved=True)
    assert a.waiting == 0


async def test_a_press_in_another_process_reaches_the_run_and_a_second_is_refused(
    db: Database,
) -> None:
    clock = FakeClock()
    a, b = _two(db, clock)
    approval = await a.ask(REQUEST, user_id=ALICE.user_id, timeout_s=WAIT_S)
    waiting = await _waiting(a, approval, clock)

    # Someone else's press is refused, and changes nothing.
    with pytest.raises(NotYourApproval, match=r"^Not yours"):
        await b.decide(approval.id, user_id="200", name="bob", approved=True)
    decided = await b.decide(approval.id, user_id=ALICE.user_id, name="alice", approved=False)
    assert decided.decision == "denied" and decided.decided_at == clock.now()
    assert not waiting.done()

    # A second press, in either process: told what was decided, and by whom.
    for service in (a, b):
        with pytest.raises(ApprovalDecided, match=r"^Already denied by alice\.$"):
            await service.decide(approval.id, user_id=ALICE.user_id, name="alice", approved=True)

    # A (told nothing) reads the row at its next check and goes on with the decision.
    await clock.advance(a.poll_s)
    done = await asyncio.wait_for(waiting, 5)
    assert done.decision == "denied" and done.decided_by_name == "alice"
    assert done.verdict() == ApprovalDecision(approved=False, reason="alice denied it")


async def test_a_notice_from_the_other_process_wakes_the_run_before_its_check(
    db: Database,
) -> None:
    clock = FakeClock()
    a, b = _two(db, clock)
    told: list[str] = []

    async def publish(key: str) -> None:  # as NOTIFY would, to the other process
        told.append(key)
        a.changed(key)

    b.publish = publish
    approval = await a.ask(REQUEST, user_id=ALICE.user_id, timeout_s=WAIT_S)
    waiting = await _waiting(a, approval, clock)
    await b.decide(approval.id, user_id=ALICE.user_id, name="alice", approved=True)
    assert told == [approval.id]
    done = await asyncio.wait_for(waiting, 5)  # the clock never moved
    assert done.decision == "approved"


async def test_two_presses_at_once_in_two_processes_one_wins(db: Database) -> None:
    clock = FakeClock()
    a, b = _two(db, clock)
    approval = await a.ask(REQUEST, user_id=ALICE.user_id, timeout_s=WAIT_S)
    waiting = await _waiting(a, approval, clock)
    results = await asyncio.gather(
        a.decide(approval.id, user_id=ALICE.user_id, name="alice", approved=True),
        b.decide(approval.id, user_id=ALICE.user_id, name="alice", approved=False),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, Approval)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1 and len(lost) == 1, results
    assert isinstance(lost[0], ApprovalDecided)
    await clock.advance(a.poll_s)
    done = await asyncio.wait_for(waiting, 5)
    assert done.decision == won[0].decision


async def test_no_answer_in_time_is_denied_and_a_later_press_refused(db: Database) -> None:
    clock = FakeClock()
    a, b = _two(db, clock)
    a.poll_s = 3600  # only the time runs out here
    approval = await a.ask(REQUEST, user_id=ALICE.user_id, timeout_s=12)
    waiting = await _waiting(a, approval, clock)
    await clock.advance(5)
    assert not waiting.done()
    await clock.advance(7)
    done = await asyncio.wait_for(waiting, 5)
    assert done.decision == "expired"
    assert done.verdict() == ApprovalDecision(approved=False, reason="no answer in time")
    with pytest.raises(ApprovalUnavailable, match=r"^Too late"):
        await b.decide(approval.id, user_id=ALICE.user_id, name="alice", approved=True)
    row = await b.store.get(approval.id)
    assert row is not None and row.decision == "expired" and row.decided_by is None


async def test_a_press_after_the_time_is_refused_even_before_the_run_closes_it(
    db: Database,
) -> None:
    clock = FakeClock()
    a, b = _two(db, clock)
    approval = await a.ask(REQUEST, user_id=ALICE.user_id, timeout_s=10)
    clock._t += 11  # the other process's clock is past the time; the waiter has not run
    with pytest.raises(ApprovalUnavailable, match=r"^Too late"):
        await b.decide(approval.id, user_id=ALICE.user_id, name="alice", approved=True)
    row = await a.store.get(approval.id)
    assert row is not None and row.is_open


async def test_a_run_that_stops_waiting_closes_its_question(db: Database) -> None:
    clock = FakeClock()
    a, b = _two(db, clock)
    approval = await a.ask(REQUEST, user_id=ALICE.user_id, timeout_s=WAIT_S)
    waiting = await _waiting(a, approval, clock)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    with pytest.raises(ApprovalUnavailable, match="stopped waiting"):
        await b.decide(approval.id, user_id=ALICE.user_id, name="alice", approved=True)
    assert a.waiting == 0


async def test_a_question_whose_process_died_cannot_be_answered(db: Database) -> None:
    clock = FakeClock()
    instances = SqlInstances(db.sessions, clock=clock)
    alive = Identity.new("bot")
    await instances.register(alive, ttl_s=60)
    a, b = _two(db, clock)
    a.owner = alive.id
    live = await a.ask(REQUEST, user_id=ALICE.user_id, timeout_s=WAIT_S)
    a.owner = "dead0000dead0000"  # an instance reaped since: its row is gone
    orphan = await a.ask(REQUEST, user_id=ALICE.user_id, timeout_s=WAIT_S)

    with pytest.raises(ApprovalUnavailable, match="interrupted"):
        await b.decide(orphan.id, user_id=ALICE.user_id, name="alice", approved=True)
    row = await b.store.get(orphan.id)
    assert row is not None and row.decision == "interrupted" and not row.waiting
    with pytest.raises(ApprovalUnavailable, match="interrupted"):  # at once, the next time
        await b.decide(orphan.id, user_id=ALICE.user_id, name="alice", approved=True)
    # A live process's question is answered as usual.
    decided = await b.decide(live.id, user_id=ALICE.user_id, name="alice", approved=True)
    assert decided.decision == "approved" and decided.waiting


async def _questions_of_a_dead_process(service: ApprovalService) -> dict[str, Approval]:
    """What a process that died left: an open question (posted), one decided (posted),
    one a stale press closed as interrupted (posted), one never posted, and another
    run's open one."""
    other = ApprovalRequest(
        run_id="run-2", caller=ALICE, tool="wipe", call_id="call-9", arguments={}
    )
    rows = {
        name: await service.ask(request, user_id=ALICE.user_id, timeout_s=WAIT_S)
        for name, request in (
            ("open", REQUEST),
            ("decided", REQUEST),
            ("pressed", REQUEST),
            ("unposted", REQUEST),
            ("other run", other),
        )
    }
    for n, (name, approval) in enumerate(rows.items()):
        if name != "unposted":
            await service.posted(approval, channel_id="5", message_id=str(900 + n))
    await service.decide(rows["decided"].id, user_id=ALICE.user_id, name="alice", approved=True)
    await service.store.close(rows["pressed"].id, decision="interrupted", now=service.clock.now())
    return rows


async def test_a_dead_process_questions_are_closed_and_taken_once(db: Database) -> None:
    clock = FakeClock()
    dead, survivor = _two(db, clock)
    rows = await _questions_of_a_dead_process(dead)

    taken = await survivor.interrupted(["run-1"])
    assert sorted((q.id, q.channel_id, q.message_id) for q in taken) == sorted(
        [(rows["open"].id, "5", "900"), (rows["pressed"].id, "5", "902")]
    )
    assert all(q.decision == "interrupted" for q in taken)
    # Closed: a press is refused and decides nothing; its buttons are taken once.
    with pytest.raises(ApprovalUnavailable, match="interrupted"):
        await survivor.decide(rows["open"].id, user_id=ALICE.user_id, name="alice", approved=True)
    unposted = await survivor.store.get(rows["unposted"].id)
    assert unposted is not None and unposted.decision == "interrupted"
    decided = await survivor.store.get(rows["decided"].id)
    assert decided is not None and decided.decision == "approved" and decided.message_id == "901"
    other = await survivor.store.get(rows["other run"].id)
    assert other is not None and other.is_open
    assert await survivor.interrupted(["run-1"]) == []
    assert await survivor.interrupted([]) == []


async def test_in_memory_dead_process_questions_are_taken_the_same() -> None:
    service = ApprovalService(InMemoryApprovals(), clock=FakeClock())
    rows = await _questions_of_a_dead_process(service)
    taken = await service.interrupted(["run-1"])
    assert sorted(q.id for q in taken) == sorted([rows["open"].id, rows["pressed"].id])
    assert await service.interrupted(["run-1"]) == []


async def test_old_questions_are_pruned_and_the_data_api_covers_them(db: Database) -> None:
    clock = FakeClock()
    a, _ = _two(db, clock)
    store = a.store
    assert isinstance(store, SqlApprovals)
    old = await a.ask(REQUEST, user_id=ALICE.user_id, timeout_s=WAIT_S)
    await a.decide(old.id, user_id=ALICE.user_id, name="alice", approved=True)
    await clock.advance(KEPT_FOR.total_seconds() + WAIT_S + 1)
    fresh = await a.ask(REQUEST, user_id=ALICE.user_id, timeout_s=WAIT_S)
    other = await a.ask(REQUEST, user_id="200", timeout_s=WAIT_S)
    assert await a.prune() == 1
    assert await store.get(old.id) is None and await store.get(fresh.id) is not None

    exported = await store.export_user_data(ALICE.user_id)
    assert [r["id"] for r in exported] == [fresh.id] and exported[0]["tool"] == "wipe"
    assert await store.delete_user_data(ALICE.user_id) == 1
    assert await store.get(fresh.id) is None and await store.get(other.id) is not None


async def test_in_memory_questions_behave_the_same() -> None:
    clock = FakeClock()
    service = ApprovalService(InMemoryApprovals(), clock=clock)
    approval = await service.ask(REQUEST, user_id=ALICE.user_id, timeout_s=WAIT_S)
    waiting = await _waiting(service, approval, clock)
    with pytest.raises(NotYourApproval):
        await service.decide(approval.id, user_id="200", name="bob", approved=True)
    await service.decide(approval.id, user_id=ALICE.user_id, name="alice", approved=True)
    assert (await asyncio.wait_for(waiting, 5)).decision == "approved"
    with pytest.raises(ApprovalDecided, match="Already approved by alice"):
        await service.decide(approval.id, user_id=ALICE.user_id, name="alice", approved=False)
    expiring = await service.ask(REQUEST, user_id=ALICE.user_id, timeout_s=1)
    waiting = await _waiting(service, expiring, clock)
    await clock.advance(1)
    assert (await asyncio.wait_for(waiting, 5)).decision == "expired"


# --- two real apps on one PostgreSQL database -------------------------------------------


class _Tiers:
    tiers = ("standard",)
    default_tier = "standard"

    def __init__(self, model: ScriptedModel) -> None:
        self.model = model

    def resolve(self, tier: str | None = None) -> Any:
        return self.model

    def estimate_micros(self, tier: str | None, input_tokens: int, output_tokens: int) -> int:
        return 0


@asynccontextmanager
async def _process(url: str, model: ScriptedModel) -> AsyncIterator[App]:
    app = await build_app(
        Settings(_env_file=None, database_url=url), resolver=_Tiers(model), instance="cli"
    )
    try:
        yield app
    finally:
        await app.close()


class _Asking(RecordingDelivery):
    """A member's delivery in process ``app``: asks with a question there (as the Discord
    one does: the buttons carry its id) and hands the id to whoever presses."""

    def __init__(self, app: App) -> None:
        super().__init__()
        self.app = app
        self.asked: asyncio.Queue[str] = asyncio.Queue()

    async def ask_approval(self, request: ApprovalRequest) -> ApprovalDecision:
        approval = await self.app.approvals.ask(
            request, user_id=request.caller.user_id, timeout_s=WAIT_S
        )
        self.asked.put_nowait(approval.id)
        return (await self.app.approvals.wait(approval)).verdict()


async def _run_asking(app: App, model: ScriptedModel, target: str) -> tuple[Any, _Asking]:
    def wipe(target: str) -> str:
        """Wipes the target."""
        return f"wiped {target}"

    app.tools.add(tool(wipe, requires_approval=True))
    model.push(call("wipe", target=target))
    model.push(Reply(text="Done."))
    delivery = _Asking(app)
    run = asyncio.ensure_future(
        app.runner.run(
            RunnableAgent(model=model, tools=("wipe",)),
            Invocation(messages=[Message.user(f"wipe {target}")], caller=ALICE, delivery=delivery),
        )
    )
    return run, delivery


async def test_the_run_waits_in_one_process_and_the_press_lands_in_another(pg_url: str) -> None:
    model = ScriptedModel()
    async with _process(pg_url, model) as a, _process(pg_url, model) as b:
        a.approvals.poll_s = 3600  # only the notification can tell it in time
        run, delivery = await _run_asking(a, model, "logs")
        approval_id = await asyncio.wait_for(delivery.asked.get(), 10)

        # Bob's press (in b) is refused; alice's (in b) decides; A's run goes on.
        with pytest.raises(NotYourApproval):
            await b.approvals.decide(approval_id, user_id="200", name="bob", approved=True)
        await b.approvals.decide(approval_id, user_id=ALICE.user_id, name="alice", approved=True)
        result = await asyncio.wait_for(run, 20)
        assert result.ok, result
        tool_results = [m for m in model.requests[-1].messages if m.tool_results]
        assert tool_results[-1].tool_results[0].content == "wiped logs"
        with pytest.raises(ApprovalDecided, match="Already approved by alice"):
            await a.approvals.decide(
                approval_id, user_id=ALICE.user_id, name="alice", approved=False
            )
        row = await a.approval_store.get(approval_id)
        assert a.membership is not None
        assert row is not None and row.owner == a.membership.identity.id and row.waiting


async def test_a_press_made_while_the_notice_connection_was_down_is_not_lost(
    pg_url: str,
) -> None:
    model = ScriptedModel()
    async with _process(pg_url, model) as a, _process(pg_url, model) as b:
        a.approvals.poll_s = 3600  # neither the notice nor the poll: only the reconnect
        run, delivery = await _run_asking(a, model, "cache")
        approval_id = await asyncio.wait_for(delivery.asked.get(), 10)
        assert a.notifier is not None and a.notifier._conn is not None
        b.approvals.publish = None  # the notice is lost
        await b.approvals.decide(approval_id, user_id=ALICE.user_id, name="alice", approved=False)
        dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend($1)", a.notifier._conn.get_server_pid()
            )
        finally:
            await admin.close()
        # Reconnected, A reads its questions again and the run goes on, denied.
        result = await asyncio.wait_for(run, 30)
        assert result.ok, result
        tool_results = [m for m in model.requests[-1].messages if m.tool_results]
        assert "alice denied it" in tool_results[-1].tool_results[0].content
