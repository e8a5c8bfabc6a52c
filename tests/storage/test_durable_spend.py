"""What a crash may lose of a run's spend and tool calls is bounded (issue 12).

Spend is written at once (the answering attempt carries its usage), the buffer is
written before each model request, everything else within the flush interval by the
sink's timer; crash recovery charges what the attempts record, even when the step
that the response belongs to never finished.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import func, select
from sqlmodel import col

from adapters.storage.audit_sink import SqlAuditSink
from adapters.storage.budget import SqlBudgetLedger
from adapters.storage.db import Database
from adapters.storage.recovery import recover
from adapters.storage.tables import AuditModelAttempt, AuditRun, AuditStep, AuditToolCall
from executor.agent import Caller, Invocation, RunnableAgent, RunStatus
from executor.events import ModelAttemptEvent, ModelRequestEvent, StepFinished, ToolCallFinished
from executor.hooks import RunHook, RunState
from executor.messages import Message, Usage
from executor.models.base import Attempt, ModelResponse
from executor.run import Executor
from executor.spend import input_tokens
from executor.testing import RecordingDelivery, Reply, ScriptedModel, call
from executor.tools.registry import ToolRegistry, tool
from tests.conformance.test_audit_sink import T0, finished, started
from tests.executor.test_run_billing_edges import Hanging, Tiers, standard

# Nothing but the rules under test writes: no batch fills, no interval passes.
QUIET: dict[str, Any] = {"batch_size": 100_000, "flush_interval_s": 3600}


async def _count(db: Database, table: type) -> int:
    async with db.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(table)) or 0)


def _tool_call(run_id: str, call_id: str) -> ToolCallFinished:
    return ToolCallFinished(
        run_id=run_id,
        at=T0,
        step=1,
        call_id=call_id,
        name="add",
        arguments={},
        result="4",
        is_error=False,
        duration_ms=1,
    )


class Ticks:
    """A sleep for the sink's timer that returns only when the test says so."""

    def __init__(self) -> None:
        self._asleep: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()
        self._current: asyncio.Future[None] | None = None

    async def sleep(self, seconds: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        await self._asleep.put(fut)
        await fut

    async def first(self) -> None:
        """Wait until the timer is asleep for the first time."""
        self._current = await self._asleep.get()

    async def tick(self) -> None:
        """Wake the timer and wait until it is asleep again: its write is done."""
        assert self._current is not None
        self._current.set_result(None)
        self._current = await self._asleep.get()


async def test_an_attempt_is_durable_when_record_returns(db: Database) -> None:
    """One that answered records spend; one that failed ends its request (so recovery
    never charges that request as unanswered)."""
    sink = SqlAuditSink(db.sessions, **QUIET)
    try:
        await sink.record(started("r1"))
        failed = Attempt(model="a:1", latency_ms=3, error="busy", error_kind="overloaded")
        await sink.record(ModelAttemptEvent(run_id="r1", at=T0, step=1, attempt=failed))
        assert await _count(db, AuditModelAttempt) == 1
        usage = Usage(input_tokens=120, output_tokens=30, cost_micros=810)
        await sink.record(
            ModelAttemptEvent(
                run_id="r1", at=T0, step=1, attempt=Attempt(model="b:1", latency_ms=9), usage=usage
            )
        )
        async with db.sessions() as s:
            rows = (
                (await s.execute(select(AuditModelAttempt).order_by(col(AuditModelAttempt.id))))
                .scalars()
                .all()
            )
        assert [(r.model, r.input_tokens, r.output_tokens, r.cost_micros) for r in rows] == [
            ("a:1", 0, 0, 0),
            ("b:1", 120, 30, 810),
        ]
    finally:
        await sink.close()


async def test_a_model_request_makes_what_came_before_it_durable(db: Database) -> None:
    sink = SqlAuditSink(db.sessions, **QUIET)
    try:
        await sink.record(started("r1"))
        await sink.record(_tool_call("r1", "c1"))
        await sink.record(_tool_call("r1", "c2"))
        assert await _count(db, AuditToolCall) == 0
        await sink.record(ModelRequestEvent(run_id="r1", at=T0, step=2, message_count=3))
        assert await _count(db, AuditToolCall) == 2
    finally:
        await sink.close()


async def test_the_timer_writes_the_buffer_with_no_further_event(db: Database) -> None:
    ticks = Ticks()
    sink = SqlAuditSink(db.sessions, batch_size=100_000, flush_interval_s=0.5, sleep=ticks.sleep)
    try:
        await sink.record(started("r1"))
        await sink.record(
            StepFinished(run_id="r1", at=T0, step=1, model="m", usage=Usage(), stop_reason="x")
        )
        await sink.record(_tool_call("r1", "c1"))
        await ticks.first()
        assert (await _count(db, AuditStep), await _count(db, AuditToolCall)) == (0, 0)
        await ticks.tick()  # a long tool call or a long stream: no event, the timer writes
        assert (await _count(db, AuditStep), await _count(db, AuditToolCall)) == (1, 1)
        await ticks.tick()  # nothing buffered: nothing written, the timer sleeps on
        await sink.record(_tool_call("r1", "c2"))
        await ticks.tick()
        assert await _count(db, AuditToolCall) == 2
    finally:
        await sink.close()
    assert sink._timer is None  # stopped by close


async def test_recovery_charges_a_response_whose_step_never_finished(db: Database) -> None:
    budget = SqlBudgetLedger(db.sessions, default_limit_micros=1_000_000)
    reservation = await budget.reserve(Caller(user_id="u1"), "r1", 50_000)
    sink = SqlAuditSink(db.sessions, **QUIET)
    await sink.record(started("r1"))
    for step, cost in ((1, 700), (2, 450)):
        await sink.record(ModelRequestEvent(run_id="r1", at=T0, step=step, message_count=1))
        await sink.record(
            ModelAttemptEvent(
                run_id="r1",
                at=T0,
                step=step,
                attempt=Attempt(model="b:1", latency_ms=4),
                usage=Usage(input_tokens=10, output_tokens=5, cost_micros=cost),
            )
        )
        if step == 1:
            await sink.record(
                StepFinished(
                    run_id="r1",
                    at=T0,
                    step=1,
                    model="b:1",
                    usage=Usage(input_tokens=10, output_tokens=5, cost_micros=700),
                    stop_reason="tool_use",
                )
            )
    # The crash: step 2's response was written (its attempt), its step never was.
    report = await recover(db.sessions, budget)
    assert report.interrupted_runs == ["r1"]
    assert report.charged_micros == 1_150
    async with db.sessions() as s:
        run = (await s.execute(select(AuditRun).where(col(AuditRun.run_id) == "r1"))).scalar_one()
    assert (run.cost_micros, run.input_tokens, run.output_tokens) == (1_150, 20, 10)
    assert (await budget.status("u1")).spent_micros == 1_150
    assert reservation.token is not None
    await sink.close()


async def test_recovery_still_reads_steps_written_before_attempts_had_usage(
    db: Database,
) -> None:
    sink = SqlAuditSink(db.sessions, **QUIET)
    await sink.record(started("old"))
    await sink.record(
        ModelAttemptEvent(run_id="old", at=T0, step=1, attempt=Attempt(model="m", latency_ms=1))
    )
    await sink.record(
        StepFinished(
            run_id="old",
            at=T0,
            step=1,
            model="m",
            usage=Usage(input_tokens=7, output_tokens=3, cost_micros=300),
            stop_reason="end_turn",
        )
    )
    await sink.flush()
    await recover(db.sessions)
    async with db.sessions() as s:
        run = (await s.execute(select(AuditRun).where(col(AuditRun.run_id) == "old"))).scalar_one()
    assert (run.cost_micros, run.input_tokens) == (300, 7)
    await sink.record(finished("other", steps=0, cost=0))
    await sink.close()


class Stuck(RunHook):
    """Holds the run between a finished response and its step, like a slow hook."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()

    async def after_model_response(self, state: RunState, response: ModelResponse) -> None:
        if state.steps == 2:
            self.reached.set()
            await asyncio.Event().wait()


async def test_through_the_executor_a_crash_after_a_response_still_charges_it(
    db: Database,
) -> None:
    @tool
    def add(a: int, b: int) -> str:
        """Add."""
        return str(a + b)

    costs = (Usage(input_tokens=40, output_tokens=8, cost_micros=333), Usage(cost_micros=222))
    model = ScriptedModel(
        [Reply(tool_calls=[call("add", a=2, b=2)], usage=costs[0]), Reply("4", usage=costs[1])]
    )
    budget = SqlBudgetLedger(db.sessions, default_limit_micros=1_000_000)
    sink = SqlAuditSink(db.sessions, **QUIET)
    hook = Stuck()
    executor = Executor(tools=ToolRegistry([add]), audit=sink, budget=budget, hooks=[hook])
    run = asyncio.create_task(
        executor.run(
            RunnableAgent(model=model, tools=("add",)),
            Invocation([Message.user("2+2?")], caller=Caller(user_id="u1"), run_id="r1"),
        )
    )
    await hook.reached.wait()
    # What the database holds now is what survives a SIGKILL: both responses and the
    # tool call, though step 2 never finished.
    assert await _count(db, AuditToolCall) == 1
    assert await _count(db, AuditStep) == 1
    report = await recover(db.sessions, budget)
    assert (report.interrupted_runs, report.charged_micros) == (["r1"], 555)
    run.cancel()
    result = await asyncio.gather(run, return_exceptions=True)
    assert isinstance(result[0], asyncio.CancelledError)
    # The run's own settle found its reservation settled already: charged once.
    assert (await budget.status("u1")).spent_micros == 555
    async with db.sessions() as s:
        status = await s.scalar(select(col(AuditRun.status)).where(col(AuditRun.run_id) == "r1"))
    assert status in (RunStatus.CANCELLED.value, RunStatus.INTERRUPTED.value)
    await sink.close()


async def test_a_run_stopped_mid_stream_is_charged_its_input_alike_in_audit_and_ledger(
    db: Database,
) -> None:
    model = Hanging()
    budget = SqlBudgetLedger(db.sessions, default_limit_micros=5_000_000)
    sink = SqlAuditSink(db.sessions, **QUIET)
    executor = Executor(models=Tiers(standard=(model, standard)), audit=sink, budget=budget)
    cancel = asyncio.Event()
    run = asyncio.create_task(
        executor.run(
            RunnableAgent(tier="standard"),
            Invocation(
                [Message.user("Tell me about owls. " * 30)],
                caller=Caller(user_id="u1"),
                run_id="r1",
                delivery=RecordingDelivery(),
                cancel=cancel,
            ),
        )
    )
    await model.streaming.wait()
    cancel.set()
    result = await run
    (request,) = model.requests
    tokens = input_tokens(request.messages, request.tools)
    owed = standard(tokens, 0)
    assert result.status is RunStatus.CANCELLED and result.cost_micros == owed > 0
    await sink.close()
    async with db.sessions() as s:
        row = (await s.execute(select(AuditRun).where(col(AuditRun.run_id) == "r1"))).scalar_one()
        (attempt,) = (await s.execute(select(AuditModelAttempt))).scalars().all()
    assert (row.cost_micros, row.input_tokens) == (owed, tokens)
    assert (attempt.error_kind, attempt.cost_micros, attempt.input_tokens) == (
        "stopped",
        owed,
        tokens,
    )
    assert (await budget.status("u1")).spent_micros == owed


async def test_recovery_charges_the_request_a_process_died_in_as_the_run_would(
    db: Database,
) -> None:
    """SIGKILL mid-stream: no attempt follows the request; recovery charges its input
    at its price, the figure the run loop charges a request stopped in flight."""
    model = Hanging()
    budget = SqlBudgetLedger(db.sessions, default_limit_micros=5_000_000)
    sink = SqlAuditSink(db.sessions, **QUIET)
    executor = Executor(models=Tiers(standard=(model, standard)), audit=sink, budget=budget)
    run = asyncio.create_task(
        executor.run(
            RunnableAgent(tier="standard"),
            Invocation(
                [Message.user("Tell me about owls. " * 30)],
                caller=Caller(user_id="u1"),
                run_id="r1",
                delivery=RecordingDelivery(),
            ),
        )
    )
    await model.streaming.wait()
    (request,) = model.requests
    tokens = input_tokens(request.messages, request.tools)
    owed = standard(tokens, 0)
    # What the database holds now is what survives a SIGKILL.
    report = await recover(db.sessions, budget)
    assert (report.interrupted_runs, report.charged_micros) == (["r1"], owed)
    async with db.sessions() as s:
        row = (await s.execute(select(AuditRun).where(col(AuditRun.run_id) == "r1"))).scalar_one()
    assert (row.cost_micros, row.input_tokens) == (owed, tokens)
    assert (await budget.status("u1")).spent_micros == owed
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    assert (await budget.status("u1")).spent_micros == owed  # charged once
    await sink.close()


async def test_recovery_does_not_charge_a_request_that_was_answered_or_failed(
    db: Database,
) -> None:
    sink = SqlAuditSink(db.sessions, **QUIET)
    for run_id, outcome in (("answered", Usage(cost_micros=70)), ("failed", None)):
        await sink.record(started(run_id))
        await sink.record(
            ModelRequestEvent(
                run_id=run_id,
                at=T0,
                step=1,
                message_count=1,
                input_tokens=100,
                unanswered_micros=300,
                attempts_before=0,
            )
        )
        failed = outcome is None
        await sink.record(
            ModelAttemptEvent(
                run_id=run_id,
                at=T0,
                step=1,
                attempt=Attempt(
                    model="m",
                    latency_ms=1,
                    error="busy" if failed else None,
                    error_kind="overloaded" if failed else None,
                ),
                usage=outcome,
            )
        )
    report = await recover(db.sessions)
    assert sorted(report.interrupted_runs) == ["answered", "failed"]
    async with db.sessions() as s:
        costs = dict(
            (await s.execute(select(col(AuditRun.run_id), col(AuditRun.cost_micros)))).all()
        )
    assert costs == {"answered": 70, "failed": 0}


async def test_a_priced_tool_call_is_durable_at_once_and_recovery_charges_it(
    db: Database,
) -> None:
    from executor.events import ToolChargeEvent

    budget = SqlBudgetLedger(db.sessions, default_limit_micros=1_000_000)
    await budget.reserve(Caller(user_id="u1"), "r2", 50_000)
    sink = SqlAuditSink(db.sessions, **QUIET)
    await sink.record(started("r2"))
    await sink.record(
        ToolChargeEvent(
            run_id="r2",
            at=T0,
            step=1,
            call_id="c1",
            name="web_search",
            cost_micros=5_000,
            what="a Brave search ($0.005)",
        )
    )
    # No flush: the charge was written when record returned (a crash now loses nothing).
    report = await recover(db.sessions, budget)
    assert report.interrupted_runs == ["r2"] and report.charged_micros == 5_000
    assert (await budget.status("u1")).spent_micros == 5_000
    await sink.close()


async def test_a_search_the_process_died_in_is_held_not_charged_and_the_ledger_agrees(
    db: Database,
) -> None:
    """A keyed search's price is held while its request is in flight and charged only
    when the provider answers: a SIGKILL mid-request leaves no ``tool_charge`` row, so
    recovery charges what the model cost, and the ledger says the same."""
    from executor.tools.search import BraveSearch, web_search_tool
    from tests.executor.tools.search_fakes import FakeSearch

    search = FakeSearch()
    search.hang.add("brave")
    await search.start()
    budget = SqlBudgetLedger(db.sessions, default_limit_micros=1_000_000)
    sink = SqlAuditSink(db.sessions, **QUIET)
    model = ScriptedModel(
        [
            Reply(tool_calls=[call("web_search", query="pep 703")], usage=Usage(cost_micros=300)),
            Reply("found it", usage=Usage(cost_micros=200)),
        ]
    )
    registry = ToolRegistry([web_search_tool([BraveSearch("brave-key", 5_000, search.brave_url)])])
    executor = Executor(tools=registry, audit=sink, budget=budget)
    run = asyncio.create_task(
        executor.run(
            RunnableAgent(model=model, tools=("web_search",)),
            Invocation([Message.user("pep 703?")], caller=Caller(user_id="u1"), run_id="r1"),
        )
    )
    try:
        await search.asked.wait()
        held = await budget.status("u1")
        assert held.spent_micros == 0 and held.reserved_micros >= 300 + 5_000
        # What the database holds now is what survives a SIGKILL.
        report = await recover(db.sessions, budget)
        assert (report.interrupted_runs, report.charged_micros) == (["r1"], 300)
        async with db.sessions() as s:
            cost = await s.scalar(
                select(col(AuditRun.cost_micros)).where(col(AuditRun.run_id) == "r1")
            )
        status = await budget.status("u1")
        assert cost == status.spent_micros == 300 and status.reserved_micros == 0
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await search.stop()
    assert (await budget.status("u1")).spent_micros == 300  # charged once
    await sink.close()


async def test_a_mid_stream_failover_is_charged_alike_in_audit_rows_and_ledger(
    db: Database,
) -> None:
    """The candidate that failed mid-stream is charged on its attempt row; the run's row,
    the attempt rows and the ledger say the same."""
    from executor.models.base import TextDelta
    from executor.models.fallback import FallbackModel
    from tests.executor.test_run_billing_edges import Breaks

    first = Breaks("test:first", (TextDelta("Owls are "),))
    answer = ScriptedModel(default=Reply(text="Owls are birds.", usage=Usage(cost_micros=500)))
    model = FallbackModel([first, answer], name="tier:standard")
    budget = SqlBudgetLedger(db.sessions, default_limit_micros=5_000_000)
    sink = SqlAuditSink(db.sessions, **QUIET)
    executor = Executor(models=Tiers(standard=(model, standard)), audit=sink, budget=budget)
    result = await executor.run(
        RunnableAgent(tier="standard"),
        Invocation(
            [Message.user("Tell me about owls. " * 20)],
            caller=Caller(user_id="u1"),
            run_id="r1",
            delivery=RecordingDelivery(),
        ),
    )
    await sink.close()
    (request,) = first.requests
    owed = standard(input_tokens(request.messages, request.tools), 0)
    assert result.status is RunStatus.OK and result.cost_micros == owed + 500
    async with db.sessions() as s:
        run_cost = await s.scalar(
            select(col(AuditRun.cost_micros)).where(col(AuditRun.run_id) == "r1")
        )
        rows = (
            await s.execute(
                select(col(AuditModelAttempt.error_kind), col(AuditModelAttempt.cost_micros))
                .where(col(AuditModelAttempt.run_id) == "r1")
                .order_by(col(AuditModelAttempt.id))
            )
        ).all()
    assert [tuple(r) for r in rows] == [("overloaded", owed), (None, 500)]
    assert run_cost == owed + 500 == (await budget.status("u1")).spent_micros


def _failing_over(
    db: Database, backup: Any, limit: int = 5_000_000
) -> tuple[Executor, SqlBudgetLedger, SqlAuditSink, Any]:
    """A tier whose first candidate fails mid-stream (billed), then ``backup``."""
    from executor.models.base import TextDelta
    from executor.models.fallback import FallbackModel
    from tests.executor.test_run_billing_edges import Breaks

    first = Breaks("test:first", (TextDelta("Owls are "),))
    model = FallbackModel([first, backup], name="tier:standard")
    budget = SqlBudgetLedger(db.sessions, default_limit_micros=limit)
    sink = SqlAuditSink(db.sessions, **QUIET)
    executor = Executor(models=Tiers(standard=(model, standard)), audit=sink, budget=budget)
    return executor, budget, sink, first


def _owls(**extra: Any) -> Invocation:
    return Invocation(
        [Message.user("Tell me about owls. " * 20)],
        caller=Caller(user_id="u1"),
        run_id="r1",
        delivery=RecordingDelivery(),
        **extra,
    )


async def _attempt_rows(db: Database) -> list[tuple[Any, ...]]:
    async with db.sessions() as s:
        rows = await s.execute(
            select(col(AuditModelAttempt.error_kind), col(AuditModelAttempt.cost_micros))
            .where(col(AuditModelAttempt.run_id) == "r1")
            .order_by(col(AuditModelAttempt.id))
        )
        return [tuple(r) for r in rows.all()]


async def _run_cost(db: Database) -> int | None:
    async with db.sessions() as s:
        return await s.scalar(select(col(AuditRun.cost_micros)).where(col(AuditRun.run_id) == "r1"))


async def test_a_crash_while_the_backup_streams_is_charged_both_candidates(
    db: Database,
) -> None:
    """SIGKILL after a mid-stream failover, the backup streaming: the failed attempt's
    row (with its charge) and the request to the backup are in the database already,
    so recovery charges both candidates, as the run loop would."""
    backup = Hanging()
    executor, budget, sink, first = _failing_over(db, backup)
    run = asyncio.create_task(executor.run(RunnableAgent(tier="standard"), _owls()))
    await backup.streaming.wait()
    (request,) = first.requests
    owed = standard(input_tokens(request.messages, request.tools), 0)
    # What the database holds now is what survives a SIGKILL.
    assert await _attempt_rows(db) == [("overloaded", owed)]
    report = await recover(db.sessions, budget)
    assert (report.interrupted_runs, report.charged_micros) == (["r1"], 2 * owed)
    assert await _run_cost(db) == 2 * owed == (await budget.status("u1")).spent_micros
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    assert (await budget.status("u1")).spent_micros == 2 * owed  # charged once
    await sink.close()


async def test_a_cancel_while_the_backup_streams_is_charged_both_in_rows_and_ledger(
    db: Database,
) -> None:
    backup = Hanging()
    executor, budget, sink, first = _failing_over(db, backup)
    cancel = asyncio.Event()
    run = asyncio.create_task(executor.run(RunnableAgent(tier="standard"), _owls(cancel=cancel)))
    await backup.streaming.wait()
    cancel.set()  # the member stops the run while the backup streams
    result = await run
    await sink.close()
    (request,) = first.requests
    owed = standard(input_tokens(request.messages, request.tools), 0)
    assert result.status is RunStatus.CANCELLED and result.cost_micros == 2 * owed > 0
    assert await _attempt_rows(db) == [("overloaded", owed), ("stopped", owed)]
    assert await _run_cost(db) == 2 * owed == (await budget.status("u1")).spent_micros


async def test_a_failover_the_ledger_cannot_cover_stops_before_the_backup(
    db: Database,
) -> None:
    """A member whose limit covers the first call's worst case but not that plus the
    failed candidate's charge: the backup is never asked; the run is charged the
    failed candidate alone, alike in the rows and the ledger, within the limit."""
    agent = RunnableAgent(tier="standard")
    bounds = agent.bounds
    tokens = input_tokens([Message.system(agent.system_prompt), *_owls().messages], [])
    worst = standard(tokens, min(bounds.max_tokens_per_response, bounds.max_output_tokens))
    backup = ScriptedModel(default=Reply(text="Owls are birds.", usage=Usage(cost_micros=500)))
    limit = worst + standard(tokens, 0) - 1
    executor, budget, sink, _ = _failing_over(db, backup, limit=limit)
    result = await executor.run(agent, _owls())
    await sink.close()
    assert result.status is RunStatus.BUDGET_EXHAUSTED
    assert backup.requests == []
    owed = standard(tokens, 0)
    assert result.cost_micros == owed
    assert await _attempt_rows(db) == [("overloaded", owed)]
    status = await budget.status("u1")
    assert await _run_cost(db) == owed == status.spent_micros <= limit
    assert status.reserved_micros == 0
