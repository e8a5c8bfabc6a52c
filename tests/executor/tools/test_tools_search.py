"""``web_search`` against loopback fakes of SearXNG, Brave and Tavily: results as title,
URL and snippet; a keyed search priced, held in the member's budget before the
request, and charged only when its provider answered; failover (charged once, for the
provider that answered; nothing when all fail); a refused key named without the key."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from executor.agent import Caller, Invocation, RunnableAgent, RunStatus
from executor.budget import InMemoryBudgetLedger
from executor.errors import ConfigError
from executor.events import ToolChargeEvent
from executor.messages import Message
from executor.models.pricing import PriceTable
from executor.run import Executor
from executor.testing import AuditCapture, ScriptedModel, call
from executor.tools import ToolContext, ToolRegistry
from executor.tools.search import (
    BraveSearch,
    SearxngSearch,
    TavilySearch,
    search_providers,
    web_search_tool,
)
from tests.executor.tools.search_fakes import FakeSearch

ADA = Caller(user_id="ada")


@pytest.fixture
async def fake() -> AsyncIterator[FakeSearch]:
    server = FakeSearch()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _run(query: str = "python 3.13") -> Invocation:
    return Invocation(messages=[Message.user(query)], caller=ADA)


async def test_searxng_gives_titles_urls_and_snippets(fake: FakeSearch, ctx: ToolContext) -> None:
    tool = web_search_tool([SearxngSearch(fake.searxng_url)])
    out = await tool.invoke({"query": "python 3.13", "count": 1}, ctx)
    assert not out.is_error, out.content
    assert out.content == (
        'Results for "python 3.13" (searched with SearXNG):\n'
        "1. What's new in Python 3.13\n"
        "   https://docs.python.org/3/whatsnew/3.13.html\n"
        "   The free-threaded build and a new interactive interpreter."
    )
    [asked] = fake.calls("searxng")
    assert asked["q"] == "python 3.13" and asked["format"] == "json"
    # The loopback SearXNG was let past the SSRF guard; a model-chosen loopback URL is not.
    assert tool.definition.parameters["required"] == ["query"]


async def test_a_brave_search_is_reserved_and_charged_to_the_member(fake: FakeSearch) -> None:
    price = PriceTable().call_micros("search:brave")
    assert price == 5_000  # $0.005 a query, the table's list price
    registry = ToolRegistry([web_search_tool([BraveSearch("brave-key", price, fake.brave_url)])])
    ledger = InMemoryBudgetLedger(default_limit_micros=1_000_000)
    audit = AuditCapture()
    model = ScriptedModel([call("web_search", query="python 3.13"), "Found it."])
    result = await Executor(tools=registry, budget=ledger, audit=audit).run(
        RunnableAgent(model=model, tools=("web_search",)), _run()
    )
    assert result.status is RunStatus.OK
    searched = model.requests[1].messages[-1].tool_results[0]
    assert "(searched with Brave)" in searched.content and "peps.python.org" in searched.content
    [asked] = fake.calls("brave")
    assert asked["token"] == "brave-key" and asked["count"] == "5"
    assert result.usage.cost_micros == price  # the scripted model itself cost nothing
    assert (await ledger.status("ada")).spent_micros == price
    [charge] = [e for e in audit.events if isinstance(e, ToolChargeEvent)]
    assert (charge.name, charge.cost_micros) == ("web_search", price)
    assert "Brave search" in charge.what


async def test_a_member_who_cannot_afford_a_search_gets_none(fake: FakeSearch) -> None:
    registry = ToolRegistry([web_search_tool([BraveSearch("brave-key", 5_000, fake.brave_url)])])
    ledger = InMemoryBudgetLedger(default_limit_micros=4_000)
    model = ScriptedModel([call("web_search", query="python"), "No search, sorry."])
    result = await Executor(tools=registry, budget=ledger).run(
        RunnableAgent(model=model, tools=("web_search",)), _run()
    )
    assert result.status is RunStatus.OK
    refused = model.requests[1].messages[-1].tool_results[0]
    assert refused.is_error and "budget cannot cover a Brave search ($0.005" in refused.content
    assert fake.calls("brave") == []  # never sent: the reservation came first
    assert (await ledger.status("ada")).spent_micros == 0


def _charges(audit: AuditCapture) -> list[ToolChargeEvent]:
    return [e for e in audit.events if isinstance(e, ToolChargeEvent)]


async def test_a_search_that_fails_over_is_charged_once_for_the_provider_that_answered(
    fake: FakeSearch,
) -> None:
    fake.fail.add("brave")
    registry = ToolRegistry(
        [
            web_search_tool(
                [
                    BraveSearch("brave-key", 5_000, fake.brave_url),
                    TavilySearch("tvly-key", 8_000, fake.tavily_url),
                ]
            )
        ]
    )
    ledger = InMemoryBudgetLedger(default_limit_micros=1_000_000)
    audit = AuditCapture()
    model = ScriptedModel([call("web_search", query="pep 703"), "Found it."])
    result = await Executor(tools=registry, budget=ledger, audit=audit).run(
        RunnableAgent(model=model, tools=("web_search",)), _run()
    )
    assert result.status is RunStatus.OK
    assert len(fake.calls("brave")) == 1 and len(fake.calls("tavily")) == 1
    assert "(searched with Tavily)" in model.requests[1].messages[-1].tool_results[0].content
    # Brave failed: its price went back. Tavily answered: charged, once.
    [charge] = _charges(audit)
    assert charge.cost_micros == 8_000 and "Tavily search" in charge.what
    status = await ledger.status("ada")
    assert result.usage.cost_micros == status.spent_micros == 8_000
    assert status.reserved_micros == 0


async def test_a_search_that_fails_everywhere_is_charged_nothing_and_says_so(
    fake: FakeSearch,
) -> None:
    fake.fail.update({"brave", "tavily"})
    registry = ToolRegistry(
        [
            web_search_tool(
                [
                    BraveSearch("brave-key", 5_000, fake.brave_url),
                    TavilySearch("tvly-key", 8_000, fake.tavily_url),
                ]
            )
        ]
    )
    # Room for one search only: the first one's hold was given back before the second.
    ledger = InMemoryBudgetLedger(default_limit_micros=8_000)
    audit = AuditCapture()
    model = ScriptedModel([call("web_search", query="pep 703"), "Search is down."])
    result = await Executor(tools=registry, budget=ledger, audit=audit).run(
        RunnableAgent(model=model, tools=("web_search",)), _run()
    )
    assert result.status is RunStatus.OK
    assert len(fake.calls("brave")) == 1 and len(fake.calls("tavily")) == 1
    told = model.requests[1].messages[-1].tool_results[0]
    assert told.is_error and "unavailable right now (no search was charged)" in told.content
    assert _charges(audit) == []
    status = await ledger.status("ada")
    assert result.usage.cost_micros == status.spent_micros == 0
    assert status.reserved_micros == 0


async def test_a_failing_provider_hands_over_to_the_next(
    fake: FakeSearch, ctx: ToolContext
) -> None:
    fake.fail.add("searxng")
    tool = web_search_tool(
        [SearxngSearch(fake.searxng_url), TavilySearch("tvly-key", 8_000, fake.tavily_url)]
    )
    out = await tool.invoke({"query": "pep 703"}, ctx)
    assert "(searched with Tavily)" in out.content
    [asked] = fake.calls("tavily")
    assert asked["query"] == "pep 703" and asked["auth"] == "Bearer tvly-key"

    fake.fail.add("tavily")
    out = await tool.invoke({"query": "pep 703"}, ctx)
    assert out.is_error
    assert "SearXNG answered HTTP 500" in out.content and "Tavily answered HTTP 500" in out.content


async def test_a_refused_key_is_named_but_not_shown(fake: FakeSearch, ctx: ToolContext) -> None:
    tool = web_search_tool([BraveSearch("wrong-secret-key", 0, fake.brave_url)])
    out = await tool.invoke({"query": "x"}, ctx)
    assert out.is_error and "Brave refused the request (HTTP 401: the key?)" in out.content
    assert "wrong-secret-key" not in out.content


async def test_an_empty_query_asks_for_a_better_call(ctx: ToolContext) -> None:
    tool = web_search_tool([SearxngSearch("http://127.0.0.1:9/")])
    out = await tool.invoke({"query": "  "}, ctx)
    assert out.is_error and "the query is empty" in out.content


def test_providers_come_in_order_from_what_is_configured() -> None:
    assert search_providers() == []
    chain = search_providers(searxng_url="http://searx.lan:8080", brave_key="k", tavily_key="t")
    assert [p.name for p in chain] == ["SearXNG", "Brave", "Tavily"]
    chain = search_providers(brave_key="k", tavily_key="t", order=["tavily", "brave"])
    assert [p.name for p in chain] == ["Tavily", "Brave"]
    with pytest.raises(ConfigError, match="names 'bing'; the providers are searxng, brave"):
        search_providers(order=["bing"])
    with pytest.raises(
        ConfigError, match=r"names brave, which is not configured \(set BRAVE_API_KEY"
    ):
        search_providers(order=["brave"])
    with pytest.raises(ConfigError, match="COTERIE_SEARXNG_URL must be an http"):
        search_providers(searxng_url="searx.lan")


def test_search_prices_can_be_overridden_per_call() -> None:
    from executor.models.config import load_tier_config

    assert PriceTable().call_micros("search:tavily") == 8_000
    assert PriceTable().call_micros("search:unknown") == 0
    config = load_tier_config(None, {})
    assert config.price_table().call_micros("search:brave") == 5_000


def test_a_per_call_price_reads_from_the_config_file(tmp_path: object) -> None:
    from pathlib import Path

    from executor.models.config import load_tier_config

    path = Path(str(tmp_path)) / "coterie.toml"
    path.write_text('[prices."search:brave"]\nper_call = 0.009\n', encoding="utf-8")
    assert load_tier_config(path, {}).price_table().call_micros("search:brave") == 9_000
    path.write_text('[prices."search:brave"]\nper_query = 1\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="or per_call in US\\$ per call"):
        load_tier_config(path, {})
