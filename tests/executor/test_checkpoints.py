"""Checkpoints and resume in the kernel: the run saves where it stands before its first
model call and after each response that asks for tools; a run interrupted (here: its
task cancelled while a tool hangs, the way a crash leaves it) resumes from its last
checkpoint as a new run: results it kept are reused, a read-only call runs again, any
other call asks the approver again, and the bounds count the earlier attempt."""

from __future__ import annotations

import asyncio
from typing import Any

from executor.agent import Bounds, Caller, Invocation, RunnableAgent, RunStatus
from executor.events import RunStarted, ToolCallFinished
from executor.messages import Message, ToolResultPart, Usage
from executor.ports import ApprovalDecision, ApprovalRequest, Checkpoint
from executor.run import Executor
from executor.testing import AuditCapture, CheckpointCapture, Reply, ScriptedModel, call
from executor.tools.registry import ToolRegistry, tool

ALICE = Caller(user_id="alice", display_name="alice", guild_id="g", channel_id="c")


class Approvals:
    """An approver that answers ``approve`` and remembers what it was asked."""

    def __init__(self, approve: bool = True) -> None:
        self.approve_all = approve
        self.asked: list[ApprovalRequest] = []

    async def approve(self, request: ApprovalRequest) -> ApprovalDecision:
        self.asked.append(request)
        return ApprovalDecision(approved=self.approve_all, reason="" if self.approve_all else "no")


