from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from executor.agent import Bounds, Caller, Invocation, Privilege, RunnableAgent, RunStatus
from executor.errors import BudgetDetails, BudgetExceeded, Overloaded, RunRefused
from executor.hooks import RunHook, RunState
from executor.messages import Message
from executor.ports import ApprovalDecision, ApprovalRequest, Reservation
from executor.run import Executor
from executor.testing import (
    AuditCapture,
    FakeClock,
    FunctionModel,
    RecordingDelivery,
    Reply,
    ScriptedModel,
    call,
)
from executor.tools.registry import Tool, ToolContext, ToolRegistry


def _registry() -> ToolRegistry:
    reg = ToolRegistry()

    @reg.register
    async def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    # `register(**options)` returns Any; say what the decorator it returns does.
    admin_only: Callable[[Callable[..., Any]], Tool] = reg.register(min_privilege=Privilege.ADMIN)
    needs_approval: Callable[[Callable[..., Any]], Tool] = reg.register(requires_approval=True)

    @admin_only
    async def wipe(ctx: ToolContext) -> str:
        """Dangerous."""
        return f"wiped by {ctx.caller.user_id}"

    @needs_approval
    async def post(text: str) -> str:
        """Post something."""
        return f"posted {text}"

    return reg


def _inv(text: str = "hi", **kw: object) -> Invocation:
    return Invocation(messages=[Message.user(text)], **kw)  # type: ignore[arg-type]


async def test_plain_answer_and_events() -> None:
    audit = AuditCapture()
    model = ScriptedModel(["hello there"])
    result = await Executor(audit=audit).run(RunnableAgent(model=model), _inv())
    assert result.status is RunStatus.OK
    assert result.output == "hello there"
    assert result.steps == 1
    assert result.model == "test:scripted"
    assert [a.error for a in result.attempts] == [None]
    assert audit.kinds(result.run_id) == [
        "RunStarted",
        "ModelRequestEvent",
        "ModelAttemptEvent",
        "StepFinished",
        "RunFinished",
    ]
    # the system prompt leads the request; the history follows
    req = model.requests[0]
    assert req.messages[0].role == "system"
    assert req.messages[-1].text == "hi"


async def test_tool_loop_bad_arguments_go_back_to_the_model() -> None:
    model = ScriptedModel([call("add", a=1, b="x"), call("add", a=2, b=3), "five"])
    result = await Executor(tools=_registry()).run(
        RunnableAgent(model=model, tools=("add",)), _inv()
    )
    assert result.status is RunStatus.OK and result.output == "five"
    first_result = model.requests[1].messages[-1].tool_results[0]
    assert first_result.is_error and "b" in first_result.content
    second_result = model.requests[2].messages[-1].tool_results[0]
    assert second_result.content == "5" and not second_result.is_error
    # only granted tools are offered
    assert [t.name for t in model.requests[0].tools] == ["add"]


async def test_privilege_and_grant_are_enforced() -> None:
    model = ScriptedModel([call("wipe"), call("add", a=1, b=1), "done"])
    result = await Executor(tools=_registry()).run(
        RunnableAgent(model=model, tools=("wipe",)), _inv(caller=Caller(privilege=Privilege.USER))
    )
    assert result.status is RunStatus.OK
    assert "needs admin privilege" in model.requests[1].messages[-1].tool_results[0].content
    assert "not granted" in model.requests[2].messages[-1].tool_results[0].content
    assert model.requests[0].tools == []  # not offered either


async def test_approval_denied_goes_back_to_the_model_and_approved_runs() -> None:
    class Approver:
        def __init__(self) -> None:
            self.asked: list[ApprovalRequest] = []

        async def approve(self, request: ApprovalRequest) -> ApprovalDecision:
            self.asked.append(request)
            return ApprovalDecision(approved=len(self.asked) > 1, reason="nope")

    approver = Approver()
    audit = AuditCapture()
    model = ScriptedModel([call("post", text="a"), call("post", text="b"), "ok"])
    result = await Executor(tools=_registry(), approver=approver, audit=audit).run(
        RunnableAgent(model=model, tools=("post",)), _inv()
    )
    assert result.status is RunStatus.OK
    assert model.requests[1].messages[-1].tool_results[0].content == "denied: nope"
    assert model.requests[2].messages[-1].tool_results[0].content == "posted b"
    assert [
        e.approved for e in audit.of_type(__import__("executor.events").events.ApprovalEvent)
    ] == [
        False,
        True,
    ]


