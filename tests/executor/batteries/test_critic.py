from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from executor.agent import Bounds, Caller, Invocation, RunnableAgent, RunResult, RunStatus
from executor.critic import (
    CriticConfig,
    CriticState,
    IllegalTransition,
    RunWatch,
    WatchdogCritic,
)
from executor.events import (
    CriticVerdictEvent,
    ModelAttemptEvent,
    ModelRequestEvent,
    StepFinished,
    ToolCallStarted,
)
from executor.messages import Message, Usage
from executor.models.base import (
    DEFAULT_PROFILE,
    ModelProfile,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    TextDelta,
)
from executor.ports import Escalation, NullDelivery, RunControl
from executor.run import Executor
from executor.testing import AuditCapture, FakeClock, RecordingDelivery, Reply, ScriptedModel, call
from executor.tools.registry import ToolRegistry


class Escalations:
    def __init__(self) -> None:
        self.got: list[Escalation] = []

    async def escalate(self, escalation: Escalation) -> None:
        self.got.append(escalation)


class Gated:
    """Streams "partial " then waits for its gate before finishing."""

    name = "test:gated"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    @property
    def profile(self) -> ModelProfile:
        return DEFAULT_PROFILE

    async def generate(self, request: ModelRequest) -> ModelResponse:
        self.started.set()
        await self.gate.wait()
        return ModelResponse(
            message=Message.assistant("partial done"), usage=Usage(), model=self.name
        )

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        self.started.set()
        yield TextDelta("partial ")
        await self.gate.wait()
        yield ResponseDone(
            ModelResponse(message=Message.assistant("partial done"), usage=Usage(), model=self.name)
        )


def _setup(
    config: CriticConfig, **agent: Any
) -> tuple[FakeClock, WatchdogCritic, Escalations, AuditCapture, Executor]:
    clock = FakeClock()
    esc = Escalations()
    audit = AuditCapture()
    critic = WatchdogCritic(config, clock=clock, escalator=esc)
    reg = ToolRegistry()

    @reg.register
    async def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    ex = Executor(critic=critic, clock=clock, audit=audit, tools=reg)
    return clock, critic, esc, audit, ex


def _verdicts(audit: AuditCapture) -> list[tuple[str, str]]:
    return [(e.verdict, e.state) for e in audit.of_type(CriticVerdictEvent)]


async def _drive(clock: FakeClock, task: asyncio.Task[RunResult], step: float = 1.0) -> RunResult:
    for _ in range(10_000):
        if task.done():
            return task.result()
        await clock.advance(step)
    raise AssertionError("the run never ended")


async def test_warns_at_the_soft_limit_then_the_run_finishes() -> None:
    clock, critic, esc, audit, ex = _setup(CriticConfig(soft_runtime_s=10, hard_runtime_s=100))
    model = Gated()
    delivery = RecordingDelivery()
    task = asyncio.create_task(
        ex.run(RunnableAgent(model=model), Invocation([Message.user("go")], delivery=delivery))
    )
    await model.started.wait()
    await clock.wait_for_sleepers(2)  # the run's deadline and the critic's timer
    await clock.advance(10)
    assert ("status", "still working: step 1, 10 s") in delivery.log
    watch = critic.watches[next(iter(critic.watches))]
    assert watch.state is CriticState.WARNED
    model.gate.set()
    result = await task
    assert result.status is RunStatus.OK
    assert _verdicts(audit) == [("warn", "warned")]
    assert watch.history == [
        CriticState.WATCHING,
        CriticState.SOFT_EXCEEDED,
        CriticState.WARNED,
        CriticState.DONE,
    ]
    assert esc.got == [] and critic.watches == {}


