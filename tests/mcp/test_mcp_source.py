"""An MCP server as a tool source, against a real server (the SDK's MCPServer) over
stdio and streamable HTTP: deny by default, pinned schemas, privilege and approval,
and a server that hangs, crashes or floods cut off while the run goes on."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from adapters.mcp import InMemoryPins, McpServerSource, parse_mcp_config
from adapters.mcp.config import McpServerConfig
from executor.agent import Caller, Invocation, Privilege, RunnableAgent, RunStatus
from executor.errors import ConfigError, ToolFailed
from executor.events import ToolCallFinished
from executor.messages import Message
from executor.ports import ApprovalDecision, ApprovalRequest
from executor.run import Executor
from executor.testing import AuditCapture, ScriptedModel, call
from executor.tools import ToolContext, ToolRegistry
from tests.mcp.conftest import alive, http_config, stdio_config

OPERATOR = Caller(user_id="op", privilege=Privilege.OWNER)


class Clock:
    """The source's monotonic clock, moved by hand (the restart backoff)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _source(config: McpServerConfig, *, clock: Clock | None = None, **kw: Any) -> McpServerSource:
    return McpServerSource(
        config,
        pins=kw.pop("pins", InMemoryPins()),
        environ=kw.pop("environ", {}),
        monotonic=clock or Clock(),
        refresh_s=None,
        **kw,
    )


def _inv(privilege: Privilege = Privilege.OWNER, text: str = "go") -> Invocation:
    return Invocation(
        messages=[Message.user(text)], caller=Caller(user_id="ada", privilege=privilege)
    )


def _ctx(privilege: Privilege = Privilege.OWNER) -> ToolContext:
    return ToolContext(run_id="r", caller=Caller(user_id="ada", privilege=privilege))