async def test_step_limit() -> None:
    model = ScriptedModel(default=call("add", a=1, b=1))
    result = await Executor(tools=_registry()).run(
        RunnableAgent(model=model, tools=("add",), bounds=Bounds(max_steps=3)), _inv()
    )
    assert result.status is RunStatus.STEP_LIMIT
    assert result.steps == 3
    assert "3 steps" in (result.note or "")


async def test_runtime_bound_even_when_the_provider_hangs() -> None:
    clock = FakeClock()
    hang = asyncio.Event()

    class Hanging(ScriptedModel):
        async def generate(self, request):  # type: ignore[no-untyped-def]
            await hang.wait()
            raise AssertionError("unreachable")

    delivery = RecordingDelivery()
    ex = Executor(clock=clock)
    task = asyncio.create_task(
        ex.run(RunnableAgent(model=Hanging(), bounds=Bounds(max_runtime_s=30)), _inv(delivery=None))
    )
    await clock.wait_for_sleepers(1)
    await clock.advance(30)
    result = await task
    assert result.status is RunStatus.TIMEOUT
    assert "30 s" in (result.error or "")
    assert delivery.result is None  # no delivery given: nothing delivered


async def test_runs_share_the_real_clocks_time_limit_timers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 19: runs whose time limits fall in the same tick (1/64 of the limit) share
    one loop timer, so 100 runs, whether they wait or not, do not leave a timer each in
    the loop's heap; a run that waits still stops at its limit."""
    loop = asyncio.get_running_loop()
    timers: list[float] = []
    call_at = loop.call_at

    def counted(when: float, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        timers.append(when)
        return call_at(when, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counted)
    ex = Executor()
    agent = RunnableAgent(model=ScriptedModel(default="hi"))
    alone = [await ex.run(agent, _inv()) for _ in range(50)]

    async def waits(request: Any) -> str:
        await asyncio.sleep(0)
        return "hi"

    waiting = RunnableAgent(model=FunctionModel(waits))
    together = await asyncio.gather(*(ex.run(waiting, _inv()) for _ in range(50)))
    assert all(r.ok for r in alone + together)
    # 300 s limits, 4.7 s ticks: one timer, two if the runs straddle a tick.
    assert 1 <= len(timers) <= 2

    class Hanging(ScriptedModel):
        async def generate(self, request):  # type: ignore[no-untyped-def]
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    timers.clear()
    started = loop.time()
    result = await ex.run(
        RunnableAgent(model=Hanging(), bounds=Bounds(max_runtime_s=0.05)), _inv(delivery=None)
    )
    assert result.status is RunStatus.TIMEOUT
    assert len(timers) == 1 and timers[0] == pytest.approx(started + 0.05, abs=0.05)


async def test_the_request_parts_are_built_once_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = _registry()
    asked: list[str] = []
    available = registry.available

    def counted(granted: Any, privilege: Privilege) -> list[Tool]:
        asked.append("x")
        return available(granted, privilege)

    monkeypatch.setattr(registry, "available", counted)
    model = ScriptedModel([Reply(tool_calls=[call("add", a=1, b=2)]), "3"])
    result = await Executor(tools=registry).run(
        RunnableAgent(model=model, system_prompt="Be brief.", tools=("add",)), _inv()
    )
    assert result.ok and len(asked) == 1
    assert [m.role for m in model.requests[1].messages][:1] == ["system"]
    assert [t.name for t in model.requests[1].tools] == ["add"]


async def test_caller_cancellation_settles_the_budget() -> None:
    cancel = asyncio.Event()
    started = asyncio.Event()

    class Slow(ScriptedModel):
        async def generate(self, request):  # type: ignore[no-untyped-def]
            started.set()
            await asyncio.Event().wait()
            raise AssertionError

    class Budget:
        def __init__(self) -> None:
            self.settled: list[int] = []

        async def reserve(self, caller: Caller, run_id: str, estimate: int) -> Reservation:
            return Reservation(run_id, caller, estimate)

        async def grow(self, reservation: Reservation, amount: int) -> Reservation:
            return reservation

        async def settle(self, reservation: Reservation, cost: int) -> None:
            self.settled.append(cost)

    budget = Budget()
    task = asyncio.create_task(
        Executor(budget=budget).run(RunnableAgent(model=Slow()), _inv(cancel=cancel))
    )
    await started.wait()
    cancel.set()
    result = await task
    assert result.status is RunStatus.CANCELLED
    assert budget.settled == [0]


async def test_budget_denied_never_calls_the_model() -> None:
    class Broke:
        async def reserve(self, caller: Caller, run_id: str, estimate: int) -> Reservation:
            raise BudgetExceeded(BudgetDetails(5_000_000, 0, 10, 5_000_000))

        async def grow(self, reservation: Reservation, amount: int) -> Reservation:
            raise AssertionError("nothing to grow")

        async def settle(self, reservation: Reservation, cost: int) -> None:
            raise AssertionError("nothing to settle")

    model = ScriptedModel()
    audit = AuditCapture()
    delivery = RecordingDelivery()
    result = await Executor(budget=Broke(), audit=audit).run(
        RunnableAgent(model=model), _inv(delivery=delivery)
    )
    assert result.status is RunStatus.BUDGET_DENIED
    assert model.requests == []
    assert "7-day limit" in (result.note or "")
    assert audit.kinds() == ["RunStarted", "RunFinished"]
    assert delivery.result is result


async def test_streaming_delivery_and_failover_reset() -> None:
    delivery = RecordingDelivery()
    model = ScriptedModel([Reply(text="Hello world", chunks=["Hel", "lo ", "world"])])
    result = await Executor().run(RunnableAgent(model=model), _inv(delivery=delivery))
    assert result.output == "Hello world"
    assert [x for x in delivery.log if x[0] == "text"] == [
        ("text", "Hel"),
        ("text", "lo "),
        ("text", "world"),
    ]
    assert delivery.log[0] == ("start", None) and delivery.log[-1] == ("finish", RunStatus.OK)


async def test_provider_error_ends_the_run_with_error() -> None:
    model = ScriptedModel([Overloaded("busy", model="test:scripted")])
    result = await Executor().run(RunnableAgent(model=model), _inv())
    assert result.status is RunStatus.ERROR
    assert result.attempts[0].error_kind == "overloaded"


async def test_hook_refuses_before_any_model_call() -> None:
    class Guard(RunHook):
        async def before_run(self, state: RunState) -> None:
            raise RunRefused("too deep")

    model = ScriptedModel()
    result = await Executor(hooks=[Guard()]).run(RunnableAgent(model=model), _inv())
    assert result.status is RunStatus.REFUSED and result.error == "too deep"
    assert model.requests == []


async def test_many_concurrent_runs_do_not_mix() -> None:
    ex = Executor(tools=_registry())

    async def one(i: int) -> str:
        model = ScriptedModel([call("add", a=i, b=i), f"answer {i}"])
        r = await ex.run(RunnableAgent(model=model, tools=("add",)), _inv(str(i)))
        assert model.requests[1].messages[-1].tool_results[0].content == str(2 * i)
        return r.output

    outs = await asyncio.gather(*(one(i) for i in range(100)))
    assert outs == [f"answer {i}" for i in range(100)]


async def test_host_cancellation_closes_the_run_and_reraises() -> None:
    audit = AuditCapture()
    started = asyncio.Event()

    class Slow(ScriptedModel):
        async def generate(self, request):  # type: ignore[no-untyped-def]
            started.set()
            await asyncio.Event().wait()
            raise AssertionError

    task = asyncio.create_task(Executor(audit=audit).run(RunnableAgent(model=Slow()), _inv()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert audit.kinds()[-1] == "RunFinished"
    assert audit.events[-1].result.status is RunStatus.CANCELLED  # type: ignore[union-attr]


async def test_a_runs_own_id_is_a_uuid4_in_hex() -> None:
    ids = [
        (await Executor().run(RunnableAgent(model=ScriptedModel()), _inv())).run_id
        for _ in range(50)
    ]
    assert len(set(ids)) == 50
    for run_id in ids:
        parsed = uuid.UUID(run_id)
        assert parsed.hex == run_id and parsed.version == 4 and parsed.variant == uuid.RFC_4122
