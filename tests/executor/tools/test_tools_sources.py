"""Tool sources: tools discovered at run time go through the same gates as built-ins."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from executor.agent import Caller, Invocation, Privilege, RunnableAgent, RunStatus
from executor.errors import ConfigError
from executor.messages import Message
from executor.run import Executor
from executor.testing import AuditCapture, ScriptedModel, call
from executor.tools import FunctionSource, Tool, ToolContext, ToolRegistry, ToolSource, tool
from executor.tools.sources import schema_tool

CTX = ToolContext(run_id="r", caller=Caller(user_id="u"))


class DiscoveredSource:
    """A source whose tools are known only at run time (the shape of an MCP server)."""

    def __init__(self, name: str = "remote", *, admin_only: bool = False) -> None:
        self._name = name
        self.calls: list[dict[str, Any]] = []
        self.log: list[str] = []
        self.offered: list[Tool] = []
        self.admin_only = admin_only

    @property
    def name(self) -> str:
        return self._name

    def tools(self) -> Sequence[Tool]:
        return list(self.offered)

    def discover(self) -> None:
        async def lookup(arguments: dict[str, Any], ctx: ToolContext) -> Any:
            self.calls.append(arguments)
            return {"city": arguments.get("city"), "temp_c": 21, "asked_by": ctx.caller.user_id}

        self.offered = [
            schema_tool(
                f"{self._name}__weather",
                description="Weather for a city",
                parameters={"type": "object", "properties": {"city": {"type": "string"}}},
                call=lookup,
                min_privilege=Privilege.ADMIN if self.admin_only else Privilege.USER,
            )
        ]

    async def open(self) -> None:
        self.log.append(f"open {self._name}")
        self.discover()

    async def close(self) -> None:
        self.log.append(f"close {self._name}")


def _inv(privilege: Privilege = Privilege.USER) -> Invocation:
    return Invocation(
        messages=[Message.user("weather?")], caller=Caller(user_id="ada", privilege=privilege)
    )


def test_the_sources_satisfy_the_protocol() -> None:
    assert isinstance(DiscoveredSource(), ToolSource)
    assert isinstance(FunctionSource("builtin"), ToolSource)


async def test_a_discovered_tool_runs_through_the_loop_and_is_audited() -> None:
    source = DiscoveredSource()
    registry = ToolRegistry(sources=[source])
    assert registry.names == []  # nothing discovered before open
    await registry.open()
    assert registry.names == ["remote__weather"] and registry.is_enabled("remote__weather")

    model = ScriptedModel([call("remote__weather", city="Oslo"), "21 degrees"])
    audit = AuditCapture()
    result = await Executor(tools=registry, audit=audit).run(
        RunnableAgent(model=model, tools=("remote__weather",)), _inv()
    )
    assert result.status is RunStatus.OK and result.output == "21 degrees"
    assert source.calls == [{"city": "Oslo"}]
    offered = model.requests[0].tools
    assert [t.name for t in offered] == ["remote__weather"]
    assert offered[0].parameters["properties"] == {"city": {"type": "string"}}
    answer = model.requests[1].messages[-1].tool_results[0]
    assert '"asked_by":"ada"' in answer.content and not answer.is_error
    assert "ToolCallFinished" in audit.kinds(result.run_id)


async def test_grant_and_privilege_apply_to_a_source_tool() -> None:
    source = DiscoveredSource(admin_only=True)
    registry = ToolRegistry(sources=[source])
    await registry.open()
    # not granted: never offered
    model = ScriptedModel(["no tools"])
    await Executor(tools=registry).run(RunnableAgent(model=model), _inv(Privilege.ADMIN))
    assert not model.requests[0].tools
    # granted, but the caller is below the tool's privilege: not offered, and refused
    model = ScriptedModel([call("remote__weather", city="Oslo"), "refused"])
    await Executor(tools=registry).run(
        RunnableAgent(model=model, tools=("remote__weather",)), _inv(Privilege.USER)
    )
    assert not model.requests[0].tools
    refused = model.requests[1].messages[-1].tool_results[0]
    assert refused.is_error and "needs admin privilege" in refused.content
    assert source.calls == []
    assert registry.grant_refusal(["remote__weather"], Privilege.USER) is not None
    assert registry.grant_refusal(["remote__weather"], Privilege.ADMIN) is None


async def test_the_deployment_switch_is_for_its_own_tools() -> None:
    """COTERIE_ENABLED_TOOLS names built-ins; a source enables its own tools itself."""

    @tool
    def current(x: int) -> int:
        """Own."""
        return x

    source = DiscoveredSource()
    registry = ToolRegistry([current], enabled=[], sources=[source])
    await registry.open()
    assert not registry.is_enabled("current")
    assert registry.is_enabled("remote__weather")
    assert registry.enabled_names == ["remote__weather"]


async def test_names_are_unique_across_sources() -> None:
    first, second = DiscoveredSource("remote"), DiscoveredSource("remote")
    registry = ToolRegistry(sources=[first])
    with pytest.raises(ConfigError, match="added twice"):
        registry.add_source(second)
    first.discover()
    clash = FunctionSource("other", first.tools())
    with pytest.raises(ConfigError, match="offers tools that exist"):
        registry.add_source(clash)
    with pytest.raises(ConfigError, match="registered twice"):
        registry.add(first.tools()[0])


async def test_close_runs_in_reverse_and_survives_a_failing_source(
    caplog: pytest.LogCaptureFixture,
) -> None:
    order: list[str] = []

    class Failing(DiscoveredSource):
        async def close(self) -> None:
            order.append("close failing")
            raise RuntimeError("boom")

    a, b = DiscoveredSource("a"), Failing("b")
    a.log = order
    registry = ToolRegistry(sources=[a, b])
    await registry.close()
    assert order == ["close failing", "close a"]
    assert "error while closing tool source b" in caplog.text


async def test_a_schema_tool_keeps_the_timeout_and_the_result_cap() -> None:
    async def slow(arguments: dict[str, Any], ctx: ToolContext) -> str:
        await asyncio.Event().wait()
        return "never"

    async def loud(arguments: dict[str, Any], ctx: ToolContext) -> str:
        return "x" * 100

    hung = schema_tool("hung", description="", parameters={}, call=slow, timeout_s=0.01)
    outcome = await hung.invoke({}, CTX)
    assert outcome.is_error and "timed out" in outcome.content
    capped = schema_tool("loud", description="", parameters={}, call=loud, max_result_chars=10)
    outcome = await capped.invoke(None, CTX)
    assert outcome.truncated and outcome.content.startswith("x" * 10 + "\n[truncated 90")
    bad = await hung.invoke(["not", "an", "object"], CTX)  # type: ignore[arg-type]
    assert bad.is_error and "expected a JSON object" in bad.content
    assert capped.definition.parameters == {"type": "object", "properties": {}}


def test_a_schema_tool_name_follows_the_provider_rule() -> None:
    async def noop(arguments: dict[str, Any], ctx: ToolContext) -> None:
        return None

    with pytest.raises(ConfigError, match="letters, digits"):
        schema_tool("files.read", description="", parameters={}, call=noop)