async def test_hard_limit_kills_and_delivers_the_partial_output() -> None:
    clock, _critic, esc, audit, ex = _setup(CriticConfig(soft_runtime_s=10, hard_runtime_s=30))
    model = Gated()
    delivery = RecordingDelivery()
    task = asyncio.create_task(
        ex.run(
            RunnableAgent(model=model, name="digest"),
            Invocation([Message.user("go")], delivery=delivery, caller=Caller(user_id="u1")),
        )
    )
    await model.started.wait()
    for _ in range(3):
        await clock.wait_for_sleepers(2)
        await clock.advance(10)
    result = await task
    assert result.status is RunStatus.KILLED
    assert result.output == "partial "
    assert result.note == "Stopped by the critic: the run passed the critic's hard limit of 30 s."
    assert delivery.result is result
    assert _verdicts(audit) == [("warn", "warned"), ("warn", "warned"), ("kill", "stopping")]
    kinds = audit.kinds(result.run_id)
    # The kill is recorded, and so is the request it stopped in flight, before the end.
    assert kinds[-1] == "RunFinished"
    assert sorted(kinds[-3:-1]) == ["CriticVerdictEvent", "ModelAttemptEvent"]
    [stopped] = audit.of_type(ModelAttemptEvent)
    assert stopped.attempt.error_kind == "stopped" and stopped.usage is not None
    [e] = esc.got
    assert (e.action, e.agent, e.caller.user_id, e.elapsed_s) == ("kill", "digest", "u1", 30)


async def test_repeating_the_same_tool_call_is_stopped_at_the_soft_step_limit() -> None:
    clock, _critic, esc, audit, ex = _setup(
        CriticConfig(soft_runtime_s=1000, soft_steps=3, hard_runtime_s=10_000)
    )
    same = call("add", a=1, b=1)
    model = ScriptedModel(default=Reply(tool_calls=[same], latency_s=1), sleep=clock.sleep)
    task = asyncio.create_task(
        ex.run(
            RunnableAgent(model=model, tools=("add",), bounds=Bounds(max_steps=20)),
            Invocation([Message.user("go")]),
        )
    )
    result = await _drive(clock, task)
    assert result.status is RunStatus.KILLED
    assert result.steps == 4  # stopped during the fourth request
    assert 'the same tool call add({"a": 1, "b": 1}) 3 times' in (result.error or "")
    assert _verdicts(audit) == [("stop", "stopping")]
    assert [e.action for e in esc.got] == ["stop"]


async def test_agent_bounds_override_the_soft_limits() -> None:
    clock, critic, _esc, audit, ex = _setup(CriticConfig(soft_runtime_s=1000, hard_factor=3))
    model = Gated()
    task = asyncio.create_task(
        ex.run(
            RunnableAgent(model=model, bounds=Bounds(soft_runtime_s=5)),
            Invocation([Message.user("go")]),
        )
    )
    await model.started.wait()
    await clock.wait_for_sleepers(2)
    watch = next(iter(critic.watches.values()))
    assert (watch.soft_at_s, watch.hard_s) == (5, 15)
    await clock.advance(5)
    assert _verdicts(audit) == [("warn", "warned")]
    model.gate.set()
    assert (await task).ok


async def test_judge_says_continue_with_more_time_then_stop() -> None:
    judge = ScriptedModel(
        [
            '{"progress": true, "reason": "found 3 of 5 sources", "more_seconds": 20}',
            '{"progress": false, "reason": "going in circles"}',
        ],
        name="test:judge",
    )
    clock, _critic, esc, audit, ex = _setup(
        CriticConfig(soft_runtime_s=10, hard_runtime_s=1000, judge=judge)
    )
    model = Gated()
    task = asyncio.create_task(ex.run(RunnableAgent(model=model), Invocation([Message.user("go")])))
    await model.started.wait()
    await clock.wait_for_sleepers(2)
    await clock.advance(10)
    assert _verdicts(audit) == [("continue", "watching")]
    await clock.wait_for_sleepers(2)
    await clock.advance(19)
    assert len(judge.requests) == 1  # the new soft limit is 30 s
    await clock.advance(1)
    result = await task
    assert result.status is RunStatus.KILLED and result.error == "going in circles"
    assert _verdicts(audit) == [("continue", "watching"), ("stop", "stopping")]
    assert audit.of_type(CriticVerdictEvent)[0].reason == "found 3 of 5 sources"
    assert "Is it making progress?" in judge.requests[0].messages[-1].text
    assert [e.action for e in esc.got] == ["stop"]


