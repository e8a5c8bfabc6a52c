"""Web search through Discord and the real composition root: the researcher searches
(Brave, a loopback fake), the search is charged to the member in the SQL ledger, a
link the run never saw is flagged in the delivered answer, and ``/audit show`` lists
the run's sources. A search that fails over is charged once, for the provider that
answered; one that fails everywhere is charged nothing; the ledger, the audit and the
member's cost footer agree."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from adapters.discord.admin_views import run_detail_pages
from adapters.storage.audit_queries import RunFilter
from bot.app import App
from executor.budget import format_usd
from executor.messages import Usage
from executor.testing import Reply, RunEnds, ScriptedModel, call
from tests.apps import scripted_app
from tests.executor.tools.search_fakes import FakeSearch
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import coterie_bot, run_bot


@pytest.fixture
async def search() -> AsyncIterator[FakeSearch]:
    fake = FakeSearch()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def app(tmp_path: Path, search: FakeSearch) -> AsyncIterator[tuple[App, ScriptedModel]]:
    async with scripted_app(
        tmp_path,
        brave_api_key=SecretStr("brave-key"),
        brave_url=search.brave_url,
        tavily_api_key=SecretStr("tvly-key"),
        tavily_url=search.tavily_url,
    ) as built:
        yield built


async def test_the_researcher_searches_pays_and_its_unseen_link_is_flagged(
    fake_discord: FakeDiscord, app: tuple[App, ScriptedModel], search: FakeSearch
) -> None:
    the_app, model = app
    fake = fake_discord
    bot = coterie_bot(fake, app=the_app, extensions=("commands.persona", "commands.chat"))
    ends = RunEnds()
    the_app.executor.observers.append(ends)
    async with run_bot(fake, bot):
        model.push(
            call("web_search", query="PEP 703"),
            Reply(
                text=(
                    "PEP 703 makes the GIL optional <https://peps.python.org/pep-0703/>; "
                    "the steering council agreed <https://made-up.example/council>."
                ),
                usage=Usage(input_tokens=300, output_tokens=40, cost_micros=1_000, requests=1),
            ),
        )
        since = len(fake.calls)
        await fake.dispatch_message(
            f"<@{fake.bot_user['id']}> researcher: what is PEP 703?", mentions=["bot"]
        )
        delivered = await fake.wait_for_call(
            "PATCH",
            r"/webhooks/{id}/{token}/messages/{m}",
            predicate=lambda c: "Unverified link" in (c.json or {}).get("content", ""),
            since=since,
        )
        await ends.next()
        # (inside the block: leaving it closes the bot, and the bot closes the app)
        content = delivered.json["content"]
        assert "-# ⚠ Unverified link" in content and "made-up.example/council" in content
        assert "web_search" in [t.name for t in model.requests[0].tools]
        assert search.calls("brave")[0]["q"] == "PEP 703"

        await the_app.audit.flush()
        [run] = (await the_app.audit_queries.list_runs(RunFilter(trigger="chat"))).runs
        assert run.cost_micros == 1_000 + 5_000  # the model, and one Brave query
        assert "<https://made-up.example/council> [unverified]" in run.output_excerpt
        alice = str(fake.user("alice")["id"])
        status = await the_app.budget.status(alice)
        assert status.spent_micros == 6_000 and status.reserved_micros == 0

        detail = await the_app.audit_queries.get_run(run.run_id)
        assert detail is not None
        kinds = {e.kind: e for e in detail.events}
        assert kinds["tool_charge"].cost_micros == 5_000
        assert kinds["sources"].data["unverified"] == ["https://made-up.example/council"]
        pages = run_detail_pages(detail)
        steps = "\n".join(p.description or "" for p in pages[1:])
        assert "found by search: <https://docs.python.org/3/whatsnew/3.13.html>" in steps
        assert "⚠ cited but unverified: <https://made-up.example/council>" in steps
        assert "`web_search` charged $0.005" in steps


@pytest.mark.parametrize(
    ("failing", "charged", "answered_by"),
    [({"brave"}, 8_000, "Tavily"), ({"brave", "tavily"}, 0, None)],
    ids=["brave-fails-tavily-answers", "both-fail"],
)
async def test_a_failed_search_is_not_charged_and_the_member_sees_the_true_cost(
    fake_discord: FakeDiscord,
    app: tuple[App, ScriptedModel],
    search: FakeSearch,
    failing: set[str],
    charged: int,
    answered_by: str | None,
) -> None:
    the_app, model = app
    fake = fake_discord
    search.fail.update(failing)
    await the_app.guild_settings.update_guild(str(fake.guild.id), cost_footer=True)
    bot = coterie_bot(fake, app=the_app, extensions=("commands.persona", "commands.chat"))
    ends = RunEnds()
    the_app.executor.observers.append(ends)
    async with run_bot(fake, bot):
        model.push(
            call("web_search", query="PEP 703"),
            Reply(
                text="Here is what I found.",
                usage=Usage(input_tokens=300, output_tokens=40, cost_micros=1_000, requests=1),
            ),
        )
        since = len(fake.calls)
        await fake.dispatch_message(
            f"<@{fake.bot_user['id']}> researcher: what is PEP 703?", mentions=["bot"]
        )
        footer = f"-# {format_usd(1_000 + charged)} · "
        delivered = await fake.wait_for_call(
            "PATCH",
            r"/webhooks/{id}/{token}/messages/{m}",
            predicate=lambda c: footer in (c.json or {}).get("content", ""),
            since=since,
        )
        await ends.next()
        assert "Here is what I found." in delivered.json["content"]
        assert len(search.calls("brave")) == 1 and len(search.calls("tavily")) == 1
        result = model.requests[1].messages[-1].tool_results[0]
        if answered_by is None:
            # What the model relays to the member: no search, and no charge for it.
            assert result.is_error and "(no search was charged)" in result.content
        else:
            assert f"(searched with {answered_by})" in result.content

        await the_app.audit.flush()
        [run] = (await the_app.audit_queries.list_runs(RunFilter(trigger="chat"))).runs
        detail = await the_app.audit_queries.get_run(run.run_id)
        assert detail is not None
        charges = [e.cost_micros for e in detail.events if e.kind == "tool_charge"]
        assert charges == ([charged] if charged else [])
        alice = str(fake.user("alice")["id"])
        status = await the_app.budget.status(alice)
        assert run.cost_micros == status.spent_micros == 1_000 + charged
        assert status.reserved_micros == 0
