"""The typed tool registry: schemas, validation, errors, timeouts, caps, permissions."""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

from executor._deadlines import Deadlines
from executor.agent import Caller, Privilege
from executor.errors import ConfigError, ToolFailed, ToolRetry
from executor.tools import Tool, ToolContext, ToolRegistry, tool
from executor.tools._docstrings import parse_docstring as _parse_docstring


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Point(BaseModel):
    x: int
    y: int = 0


# --- schema from the signature ----------------------------------------------------


def test_schema_from_signature_and_docstring() -> None:
    @tool
    def search(
        query: str,
        limit: int = 5,
        since: str | None = None,
        mode: Literal["fast", "deep"] = "fast",
        colour: Colour = Colour.RED,
        score: Annotated[float, Field(ge=0, le=1)] = 0.5,
    ) -> str:
        """Search the archive.

        Longer explanation that is still description.

        Args:
            query (str): what to look for,
                over two lines
            limit: how many results
            since: an ISO date
        Returns:
            the hits
        """
        return query

    d = search.definition
    assert d.name == "search"
    assert d.description == "Search the archive.\n\nLonger explanation that is still description."
    params = d.parameters
    assert params["type"] == "object"
    assert params["required"] == ["query"]
    assert params["additionalProperties"] is False
    props = params["properties"]
    assert props["query"] == {"type": "string", "description": "what to look for, over two lines"}
    assert props["limit"] == {"type": "integer", "default": 5, "description": "how many results"}
    assert props["since"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    assert props["mode"]["enum"] == ["fast", "deep"]
    assert props["score"]["minimum"] == 0 and props["score"]["maximum"] == 1
    assert "$defs" in params and params["$defs"]["Colour"]["enum"] == ["red", "green"]
    assert "title" not in params and all("title" not in p for p in props.values())
    assert "title" not in params["$defs"]["Colour"]


def test_pydantic_model_parameter_is_validated_into_the_model(ctx: ToolContext) -> None:
    seen: list[object] = []

    @tool
    async def plot(point: Point, colour: Colour) -> str:
        """Plot a point."""
        seen.append((point, colour))
        return f"{point.x},{point.y} {colour.value}"

    assert plot.definition.parameters["$defs"]["Point"]["required"] == ["x"]
    out = asyncio.run(plot.invoke({"point": {"x": 1}, "colour": "green"}, ctx))
    assert out.content == "1,0 green" and not out.is_error
    assert seen == [(Point(x=1, y=0), Colour.GREEN)]


def test_sphinx_docstrings_and_no_docstring() -> None:
    desc, params = _parse_docstring(
        """Do it.

        :param a: the a
        :param int b: the b,
            continued
        :returns: nothing
        """
    )
    assert desc == "Do it."
    assert params == {"a": "the a", "b": "the b, continued"}

    @tool
    def bare(x: int) -> int:
        return x

    assert bare.description == "bare"
    assert "description" not in bare.definition.parameters["properties"]["x"]


def test_a_returns_line_is_not_a_parameter() -> None:
    desc, params = _parse_docstring("Sum.\n\nArgs:\n    a: first\n\nReturns: the sum\n")
    assert desc == "Sum."
    assert params == {"a": "first"}


def test_inline_notes_stay_in_the_description() -> None:
    desc, params = _parse_docstring(
        "Fetch a page.\n\nNote: it may be slow.\n\nArgs:\n    url: where\n"
    )
    assert desc == "Fetch a page.\n\nNote: it may be slow."
    assert params == {"url": "where"}


def test_parameter_names_that_clash_with_pydantic(ctx: ToolContext) -> None:
    @tool
    async def dump(json: str, schema: int = 1, model_name: str = "m") -> str:
        """Echo."""
        return f"{json}|{schema}|{model_name}"

    props = dump.definition.parameters["properties"]
    assert set(props) == {"json", "schema", "model_name"}
    out = asyncio.run(dump.invoke({"json": "j", "schema": 2, "model_name": "x"}, ctx))
    assert out.content == "j|2|x"


def test_context_is_injected_and_not_in_the_schema(ctx: ToolContext) -> None:
    @tool
    async def whoami(context: ToolContext, shout: bool = False) -> str:
        """Who is asking."""
        name = context.caller.user_id
        return f"{name.upper() if shout else name} {context.run_id} {context.privilege.name}"

    assert set(whoami.definition.parameters["properties"]) == {"shout"}
    assert whoami.context_param == "context"
    out = asyncio.run(whoami.invoke({"shout": True}, ctx))
    assert out.content == "U1 run-1 USER"


@pytest.mark.parametrize(
    ("fn_source", "message"),
    [
        ("def f(*args: int) -> None: ...", r"\*args/\*\*kwargs"),
        ("def f(a: int, /) -> None: ...", "positional-only"),
        ("def f(a: 'Missing') -> None: ...", "cannot resolve its type hints"),
    ],
)
def test_unsupported_signatures_are_config_errors(fn_source: str, message: str) -> None:
    namespace: dict[str, Any] = {}
    exec(fn_source, namespace)
    with pytest.raises(ConfigError, match=message):
        tool(namespace["f"])


def test_tool_names_follow_the_provider_rule() -> None:
    def ok() -> None: ...

    with pytest.raises(ConfigError, match="1-64 letters"):
        tool(ok, name="has space")
    assert tool(ok, name="ok-2_x").name == "ok-2_x"


# --- invoking -------------------------------------------------------------------------


async def test_bad_arguments_come_back_as_readable_tool_errors(ctx: ToolContext) -> None:
    @tool
    async def add(a: int, b: int = 0) -> int:
        """Add."""
        return a + b

    wrong_type = await add.invoke({"a": "three"}, ctx)
    assert wrong_type.is_error
    assert wrong_type.content.startswith(
        "invalid arguments for add: a: Input should be a valid integer"
    )
    missing = await add.invoke({}, ctx)
    assert missing.is_error and "a: Field required" in missing.content
    extra = await add.invoke({"a": 1, "c": 2}, ctx)
    assert extra.is_error and "c: Extra inputs are not permitted" in extra.content
    not_a_dict = await add.invoke(["a"], ctx)  # type: ignore[arg-type]
    assert not_a_dict.is_error and "invalid arguments for add" in not_a_dict.content
    good = await add.invoke({"a": 2, "b": 3}, ctx)
    assert good.content == "5" and not good.is_error and good.duration_ms >= 0


async def test_none_arguments_mean_no_arguments(ctx: ToolContext) -> None:
    @tool
    async def ping() -> str:
        """Ping."""
        return "pong"

    assert (await ping.invoke(None, ctx)).content == "pong"


_GENERIC = re.compile(r"^(\w+) failed: the tool had an internal error \(ref ([0-9A-F]{6})\)\.$")


async def test_an_unexpected_exception_is_logged_and_the_model_told_only_that_it_failed(
    ctx: ToolContext, caplog: pytest.LogCaptureFixture
) -> None:
    @tool
    async def boom() -> None:
        """Explode."""
        raise KeyError("/srv/coterie/secret-path sk-live-abcdefghijkl")

    @tool
    def sync_boom() -> None:
        """Explode in a thread."""
        raise ValueError("bad value")

    with caplog.at_level(logging.ERROR, logger="executor.tools.registry"):
        out = await boom.invoke({}, ctx)
        assert out.is_error
        m = _GENERIC.match(out.content)
        assert m and m.group(1) == "boom", out.content
        assert "secret-path" not in out.content and "KeyError" not in out.content
        record = caplog.records[-1]
        logged = record.getMessage()
        assert f"tool boom failed in run {ctx.run_id}" in logged and m.group(2) in logged
        assert "KeyError" in logged and "Traceback" in logged and "secret-path" in logged
        assert "sk-live-abcdefghijkl" not in logged and "[redacted]" in logged

        out = await sync_boom.invoke({}, ctx)
        assert _GENERIC.match(out.content) and "bad value" not in out.content
        assert "ValueError: bad value" in caplog.records[-1].getMessage()


async def test_a_tool_opts_in_to_showing_its_failure(ctx: ToolContext) -> None:
    @tool
    async def retry() -> None:
        """Ask the model to change its mind."""
        raise ToolRetry("use a date in the past")

    @tool
    async def failed() -> None:
        """Say what went wrong."""
        raise ToolFailed("the library is closed on Sundays")

    @tool
    async def silent() -> None:
        """Fail without words."""
        raise ToolFailed()

    out = await retry.invoke({}, ctx)
    assert out.is_error and out.content == "use a date in the past"
    out = await failed.invoke({}, ctx)
    assert out.is_error and out.content == "the library is closed on Sundays"
    out = await silent.invoke({}, ctx)
    assert out.is_error and out.content == "silent failed"
    assert issubclass(ToolRetry, ToolFailed)


@pytest.mark.parametrize("shared", [False, True], ids=["asyncio.timeout", "shared timers"])
async def test_timeout(ctx: ToolContext, shared: bool) -> None:
    """The same with the executor's shared timers (``executor._deadlines``) as with
    ``asyncio.timeout``."""
    deadlines = Deadlines() if shared else None
    never = asyncio.Event()

    @tool(timeout_s=0.05)
    async def hang() -> None:
        """Wait forever."""
        await never.wait()

    @tool
    async def own_timeout() -> None:
        """A tool whose own I/O timed out."""
        raise TimeoutError("upstream was slow")

    out = await hang.invoke({}, ctx, deadlines=deadlines)
    assert out.is_error and out.content == "hang timed out after 0.05 s"
    # Not our deadline: the tool's own I/O timed out, an exception like any other.
    out = await own_timeout.invoke({}, ctx, deadlines=deadlines)
    assert out.is_error and _GENERIC.match(out.content) and "upstream" not in out.content


@pytest.mark.parametrize("shared", [False, True], ids=["asyncio.timeout", "shared timers"])
async def test_cancellation_propagates(ctx: ToolContext, shared: bool) -> None:
    deadlines = Deadlines() if shared else None
    started = asyncio.Event()

    @tool
    async def wait() -> None:
        """Wait."""
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(wait.invoke({}, ctx, deadlines=deadlines))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("shared", [False, True], ids=["asyncio.timeout", "shared timers"])
async def test_only_the_timeouts_own_cancel_is_a_timeout(ctx: ToolContext, shared: bool) -> None:
    """A tool that outlives its timeout's cancel returns its result, the task's cancel
    count as it was; a cancel that lands with the timeout's is still a cancel."""
    deadlines = Deadlines() if shared else None
    swallowed, release = asyncio.Event(), asyncio.Event()

    @tool(timeout_s=0.01)
    async def stubborn() -> str:
        """Outlive the first cancel."""
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()
            await release.wait()
        return "kept"

    async def outlives() -> tuple[Any, int]:
        out = await stubborn.invoke({}, ctx, deadlines=deadlines)
        me = asyncio.current_task()
        assert me is not None
        return out, me.cancelling()

    task = asyncio.create_task(outlives())
    await swallowed.wait()
    release.set()
    out, cancelling = await task
    assert not out.is_error and out.content == "kept" and cancelling == 0

    @tool(timeout_s=0.01)
    async def cancelled_too() -> None:
        """The host cancels as the timeout does."""
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            me = asyncio.current_task()
            assert me is not None
            me.cancel()
            raise

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(cancelled_too.invoke({}, ctx, deadlines=deadlines))


async def test_result_cap_and_rendering(ctx: ToolContext) -> None:
    @dataclass
    class Row:
        id: int
        name: str

    @tool(max_result_chars=10)
    async def long() -> str:
        """Long."""
        return "x" * 25

    @tool
    async def rows() -> list[Row]:
        """Rows."""
        return [Row(1, "a")]

    @tool
    async def model() -> Point:
        """A model."""
        return Point(x=1)

    @tool
    async def nothing() -> None:
        """Nothing."""

    out = await long.invoke({}, ctx)
    assert out.truncated and out.content == "x" * 10 + "\n[truncated 15 characters]"
    assert (await rows.invoke({}, ctx)).content == '[{"id":1,"name":"a"}]'
    assert (await model.invoke({}, ctx)).content == '{"x":1,"y":0}'
    assert (await nothing.invoke({}, ctx)).content == "(no result)"


# --- the event loop is never blocked ------------------------------------------------------


async def _max_ticker_lag(work: asyncio.Future[Any], period: float = 0.01) -> float:
    """Run a ticker until ``work`` is done; return the worst lateness of a tick."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    while not work.done():
        expected = loop.time() + period
        await asyncio.sleep(period)
        worst = max(worst, loop.time() - expected)
    return worst


async def test_a_blocking_sync_tool_runs_in_a_thread_and_does_not_stall_the_loop(
    ctx: ToolContext,
) -> None:
    @tool
    def slow() -> str:
        """Block for a while, as a careless sync library would."""
        time.sleep(1.5)
        return "slept"

    assert slow.isolation == "thread"
    work = asyncio.ensure_future(slow.invoke({}, ctx))
    lag = await _max_ticker_lag(work)
    assert (await work).content == "slept"
    assert lag < 0.5, f"the loop stalled {lag:.2f} s"


async def test_the_ticker_does_see_an_inline_blocking_tool(ctx: ToolContext) -> None:
    # The control: the same measurement catches a tool that does block the loop.
    @tool(isolation="inline")
    def blocking() -> str:
        """Block the loop (on purpose)."""
        time.sleep(0.3)
        return "blocked"

    loop = asyncio.get_running_loop()
    work = loop.create_future()

    async def later() -> None:
        await asyncio.sleep(0)
        await blocking.invoke({}, ctx)
        work.set_result(None)

    task = asyncio.create_task(later())
    lag = await _max_ticker_lag(work)
    await task
    assert lag >= 0.25


# --- permissions ---------------------------------------------------------------------------


def _registry() -> ToolRegistry:
    async def look() -> str:
        """Look."""
        return "ok"

    async def ban(user: str) -> str:
        """Ban a user."""
        return user

    async def shutdown() -> str:
        """Stop."""
        return "bye"

    return ToolRegistry(
        [
            tool(look),
            tool(ban, min_privilege=Privilege.MODERATOR, requires_approval=True),
            tool(shutdown, min_privilege=Privilege.OWNER),
        ],
        enabled=["look", "ban"],
    )


def test_refusal_messages_for_each_stage() -> None:
    reg = _registry()
    granted = ["look", "ban", "shutdown"]
    assert reg.refusal("nope", granted, Privilege.OWNER) == "there is no tool named 'nope'"
    assert (
        reg.refusal("shutdown", granted, Privilege.OWNER)
        == "the tool 'shutdown' is not enabled on this deployment"
    )
    assert (
        reg.refusal("ban", ["look"], Privilege.ADMIN)
        == "the tool 'ban' is not granted to this agent"
    )
    assert (
        reg.refusal("ban", granted, Privilege.USER)
        == "the tool 'ban' needs moderator privilege (the caller has user)"
    )
    assert reg.refusal("ban", granted, Privilege.MODERATOR) is None
    assert reg.refusal("look", granted, Privilege.USER) is None


def test_available_filters_and_keeps_grant_order_once() -> None:
    reg = _registry()
    names = [t.name for t in reg.available(["ban", "look", "ban", "ghost"], Privilege.ADMIN)]
    assert names == ["ban", "look"]
    assert [t.name for t in reg.available(["ban", "look"], Privilege.USER)] == ["look"]
    assert [d.name for d in reg.definitions(["look"], Privilege.USER)] == ["look"]
    assert reg.enabled_names == ["ban", "look"]
    assert reg.names == ["ban", "look", "shutdown"]
    assert len(reg) == 3 and "ban" in reg and reg.get("ghost") is None


def test_requires_approval_is_carried() -> None:
    reg = _registry()
    ban = reg.get("ban")
    assert ban is not None and ban.requires_approval
    look = reg.get("look")
    assert look is not None and not look.requires_approval


def test_register_decorator_and_duplicates() -> None:
    reg = ToolRegistry()

    @reg.register
    async def one() -> int:
        """One."""
        return 1

    # `register(**options)` returns Any; say what the decorator it returns does.
    register_two: Callable[[Callable[..., Any]], Tool] = reg.register(timeout_s=2, name="two")

    @register_two
    async def second() -> int:
        """Two."""
        return 2

    assert isinstance(one, Tool) and reg.names == ["one", "two"]
    assert second.timeout_s == 2
    with pytest.raises(ConfigError, match="registered twice"):
        reg.add(tool(one.function))


def test_status_line() -> None:
    async def fetch(url: str) -> str:
        """Fetch."""
        return url

    t = tool(fetch, status="reading {host}")
    assert t.status_line({"url": "https://docs.python.org/3/"}) == "reading docs.python.org"
    assert tool(fetch, status="get {missing}").status_line({"url": "x"}) == "using fetch"
    assert tool(fetch).status_line({"url": "x"}) == "using fetch"
    long = tool(fetch, status="{url}").status_line({"url": "x" * 200})
    assert len(long) == 80 and long.endswith("…")


def test_privilege_of_context() -> None:
    c = ToolContext(run_id="r", caller=Caller(privilege=Privilege.ADMIN))
    assert c.privilege is Privilege.ADMIN
