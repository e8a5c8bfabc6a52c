"""The audit sink contract, run against the in-memory sink, SQLite and PostgreSQL.

Each implementation comes with a reader that turns what it stored into one neutral
view, so the same assertions hold for all of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from adapters.storage.audit_queries import AuditQueries
from adapters.storage.audit_sink import SqlAuditSink
from adapters.storage.db import Database
from executor.agent import Caller, Invocation, RunnableAgent, RunResult, RunStatus
from executor.budget import InMemoryBudgetLedger
from executor.events import (
    ApprovalEvent,
    CompactionEvent,
    CriticVerdictEvent,
    ModelAttemptEvent,
    ModelRequestEvent,
    RunFinished,
    RunStarted,
    StepFinished,
    ToolCallFinished,
    ToolCallStarted,
)
from executor.messages import Message, Usage
from executor.models.base import Attempt
from executor.ports import AuditSink, InMemoryAuditSink
from executor.run import Executor
from executor.testing import ScriptedModel, call
from executor.tools.registry import ToolRegistry

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class RunView:
    status: str
    user_id: str
    trigger: str
    steps: int = 0
    cost_micros: int = 0
    step_costs: list[int] = field(default_factory=list)
    attempts: list[tuple[str, str | None]] = field(default_factory=list)
    tools: list[tuple[str, bool]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)


Reader = Callable[[str], Awaitable[RunView | None]]


def memory_reader(sink: InMemoryAuditSink) -> Reader:
    kind_names = {
        ModelRequestEvent: "model_request",
        CompactionEvent: "compaction",
        CriticVerdictEvent: "critic_verdict",
        ApprovalEvent: "approval",
    }

    async def read(run_id: str) -> RunView | None:
        events = sink.for_run(run_id)
        started = next((e for e in events if isinstance(e, RunStarted)), None)
        if started is None:
            return None
        view = RunView(status="running", user_id=started.caller.user_id, trigger=started.trigger)
        for e in events:
            if isinstance(e, StepFinished):
                view.step_costs.append(e.usage.cost_micros)
            elif isinstance(e, ModelAttemptEvent):
                view.attempts.append((e.attempt.model, e.attempt.error_kind))
            elif isinstance(e, ToolCallFinished):
                view.tools.append((e.name, e.is_error))
            elif isinstance(e, RunFinished):
                view.status = e.result.status.value
                view.steps = e.result.steps
                view.cost_micros = e.result.cost_micros
            elif type(e) in kind_names:
                view.kinds.append(kind_names[type(e)])
        return view

    return read


def sql_reader(queries: AuditQueries) -> Reader:
    async def read(run_id: str) -> RunView | None:
        detail = await queries.get_run(run_id)
        if detail is None:
            return None
        r = detail.run
        return RunView(
            status=r.status,
            user_id=r.user_id,
            trigger=r.trigger,
            steps=r.steps,
            cost_micros=r.cost_micros,
            step_costs=[s.cost_micros for s in detail.steps],
            attempts=[(a.model, a.error_kind) for a in detail.attempts],
            tools=[(t.name, t.is_error) for t in detail.tool_calls],
            kinds=[e.kind for e in detail.events],
        )

    return read


@dataclass
class Harness:
    sink: Any
    read: Reader
    flush: Callable[[], Awaitable[None]]


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return None
    return request.getfixturevalue("sqlite_db" if request.param == "sqlite" else "pg_db")


@pytest.fixture
async def harness(backend: Database | None) -> AsyncIterator[Harness]:
    if backend is None:
        mem = InMemoryAuditSink()

        async def nothing() -> None:
            return None

        yield Harness(mem, memory_reader(mem), nothing)
        return
    # A large batch and interval: nothing but the contract makes rows durable.
    sink = SqlAuditSink(backend.sessions, batch_size=100_000, flush_interval_s=3600)
    try:
        yield Harness(sink, sql_reader(AuditQueries(backend.sessions)), sink.flush)
    finally:
        await sink.close()


def started(run_id: str, user: str = "u1", at: datetime = T0, **kw: Any) -> RunStarted:
    return RunStarted(
        run_id=run_id,
        at=at,
        agent="assistant",
        tier="standard",
        trigger=kw.pop("trigger", "chat"),
        caller=Caller(user_id=user, guild_id="g1", channel_id="c1"),
        prompt_excerpt="what is 2+2?",
        estimate_micros=5_000,
        **kw,
    )


def finished(
    run_id: str, *, steps: int, cost: int, status: RunStatus = RunStatus.OK
) -> RunFinished:
    return RunFinished(
        run_id=run_id,
        at=T0 + timedelta(seconds=5),
        result=RunResult(
            run_id=run_id,
            status=status,
            output="4",
            steps=steps,
            usage=Usage(input_tokens=100, output_tokens=10, cost_micros=cost),
        ),
    )


async def full_run(sink: Any, run_id: str, user: str = "u1") -> None:
    at = T0
    for event in (
        started(run_id, user),
        ModelRequestEvent(run_id=run_id, at=at, step=1, message_count=1),
        ModelAttemptEvent(
            run_id=run_id,
            at=at,
            step=1,
            attempt=Attempt(model="a:1", latency_ms=3, error="busy", error_kind="overloaded"),
        ),
        ModelAttemptEvent(run_id=run_id, at=at, step=1, attempt=Attempt(model="b:1", latency_ms=9)),
        StepFinished(
            run_id=run_id,
            at=at,
            step=1,
            model="b:1",
            usage=Usage(cost_micros=700),
            stop_reason="tool_use",
            tool_calls=1,
        ),
        ToolCallStarted(run_id=run_id, at=at, step=1, call_id="c1", name="add", arguments={"a": 2}),
        ToolCallFinished(
            run_id=run_id,
            at=at,
            step=1,
            call_id="c1",
            name="add",
            arguments={"a": 2, "api_key": "sk-abcdefghijklmnop"},
            result="4",
            is_error=False,
            duration_ms=1.5,
        ),
        ApprovalEvent(run_id=run_id, at=at, tool="post", call_id="c2", approved=False, reason="no"),
        CompactionEvent(
            run_id=run_id, at=at, tokens_before=9000, tokens_after=900, model="b:1", usage=Usage()
        ),
        ModelRequestEvent(run_id=run_id, at=at, step=2, message_count=3),
        ModelAttemptEvent(run_id=run_id, at=at, step=2, attempt=Attempt(model="b:1", latency_ms=4)),
        StepFinished(
            run_id=run_id,
            at=at,
            step=2,
            model="b:1",
            usage=Usage(cost_micros=300),
            stop_reason="end_turn",
        ),
        CriticVerdictEvent(
            run_id=run_id, at=at, verdict="continue", reason="fine", state="ok", step=2
        ),
        finished(run_id, steps=2, cost=1_000),
    ):
        await sink.record(event)


EXPECTED = RunView(
    status="ok",
    user_id="u1",
    trigger="chat",
    steps=2,
    cost_micros=1_000,
    step_costs=[700, 300],
    attempts=[("a:1", "overloaded"), ("b:1", None), ("b:1", None)],
    tools=[("add", False)],
    kinds=["model_request", "approval", "compaction", "model_request", "critic_verdict"],
)


async def test_is_an_audit_sink(harness: Harness) -> None:
    assert isinstance(harness.sink, AuditSink)


async def test_a_run_is_a_row_from_the_moment_it_starts(harness: Harness) -> None:
    await harness.sink.record(started("r1"))
    view = await harness.read("r1")
    assert view is not None and view.status == "running" and view.user_id == "u1"


async def test_run_finished_is_durable_with_everything_under_it(harness: Harness) -> None:
    await full_run(harness.sink, "r1")
    assert await harness.read("r1") == EXPECTED


async def test_events_between_start_and_finish_are_kept_in_order(harness: Harness) -> None:
    await harness.sink.record(started("r1"))
    await harness.sink.record(
        StepFinished(
            run_id="r1", at=T0, step=1, model="m", usage=Usage(cost_micros=5), stop_reason="x"
        )
    )
    await harness.flush()
    view = await harness.read("r1")
    assert view is not None and view.status == "running" and view.step_costs == [5]


async def test_interleaved_concurrent_runs(harness: Harness) -> None:
    await asyncio.gather(*(full_run(harness.sink, f"r{i}", user=f"u{i % 3}") for i in range(30)))
    for i in range(30):
        view = await harness.read(f"r{i}")
        assert view is not None
        assert view == RunView(**(EXPECTED.__dict__ | {"user_id": f"u{i % 3}"}))


async def test_through_the_executor(harness: Harness) -> None:
    tools = ToolRegistry()

    @tools.register
    async def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    model = ScriptedModel([call("add", a=2, b=2), "4"])
    agent = RunnableAgent(model=model, tools=("add",))
    result = await Executor(audit=harness.sink, tools=tools).run(
        agent, Invocation(messages=[Message.user("2+2?")], trigger="slash")
    )
    assert result.status is RunStatus.OK
    view = await harness.read(result.run_id)
    assert view is not None
    assert (view.status, view.trigger, view.steps, view.tools) == (
        "ok",
        "slash",
        2,
        [("add", False)],
    )
    assert len(view.step_costs) == 2


async def test_a_refused_run_still_has_its_row(harness: Harness) -> None:
    budget = InMemoryBudgetLedger(0)
    await budget.settle(await budget.reserve(Caller(user_id="local"), "x", 0), 1)  # over limit
    result = await Executor(audit=harness.sink, budget=budget).run(
        RunnableAgent(model=ScriptedModel(["never"])), Invocation(messages=[Message.user("hi")])
    )
    assert result.status is RunStatus.BUDGET_DENIED
    view = await harness.read(result.run_id)
    assert view is not None and (view.status, view.steps) == ("budget_denied", 0)