# --- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"x__y": {"command": ["a"]}}, "server name"),
        ({"x": {}}, "either command"),
        ({"x": {"command": ["a"], "url": "http://h/mcp"}}, "either command"),
        ({"x": {"command": "npx server"}}, "command must be a non-empty list"),
        ({"x": {"url": "ftp://h"}}, "http:// or https://"),
        ({"x": {"command": ["a"], "tools": ["read.file"]}}, "cannot be offered as x__read.file"),
        ({"x": {"command": ["a"], "tools": ["t"], "tool": {"u": {}}}}, "does not list"),
        (
            {"x": {"command": ["a"], "tools": ["t"], "tool": {"t": {"privilege": "root"}}}},
            "user, moderator, admin, owner",
        ),
        (
            {"x": {"command": ["a"], "tools": ["t"], "tool": {"t": {"approval": "no"}}}},
            "true or false",
        ),
        ({"x": {"command": ["a"], "comand": ["b"]}}, "unknown key 'comand'"),
        ({"x": {"url": "http://h/mcp", "env": {"A": "b"}}}, "env is for a command server"),
        ({"x": {"url": "http://h/mcp", "allow_networks": ["0.0.0.0/0"]}}, "too broad"),
        ({"x": {"url": "http://h/mcp", "allow_networks": ["lan"]}}, "not an address"),
        ({"x": {"command": ["a"], "env": {"A": "${not a var}"}}}, "not an environment variable"),
        ({"x": {"command": ["a"], "timeout_seconds": 0}}, "positive number of seconds"),
    ],
)
def test_a_bad_server_entry_names_the_key_and_the_fix(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_mcp_config(raw, where="coterie.toml")


def test_defaults_are_deny_admin_and_approval() -> None:
    [config] = parse_mcp_config(
        {
            "files": {
                "command": ["srv"],
                "tools": ["read", "write"],
                "tool": {"read": {"privilege": "user", "approval": False}},
            }
        }
    )
    assert config.exposed("read") == "files__read"
    assert config.policy("read").privilege is Privilege.USER and not config.policy("read").approval
    assert config.policy("write").privilege is Privilege.ADMIN and config.policy("write").approval


def test_secrets_come_from_the_environment_by_name() -> None:
    [config] = parse_mcp_config(
        {"x": {"url": "https://h/mcp", "headers": {"Authorization": "Bearer ${X_TOKEN}"}}}
    )
    assert config.resolved_headers({"X_TOKEN": "s3cret"}) == {"Authorization": "Bearer s3cret"}
    with pytest.raises(ConfigError, match="needs the environment variable X_TOKEN"):
        config.resolved_headers({})


# --- stdio -----------------------------------------------------------------------------


async def test_only_listed_and_accepted_tools_are_offered_and_the_server_gets_a_clean_env() -> None:
    config = stdio_config(
        tools=["echo", "whoami"],
        env={"MCP_TEST_MARK": "${MARK}"},
        tool={"echo": {"privilege": "user", "approval": False}},
    )
    pins = InMemoryPins()
    source = _source(
        config,
        pins=pins,
        environ={"MARK": "m1", "DISCORD_TOKEN": "bot-secret", "OPENAI_API_KEY": "sk-x"},
    )
    registry = ToolRegistry(sources=[source])
    await registry.open()
    try:
        # Nothing accepted yet: nothing offered, and no process started.
        assert registry.names == []
        assert source.connection is None
        assert {s.tool: s.status for s in source.states()} == {
            "echo": "not accepted",
            "whoami": "not accepted",
        }

        report = await source.accept(by="op")
        assert report.new == ["echo", "whoami"]
        # The server's other tools are never offered, accepted or not.
        assert set(report.unlisted) >= {"add", "delete_everything", "hang"}
        assert registry.names == ["t__echo", "t__whoami"]
        assert "t__delete_everything" not in registry

        echo = registry.get("t__echo")
        assert echo is not None and echo.min_privilege is Privilege.USER
        assert not echo.requires_approval
        whoami = registry.get("t__whoami")
        assert whoami is not None and whoami.min_privilege is Privilege.ADMIN
        assert whoami.requires_approval  # the default for a tool with no [tool.x] table

        out = await echo.invoke({"text": "hello"}, _ctx())
        assert (out.content, out.is_error) == ("hello", False)
        env = await whoami.invoke({}, _ctx())
        # ${MARK} reached the server; coterie's own secrets did not.
        assert "mark=m1" in env.content and "DISCORD" not in env.content
        assert "OPENAI" not in env.content

        # A second source reading the same pins offers the tools before any start.
        again = _source(config, pins=pins)
        await again.open()
        assert [t.name for t in again.tools()] == ["t__echo", "t__whoami"]
        assert again.connection is None
    finally:
        pid = source.connection.pid if source.connection else None
        await registry.close()
    assert pid is not None and not alive(pid)  # the drain stopped the server


async def test_a_changed_tool_is_switched_off_reported_and_back_on_when_accepted() -> None:
    pins = InMemoryPins()
    first = _source(stdio_config(), pins=pins)
    await first.accept(by="op")
    await first.close()

    reports: list[tuple[str, Caller | None]] = []

    async def notify(text: str, caller: Caller | None) -> None:
        reports.append((text, caller))

    # The same server, now describing echo differently (a poisoned description).
    changed = _source(stdio_config(env={"MCP_TEST_VARIANT": "changed"}), pins=pins, notify=notify)
    await changed.open()
    try:
        assert [t.name for t in changed.tools()] == ["t__echo", "t__add"]  # pins only
        stale_echo = changed.tools()[0]
        add = changed.tools()[1]
        assert (await add.invoke({"a": 2, "b": 3}, _ctx())).content == "5"
        # Reaching the server revealed the change: echo is off, add still on.
        assert [t.name for t in changed.tools()] == ["t__add"]
        assert {s.tool: s.status for s in changed.states()}["echo"] == "changed"
        [(text, caller)] = reports
        assert "echo" in text and "changed" in text and "coterie mcp accept t" in text
        assert caller is not None and caller.user_id == "ada"
        # A run holding the old definition cannot call it either.
        refused = await stale_echo.invoke({"text": "x"}, _ctx())
        assert refused.is_error and "is off" in refused.content

        report = await changed.accept(by="op")
        assert report.changed == ["echo"] and report.unchanged == ["add"]
        assert [t.name for t in changed.tools()] == ["t__echo", "t__add"]
        again = changed.tools()[0]
        out = await again.invoke({"text": "back"}, _ctx())
        assert out.content == "back"
    finally:
        await changed.close()


async def test_hang_crash_and_flood_are_cut_off_and_the_run_goes_on() -> None:
    clock = Clock()
    config = stdio_config(tools=["echo", "hang", "crash", "flood"], timeout_seconds=2)
    source = _source(config, clock=clock)
    await source.accept(by="op")
    registry = ToolRegistry(sources=[source])

    class Approve:
        async def approve(self, request: ApprovalRequest) -> ApprovalDecision:
            return ApprovalDecision(approved=True)

    audit = AuditCapture()
    executor = Executor(tools=registry, audit=audit, approver=Approve())
    second_pid: int | None = None
    try:
        first_pid = source.connection.pid if source.connection else None
        assert first_pid is not None
        model = ScriptedModel([call("t__hang"), "The server hung; here is what I know."])
        result = await executor.run(RunnableAgent(model=model, tools=("t__hang",)), _inv())
        assert result.status is RunStatus.OK
        assert result.output == "The server hung; here is what I know."
        hung = model.requests[1].messages[-1].tool_results[0]
        assert hung.is_error and "did not answer within 2 s" in hung.content
        assert "restarts after" in source.health

        # Within the backoff the server is not started again; after it, it is.
        out = await registry.get("t__echo").invoke({"text": "a"}, _ctx())  # type: ignore[union-attr]
        assert out.is_error and "started again in 1 s" in out.content
        clock.now += 1.5
        out = await registry.get("t__echo").invoke({"text": "b"}, _ctx())  # type: ignore[union-attr]
        assert out.content == "b"
        second_pid = source.connection.pid if source.connection else None
        assert second_pid not in (None, first_pid)

        # A crash mid-call: the call fails at once, the run goes on.
        model = ScriptedModel([call("t__crash"), "It crashed."])
        result = await executor.run(RunnableAgent(model=model, tools=("t__crash",)), _inv())
        assert result.status is RunStatus.OK
        crashed = model.requests[1].messages[-1].tool_results[0]
        assert crashed.is_error and "stopped" in crashed.content
        clock.now += 60

        flood = registry.get("t__flood")
        assert flood is not None
        big = await flood.invoke({"kind": "result"}, _ctx())
        assert big.truncated and len(big.content) < 17_000 and not big.is_error
        junk = await flood.invoke({"kind": "junk"}, _ctx())
        assert junk.content == "after the junk"  # 2,000 stray stdout lines skipped
        noisy = await flood.invoke({"kind": "stderr"}, _ctx())
        assert noisy.content == "after the stderr"  # 2 MB of stderr drained, not kept
        assert source.connection is not None and source.connection.process is not None
        assert len(source.connection.process.stderr_text) <= 4000
        giant = await flood.invoke({"kind": "giant"}, _ctx())
        assert giant.is_error and "over 8,000,000 bytes" in giant.content
        # Every call was audited with its outcome.
        finished = [e.name for e in audit.events if isinstance(e, ToolCallFinished)]
        assert finished == ["t__hang", "t__crash"]
    finally:
        pids = [p for p in (first_pid, second_pid) if p]
        await registry.close()
    assert not any(alive(p) for p in pids)


async def test_a_member_below_the_tools_privilege_never_gets_it() -> None:
    config = stdio_config(
        tools=["echo", "add"], tool={"echo": {"privilege": "user", "approval": False}}
    )
    source = _source(config)
    await source.accept(by="op")
    try:
        registry = ToolRegistry(sources=[source])
        model = ScriptedModel([call("t__add", a=1, b=2), "no"])
        await Executor(tools=registry).run(
            RunnableAgent(model=model, tools=("t__echo", "t__add")), _inv(Privilege.USER)
        )
        assert [t.name for t in model.requests[0].tools] == ["t__echo"]
        refused = model.requests[1].messages[-1].tool_results[0]
        assert refused.is_error and "needs admin privilege" in refused.content
        assert registry.grant_refusal(["t__add"], Privilege.USER) is not None
        assert registry.grant_refusal(["t__add"], Privilege.ADMIN) is None
    finally:
        await source.close()


async def test_a_command_that_does_not_exist_is_named() -> None:
    [config] = parse_mcp_config({"x": {"command": ["/nonexistent/mcp-server"], "tools": ["a"]}})
    source = _source(config)
    with pytest.raises(ToolFailed, match="no such command"):
        await source.accept(by="op")
    assert "no such command" in source.health
    await source.close()


# --- streamable HTTP -------------------------------------------------------------------


async def test_an_http_server_on_loopback_needs_its_allowlist_entry(mcp_http_url: str) -> None:
    refused = _source(http_config(mcp_http_url))
    with pytest.raises(ToolFailed, match="loopback"):
        await refused.accept(by="op")
    await refused.close()

    clock = Clock()
    source = _source(
        http_config(mcp_http_url, allow_networks=["127.0.0.1"], tools=["echo", "flood"]),
        clock=clock,
        max_message_bytes=1_000_000,
    )
    try:
        report = await source.accept(by="op")
        assert report.new == ["echo", "flood"] and "add" in report.unlisted
        echo, flood = source.tools()
        assert echo.name == "h__echo"
        out = await echo.invoke({"text": "over http"}, _ctx())
        assert out.content == "over http"
        # An answer past the cap ends the connection, not our memory; the next call
        # (after the backoff) connects again.
        big = await flood.invoke({"kind": "result"}, _ctx())
        assert big.is_error and "over 1,000,000 bytes" in big.content
        clock.now += 1.5
        assert (await echo.invoke({"text": "again"}, _ctx())).content == "again"
    finally:
        await source.close()


def test_stdio_config_uses_this_python() -> None:
    assert stdio_config().command[0] == sys.executable


async def test_personas_grant_mcp_tools_by_name_capped_at_the_savers_rights(
    tmp_path: Any,
) -> None:
    """Pins alone offer the tools (no server is started to save a persona)."""
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
    from sqlmodel import SQLModel

    import personas.tables  # noqa: F401
    from adapters.mcp.pins import ToolPin
    from personas.errors import InvalidPersona
    from personas.model import Persona
    from personas.store import PersonaStore

    schema = {"type": "object", "properties": {"text": {"type": "string"}}}
    pins = InMemoryPins(
        [ToolPin.of("t", "echo", "Echo.", schema), ToolPin.of("t", "add", "Add.", schema)]
    )
    source = _source(
        stdio_config(tool={"echo": {"privilege": "user", "approval": False}}), pins=pins
    )
    registry = ToolRegistry(sources=[source])
    await registry.open()
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)
    try:
        store = PersonaStore(async_sessionmaker(engine), tools=registry)
        member = Caller(user_id="m", privilege=Privilege.USER)
        admin = Caller(user_id="a", privilege=Privilege.ADMIN)
        made = await store.create(
            "g", Persona(name="p1", system_prompt="x", tools=("t__echo",)), by=member
        )
        assert made.tools == ("t__echo",)
        with pytest.raises(InvalidPersona, match="t__add' needs admin privilege"):
            await store.create(
                "g", Persona(name="p2", system_prompt="x", tools=("t__add",)), by=member
            )
        assert (
            await store.create(
                "g", Persona(name="p3", system_prompt="x", tools=("t__add",)), by=admin
            )
        ).tools == ("t__add",)
        with pytest.raises(InvalidPersona, match="no tool named 't__delete_everything'"):
            await store.create(
                "g",
                Persona(name="p4", system_prompt="x", tools=("t__delete_everything",)),
                by=admin,
            )
        assert source.connection is None
    finally:
        await engine.dispose()
        await registry.close()