async def test_a_failing_judge_means_a_warning() -> None:
    judge = ScriptedModel(default="no json here", name="test:judge")
    clock, _critic, _esc, audit, ex = _setup(
        CriticConfig(soft_runtime_s=10, hard_runtime_s=1000, judge=judge)
    )
    model = Gated()
    task = asyncio.create_task(ex.run(RunnableAgent(model=model), Invocation([Message.user("go")])))
    await model.started.wait()
    await clock.wait_for_sleepers(2)
    await clock.advance(10)
    assert _verdicts(audit) == [("warn", "warned")]
    assert "StructuredOutputError" in audit.of_type(CriticVerdictEvent)[0].reason
    model.gate.set()
    assert (await task).ok


def _control(stops: list[tuple[str, RunStatus]], usage: Usage | None = None) -> RunControl:
    return RunControl(
        run_id="r1",
        agent=RunnableAgent(),
        caller=Caller(),
        started_monotonic=0.0,
        delivery=NullDelivery(),
        stop=lambda reason, status: stops.append((reason, status)),
        usage_fn=lambda: usage or Usage(),
    )


async def _feed(watch: RunWatch, steps: list[list[tuple[str, dict[str, Any]]]]) -> None:
    from datetime import UTC, datetime

    at = datetime(2026, 1, 1, tzinfo=UTC)
    for i, calls in enumerate(steps, start=1):
        await watch.on_event(ModelRequestEvent(run_id="r1", at=at, step=i, message_count=1))
        await watch.on_event(
            StepFinished(run_id="r1", at=at, step=i, model="m", usage=Usage(), stop_reason="x")
        )
        for name, args in calls:
            await watch.on_event(
                ToolCallStarted(run_id="r1", at=at, step=i, call_id="c", name=name, arguments=args)
            )
    await watch.on_event(
        ModelRequestEvent(run_id="r1", at=at, step=len(steps) + 1, message_count=1)
    )


async def test_stale_steps_signal() -> None:
    critic = WatchdogCritic(
        CriticConfig(repeat_limit=10, stale_steps=2, soft_steps=100), clock=FakeClock()
    )
    watch = critic.watch(_control([]))
    a, b = ("search", {"q": "x"}), ("read", {"url": "u"})
    await _feed(watch, [[a], [b]])
    assert watch.signals() is None
    await _feed(watch, [[a], [b], [a], [b]])
    verdict = watch.signals()
    assert verdict is not None and verdict.verdict == "stop"
    assert "added nothing new" in verdict.reason
    await watch.close()
    assert watch.state is CriticState.DONE


async def test_burn_rate_signal() -> None:
    clock = FakeClock()
    critic = WatchdogCritic(CriticConfig(max_tokens_per_s=100), clock=clock)
    watch = critic.watch(_control([], Usage(input_tokens=5000)))
    await clock.advance(10)
    verdict = watch.signals()
    assert verdict is not None and "500 tokens/s" in verdict.reason
    await watch.close()


async def test_the_state_machine_refuses_moves_it_does_not_have() -> None:
    watch = WatchdogCritic(clock=FakeClock()).watch(_control([]))
    with pytest.raises(IllegalTransition):
        watch._move(CriticState.WARNED)
    await watch.close()
    with pytest.raises(IllegalTransition):
        watch._move(CriticState.WATCHING)


async def test_an_escalator_that_fails_does_not_break_the_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        async def escalate(self, escalation: Escalation) -> None:
            raise RuntimeError("admin channel gone")

    clock = FakeClock()
    critic = WatchdogCritic(CriticConfig(soft_runtime_s=1, hard_runtime_s=2), clock=clock)
    critic.escalator = Broken()
    model = Gated()
    task = asyncio.create_task(
        Executor(critic=critic, clock=clock).run(
            RunnableAgent(model=model), Invocation([Message.user("go")])
        )
    )
    await model.started.wait()
    await _drive(clock, task)
    assert task.result().status is RunStatus.KILLED
    assert "escalating run" in caplog.text
