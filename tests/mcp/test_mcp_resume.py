"""MCP tools and runs that resume: a tool's ``readOnlyHint`` / ``idempotentHint`` are
pinned when the operator accepts it, so after a restart (the server not started yet)
a resumed run calls a read-only or idempotent tool again and asks the member again
before any other; a server that stops saying so is believed at once."""

from __future__ import annotations

from typing import Any

import mcp.types as mcp_types

from adapters.mcp import InMemoryPins, McpServerSource
from adapters.mcp.config import McpServerConfig
from adapters.mcp.source import hints
from executor.agent import Caller, Invocation, Privilege, RunnableAgent
from executor.messages import Message, Usage
from executor.ports import ApprovalDecision, ApprovalRequest, Checkpoint
from executor.run import Executor
from executor.testing import ScriptedModel, call
from executor.tools import ToolRegistry
from tests.mcp.conftest import stdio_config

ALICE = Caller(user_id="alice", privilege=Privilege.USER, guild_id="g", channel_id="c")
TOOLS = ["echo", "add", "whoami"]
NO_APPROVAL = {t: {"privilege": "user", "approval": False} for t in TOOLS}


class Approvals:
    def __init__(self) -> None:
        self.asked: list[ApprovalRequest] = []

    async def approve(self, request: ApprovalRequest) -> ApprovalDecision:
        self.asked.append(request)
        return ApprovalDecision(approved=True)


def _source(config: McpServerConfig, pins: InMemoryPins) -> McpServerSource:
    return McpServerSource(config, pins=pins, environ={}, refresh_s=None)


def _tool(**annotations: Any) -> mcp_types.Tool:
    return mcp_types.Tool(
        name="t",
        input_schema={"type": "object"},
        annotations=mcp_types.ToolAnnotations(**annotations) if annotations else None,
    )


def test_hints_come_from_the_annotations_and_default_to_neither() -> None:
    assert hints(_tool()) == (False, False)
    assert hints(_tool(readOnlyHint=True)) == (True, True)  # read-only: idempotent too
    assert hints(_tool(idempotentHint=True)) == (False, True)
    assert hints(_tool(readOnlyHint=False, idempotentHint=False)) == (False, False)


async def test_a_resumed_run_reruns_marked_tools_and_asks_again_for_the_rest() -> None:
    pins = InMemoryPins()
    first = _source(stdio_config(tools=TOOLS, tool=NO_APPROVAL), pins)
    try:
        await first.accept(by="op")
    finally:
        await first.close()
    accepted = await pins.pins("t")
    assert {t: (p.read_only, p.idempotent) for t, p in accepted.items()} == {
        "echo": (True, True),  # read-only: idempotent too
        "add": (False, True),
        "whoami": (False, False),
    }

    # A restart: a new source reads the pins; its server has not been started.
    source = _source(stdio_config(tools=TOOLS, tool=NO_APPROVAL), pins)
    registry = ToolRegistry(sources=[source])
    await registry.open()
    try:
        assert source.connection is None
        repeatable = {n: registry.get(n).repeatable for n in registry.names}  # type: ignore[union-attr]
        assert repeatable == {"t__add": True, "t__echo": True, "t__whoami": False}

        pending = (call("t__echo", text="hi"), call("t__add", a=2, b=3), call("t__whoami"))
        interrupted = Checkpoint(
            run_id="r1",
            step=1,
            messages=(Message.user("go"), Message(role="assistant", parts=pending)),
            usage=Usage(),
            caller=ALICE,
            trigger="chat",
            agent="helper",
            tier="standard",
            pending=pending,
        )
        approvals = Approvals()
        model = ScriptedModel(["done"])
        result = await Executor(tools=registry, approver=approvals).run(
            RunnableAgent(name="helper", model=model, tools=tuple(registry.names)),
            Invocation([], caller=ALICE, trigger="chat", run_id="r2", resume=interrupted),
        )
        assert result.ok and result.output == "done"
        # Only the tool the server does not mark is asked about again, saying why.
        assert [(a.tool, a.again) for a in approvals.asked] == [("t__whoami", True)]
        results = {r.name: r.content for m in model.requests[0].messages for r in m.tool_results}
        assert results["t__echo"] == "hi" and results["t__add"] == "5"
        assert results["t__whoami"].startswith("mark=")
    finally:
        await registry.close()


async def test_a_server_that_drops_its_hints_is_believed_at_once() -> None:
    pins = InMemoryPins()
    first = _source(stdio_config(tools=TOOLS, tool=NO_APPROVAL), pins)
    try:
        await first.accept(by="op")
    finally:
        await first.close()
    config = stdio_config(tools=TOOLS, tool=NO_APPROVAL, env={"MCP_TEST_VARIANT": "nohints"})
    source = _source(config, pins)
    registry = ToolRegistry(sources=[source])
    await registry.open()
    try:
        echo = registry.get("t__echo")
        assert echo is not None and echo.read_only  # the pin, before the server is reached
        await source.connect()
        echo = registry.get("t__echo")
        assert echo is not None and not echo.read_only and not echo.repeatable
        # Same schema: still offered (the hints are not part of what the model sees).
        assert {s.tool: s.status for s in source.states()}["echo"] == "offered"
    finally:
        await registry.close()
