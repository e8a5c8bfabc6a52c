"""An MCP tool through Discord: the real composition root (``build_app`` with a
``[mcp.t]`` server in coterie.toml, SQL audit and budget), the real cogs, the fake
Discord. Only the model is scripted; the MCP server is real (stdio)."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.storage.audit_queries import RunFilter
from bot.app import App, build_app
from executor.agent import Caller, Privilege
from executor.messages import Usage
from executor.testing import Reply, RunEnds, ScriptedModel, ScriptedTiers, call
from personas.model import Persona
from tests.apps import scripted_app
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import coterie_bot, run_bot
from tests.mcp.conftest import SERVER, STARTUP_S, alive

ADMIN = Caller(user_id="1", display_name="admin", privilege=Privilege.ADMIN)


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[App, ScriptedModel]]:
    (tmp_path / "coterie.toml").write_text(
        f"""
[mcp.t]
command = [{json.dumps(sys.executable)}, {json.dumps(str(SERVER))}]
startup_seconds = {STARTUP_S}
tools = ["echo", "add", "whoami"]

[mcp.t.tool.echo]
privilege = "user"
approval = false

[mcp.t.tool.add]
privilege = "user"
""",
        encoding="utf-8",
    )
    async with scripted_app(tmp_path) as (built, model):
        assert built.mcp is not None
        source = built.mcp.get("t")
        assert source is not None
        await source.accept(by="op")
        yield built, model


async def _persona(the_app: App, fake: FakeDiscord) -> None:
    await the_app.personas.create(
        str(fake.guild.id),
        Persona(
            name="toolsmith",
            system_prompt="You use the team's tools.",
            tools=("t__echo", "t__add", "t__whoami"),
        ),
        by=ADMIN,
    )


async def test_a_member_uses_an_mcp_tool_audited_and_charged(
    fake_discord: FakeDiscord, app: tuple[App, ScriptedModel]
) -> None:
    the_app, model = app
    fake = fake_discord
    await _persona(the_app, fake)
    bot = coterie_bot(fake, app=the_app, extensions=("commands.persona", "commands.chat"))
    ends = RunEnds()
    the_app.executor.observers.append(ends)
    async with run_bot(fake, bot):
        model.push(
            call("t__echo", text="from the server"),
            Reply(
                text="It said: from the server.",
                usage=Usage(input_tokens=100, output_tokens=10, cost_micros=2_500, requests=1),
            ),
        )
        since = len(fake.calls)
        await fake.dispatch_message(
            f"<@{fake.bot_user['id']}> toolsmith: ask the server", mentions=["bot"]
        )
        await fake.wait_for_call(
            "PATCH",
            r"/webhooks/{id}/{token}/messages/{m}",
            predicate=lambda c: "It said: from the server." in (c.json or {}).get("content", ""),
            since=since,
            timeout=60,
        )
        await ends.next()
        # alice is a member: the admin-only tool was never offered to the model.
        assert [t.name for t in model.requests[0].tools] == ["t__echo", "t__add"]
        result = model.requests[1].messages[-1].tool_results[0]
        assert (result.content, result.is_error) == ("from the server", False)

        await the_app.audit.flush()
        page = await the_app.audit_queries.list_runs(RunFilter(trigger="chat"))
        [run] = page.runs
        detail = await the_app.audit_queries.get_run(run.run_id)
        assert detail is not None
        [tool_call] = detail.tool_calls
        assert tool_call.name == "t__echo" and not tool_call.is_error
        assert "from the server" in tool_call.arguments
        alice = str(fake.user("alice")["id"])
        status = await the_app.budget.status(alice)
        assert status.spent_micros == run.cost_micros > 0
        assert status.reserved_micros == 0
        assert the_app.mcp is not None
        source = the_app.mcp.get("t")
        assert source is not None and source.connection is not None
        pid = source.connection.pid
    # Leaving the block closed the bot, and the bot the app: the drain stopped the server.
    assert pid is not None and not alive(pid)


async def test_approval_buttons_guard_an_mcp_tool(
    fake_discord: FakeDiscord, app: tuple[App, ScriptedModel]
) -> None:
    the_app, model = app
    fake = fake_discord
    await _persona(the_app, fake)
    bot = coterie_bot(fake, app=the_app, extensions=("commands.persona", "commands.chat"))
    async with run_bot(fake, bot):
        model.push(call("t__add", a=2, b=3), "2 + 3 = 5, says the server.")
        since = len(fake.calls)
        await fake.dispatch_message(
            f"<@{fake.bot_user['id']}> toolsmith: add 2 and 3", mentions=["bot"]
        )
        ask = await fake.wait_for_call(
            "POST",
            r"/channels/{c}/messages",
            predicate=lambda c: "components" in (c.json or {}),
            since=since,
            timeout=60,
        )
        assert "t__add" in json.dumps(ask.json)
        buttons: list[dict[str, Any]] = ask.json["components"][0]["components"]
        approve = next(b for b in buttons if b["label"] == "Approve")
        inter = await fake.dispatch_component(approve["custom_id"], int(ask.response["id"]))
        await fake.wait_for_interaction_response(inter)
        await fake.wait_for_call(
            "PATCH",
            r"/webhooks/{id}/{token}/messages/{m}",
            predicate=lambda c: "says the server" in (c.json or {}).get("content", ""),
            since=since,
            timeout=60,
        )
        tool_msgs = [m for m in model.requests[-1].messages if m.tool_results]
        assert tool_msgs[0].tool_results[0].content == "5"


async def test_a_changed_tool_is_refused_and_reported_in_the_admin_channel(
    fake_discord: FakeDiscord, app: tuple[App, ScriptedModel], tmp_path: Path
) -> None:
    accepted_app, _ = app  # accepted echo as it was
    fake = fake_discord
    toml = (tmp_path / "coterie.toml").read_text(encoding="utf-8")
    changed_toml = tmp_path / "changed.toml"
    changed_toml.write_text(
        toml.replace("[mcp.t]", '[mcp.t]\nenv = { MCP_TEST_VARIANT = "changed" }'),
        encoding="utf-8",
    )
    model = ScriptedModel()
    changed = await build_app(
        accepted_app.settings.model_copy(update={"config_file": changed_toml}),
        resolver=ScriptedTiers(model),
    )
    try:
        await _persona(changed, fake)
        admin_channel = fake.guild.channel_id("random")
        await changed.guild_settings.update_guild(
            str(fake.guild.id), admin_channel_id=str(admin_channel)
        )
        bot = coterie_bot(fake, app=changed, extensions=("commands.persona", "commands.chat"))
        async with run_bot(fake, bot):
            model.push(call("t__echo", text="x"), "The tool is off for now.")
            since = len(fake.calls)
            await fake.dispatch_message(
                f"<@{fake.bot_user['id']}> toolsmith: echo x", mentions=["bot"]
            )
            notice = await fake.wait_for_call(
                "POST",
                f"/channels/{admin_channel}/messages",
                since=since,
                timeout=60,
            )
            assert "`echo` changed since it was accepted" in notice.json["content"]
            assert "coterie mcp accept t" in notice.json["content"]
            await fake.wait_for_call(
                "PATCH",
                r"/webhooks/{id}/{token}/messages/{m}",
                predicate=lambda c: "off for now" in (c.json or {}).get("content", ""),
                since=since,
                timeout=60,
            )
            refused = model.requests[1].messages[-1].tool_results[0]
            assert refused.is_error and "is off" in refused.content
    finally:
        await changed.close()