class Tools:
    """``write`` (changes something), ``read`` (read-only) and ``slow_*`` versions of
    both that hang on ``gate`` until released; every call is counted."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

        async def write(text: str) -> str:
            """Write something down."""
            self.calls.append(f"write:{text}")
            return f"wrote {text}"

        async def read(key: str) -> str:
            """Read something."""
            self.calls.append(f"read:{key}")
            return f"value of {key}"

        async def slow_write(text: str) -> str:
            """Write slowly."""
            self.calls.append(f"slow_write:{text}")
            self.entered.set()
            await self.gate.wait()
            return f"slowly wrote {text}"

        async def slow_read(key: str) -> str:
            """Read slowly."""
            self.calls.append(f"slow_read:{key}")
            self.entered.set()
            await self.gate.wait()
            return f"slowly read {key}"

        self.registry = ToolRegistry(
            [
                tool(write),
                tool(read, read_only=True),
                tool(slow_write),
                tool(slow_read, read_only=True),
            ]
        )


def _agent(model: ScriptedModel, **bounds: Any) -> RunnableAgent:
    return RunnableAgent(
        name="helper",
        model=model,
        persona="researcher",
        tools=("write", "read", "slow_write", "slow_read"),
        bounds=Bounds(**bounds) if bounds else Bounds(),
    )


def _usage(cost: int) -> Usage:
    return Usage(input_tokens=10, output_tokens=5, cost_micros=cost, requests=1)


async def _interrupted(
    tools: Tools, script: list[Any], **bounds: Any
) -> tuple[Checkpoint, CheckpointCapture, ScriptedModel]:
    """Run until a slow tool hangs, then stop the run as a crash would: what the
    checkpoints kept is what a restart would find."""
    capture = CheckpointCapture()
    model = ScriptedModel(script)
    executor = Executor(tools=tools.registry, checkpoints=capture)
    run = asyncio.ensure_future(
        executor.run(
            _agent(model, **bounds),
            Invocation([Message.user("do it")], caller=ALICE, trigger="chat", run_id="r1"),
        )
    )
    await tools.entered.wait()
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    # Its host cancelled it (a shutdown): the checkpoint stays for an offer to resume.
    assert capture.dropped == [] and "r1" in capture.saved
    tools.entered.clear()
    tools.gate.set()  # a second life's slow tools do not hang
    return capture.last("r1"), capture, model


async def test_a_run_saves_before_its_first_call_and_after_each_tool_step() -> None:
    tools = Tools()
    capture = CheckpointCapture()
    model = ScriptedModel(
        [
            Reply(tool_calls=[call("read", key="a")], usage=_usage(10)),
            Reply(tool_calls=[call("write", text="b")], usage=_usage(20)),
            Reply(text="done", usage=_usage(30)),
        ]
    )
    executor = Executor(tools=tools.registry, checkpoints=capture)
    result = await executor.run(
        _agent(model), Invocation([Message.user("go")], caller=ALICE, trigger="chat")
    )
    assert result.ok and result.output == "done"
    saves = capture.history
    assert [c.step for c in saves] == [0, 1, 2]
    assert [[p.name for p in c.pending] for c in saves] == [[], ["read"], ["write"]]
    assert [c.usage.cost_micros for c in saves] == [0, 10, 30]
    # Each save holds the conversation up to the response that asked for the calls.
    assert [len(c.messages) for c in saves] == [1, 2, 4]
    assert saves[0].caller == ALICE and saves[0].trigger == "chat"
    assert saves[0].persona == "researcher" and saves[0].resumed_from is None
    assert capture.dropped == [result.run_id] and capture.saved == {}


async def test_the_default_keeps_nothing_after_the_run() -> None:
    executor = Executor()
    result = await executor.run(
        RunnableAgent(model=ScriptedModel(["hi"])), Invocation([Message.user("hello")])
    )
    assert result.ok
    assert executor.checkpoints.saved == {}  # type: ignore[attr-defined]


async def test_a_call_that_may_have_run_asks_again_then_the_answer_completes() -> None:
    tools = Tools()
    last, _, _ = await _interrupted(
        tools,
        [
            Reply(tool_calls=[call("read", key="a")], usage=_usage(10)),
            Reply(tool_calls=[call("slow_write", text="b")], usage=_usage(20)),
        ],
    )
    assert last.step == 2 and [p.name for p in last.pending] == ["slow_write"]
    assert last.done == () and last.usage.cost_micros == 30
    assert tools.calls == ["read:a", "slow_write:b"]

    approvals = Approvals(approve=True)
    audit = AuditCapture()
    capture = CheckpointCapture()
    model = ScriptedModel([Reply(text="all done", usage=_usage(7))])
    executor = Executor(tools=tools.registry, approver=approvals, audit=audit, checkpoints=capture)
    result = await executor.run(
        _agent(model),
        Invocation([], caller=ALICE, trigger="chat", run_id="r2", resume=last),
    )
    assert result.ok and result.output == "all done"
    # The member was asked, once, saying the call may have run already.
    assert [(a.tool, a.again) for a in approvals.asked] == [("slow_write", True)]
    assert tools.calls == ["read:a", "slow_write:b", "slow_write:b"]
    # The model saw the whole conversation: the first step's result, the new one.
    sent = model.requests[0].messages
    results = [r.content for m in sent for r in m.tool_results]
    assert results == ["value of a", "slowly wrote b"]
    # This run's cost is its own response; its steps continue the earlier ones.
    assert result.usage.cost_micros == 7 and result.steps == 3
    [started] = audit.of_type(RunStarted)
    assert started.resumed_from == "r1" and started.prompt_excerpt == "do it"
    assert capture.history[0].resumed_from == "r1"


async def test_a_denied_repeat_does_not_run_and_the_model_is_told() -> None:
    tools = Tools()
    last, _, _ = await _interrupted(tools, [call("slow_write", text="x")])
    model = ScriptedModel(["understood"])
    executor = Executor(tools=tools.registry, approver=Approvals(approve=False))
    result = await executor.run(
        _agent(model), Invocation([], caller=ALICE, run_id="r2", resume=last)
    )
    assert result.ok
    assert tools.calls == ["slow_write:x"]  # not again
    [denied] = [r for m in model.requests[0].messages for r in m.tool_results]
    assert denied.is_error and denied.content.startswith("denied:")


async def test_a_read_only_call_runs_again_without_asking() -> None:
    tools = Tools()
    last, _, _ = await _interrupted(tools, [call("slow_read", key="k")])
    approvals = Approvals(approve=False)  # would deny, were it asked
    audit = AuditCapture()
    model = ScriptedModel(["read it"])
    executor = Executor(tools=tools.registry, approver=approvals, audit=audit)
    result = await executor.run(
        _agent(model), Invocation([], caller=ALICE, run_id="r2", resume=last)
    )
    assert result.ok and approvals.asked == []
    assert tools.calls == ["slow_read:k", "slow_read:k"]
    [finished] = audit.of_type(ToolCallFinished)
    assert finished.name == "slow_read" and finished.result == "slowly read k"


async def test_a_finished_call_is_kept_and_never_runs_twice() -> None:
    tools = Tools()
    # One response, two calls at once: the write finishes, the read hangs.
    last, _, _ = await _interrupted(
        tools, [[call("write", text="once"), call("slow_read", key="k")]]
    )
    assert [p.name for p in last.pending] == ["write", "slow_read"]
    assert [r.content for r in last.done] == ["wrote once"]

    approvals = Approvals(approve=False)
    audit = AuditCapture()
    model = ScriptedModel(["ok"])
    executor = Executor(tools=tools.registry, approver=approvals, audit=audit)
    result = await executor.run(
        _agent(model), Invocation([], caller=ALICE, run_id="r2", resume=last)
    )
    assert result.ok and approvals.asked == []
    assert tools.calls.count("write:once") == 1
    # Only the call that ran in this run is in its audit.
    assert [e.name for e in audit.of_type(ToolCallFinished)] == ["slow_read"]
    sent = [
        (r.name, r.content)
        for m in model.requests[0].messages
        for r in m.tool_results
        if isinstance(r, ToolResultPart)
    ]
    assert sent == [("write", "wrote once"), ("slow_read", "slowly read k")]


async def test_the_bounds_count_the_interrupted_attempt() -> None:
    tools = Tools()
    last, _, _ = await _interrupted(
        tools,
        [call("read", key="a"), call("slow_read", key="b")],
        max_steps=3,
    )
    model = ScriptedModel([call("read", key="c"), "never"])
    result = await Executor(tools=tools.registry).run(
        _agent(model, max_steps=3), Invocation([], caller=ALICE, run_id="r2", resume=last)
    )
    # Two steps before the interruption, one after: the limit of three.
    assert result.status is RunStatus.STEP_LIMIT and len(model.requests) == 1
