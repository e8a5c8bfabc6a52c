"""Citations are checked: after a run that used web tools, links in the answer that the
run neither fetched nor got from a search are marked unverified, and the run's sources
are recorded for ``/audit show``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from executor.agent import Caller, Invocation, RunnableAgent, RunStatus
from executor.events import SourcesEvent
from executor.messages import Message
from executor.run import Executor
from executor.testing import AuditCapture, ScriptedModel, call
from executor.tools import ToolRegistry, tool
from executor.tools.citations import CitationCheck, find_urls, mark_unverified, same_link_key
from executor.tools.search import SearxngSearch, web_search_tool
from tests.executor.tools.search_fakes import FakeSearch


@pytest.fixture
async def fake() -> AsyncIterator[FakeSearch]:
    server = FakeSearch()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def test_urls_are_found_in_prose_brackets_and_markdown() -> None:
    text = (
        "See <https://a.example/x>, [the PEP](https://peps.python.org/pep-0703/) and "
        "https://en.wikipedia.org/wiki/Python_(programming_language). Also (https://b.example/y)."
    )
    assert [u for _s, _e, u in find_urls(text)] == [
        "https://a.example/x",
        "https://peps.python.org/pep-0703/",
        "https://en.wikipedia.org/wiki/Python_(programming_language)",
        "https://b.example/y",
    ]


def test_spellings_of_one_link_match() -> None:
    base = same_link_key("https://docs.python.org/3/whatsnew/")[0]
    for other in (
        "http://docs.python.org/3/whatsnew",
        "https://www.docs.python.org/3/whatsnew/#section",
        "HTTPS://Docs.Python.org:443/3/whatsnew",
    ):
        assert same_link_key(other)[0] == base
    assert (
        same_link_key("https://x.example/a?utm_source=z")[1]
        == same_link_key("https://x.example/a")[0]
    )
    assert same_link_key("https://x.example/a")[0] != same_link_key("https://x.example/b")[0]


def test_marks_go_after_the_closing_bracket() -> None:
    text = "Read <https://bad.example/> and [this](https://bad.example/) or https://ok.example."
    marked = mark_unverified(text, ["https://bad.example/"])
    assert marked == (
        "Read <https://bad.example/> [unverified] and [this](https://bad.example/) [unverified] "
        "or https://ok.example."
    )


async def test_an_answer_citing_an_unfetched_url_is_marked_and_the_sources_recorded(
    fake: FakeSearch,
) -> None:
    @tool
    async def web_fetch(url: str) -> str:
        """A stand-in web_fetch: the final URL first, then the page."""
        return f"{url}\n\nThe page text, linking https://linked-but-not-read.example/."

    registry = ToolRegistry([web_search_tool([SearxngSearch(fake.searxng_url)]), web_fetch])
    answer = (
        "Python 3.13 adds a free-threaded build <https://docs.python.org/3/whatsnew/3.13.html>, "
        "per PEP 703 <https://peps.python.org/pep-0703/>, as the release notes say "
        "<https://made-up.example/python-3.13-notes>; see also "
        "https://linked-but-not-read.example/ and the page you gave, https://given.example/q."
    )
    model = ScriptedModel(
        [
            call("web_search", query="python 3.13 free threading"),
            call("web_fetch", url="https://docs.python.org/3/whatsnew/3.13.html"),
            answer,
        ]
    )
    audit = AuditCapture()
    result = await Executor(tools=registry, audit=audit, hooks=[CitationCheck()]).run(
        RunnableAgent(model=model, tools=("web_search", "web_fetch")),
        Invocation(
            messages=[Message.user("What is new in 3.13? Start at https://given.example/q")],
            caller=Caller(user_id="ada"),
        ),
    )
    assert result.status is RunStatus.OK
    assert "<https://made-up.example/python-3.13-notes> [unverified]" in result.output
    assert "https://linked-but-not-read.example/ [unverified]" in result.output
    assert result.output.count("[unverified]") == 2  # the read, searched and given ones are not
    assert result.note is not None and "Unverified links" in result.note
    assert "https://made-up.example/python-3.13-notes" in result.note
    [sources] = [e for e in audit.events if isinstance(e, SourcesEvent)]
    assert sources.fetched == ("https://docs.python.org/3/whatsnew/3.13.html",)
    assert "https://peps.python.org/pep-0703/" in sources.searched
    assert sources.unverified == (
        "https://made-up.example/python-3.13-notes",
        "https://linked-but-not-read.example/",
    )


async def test_a_run_without_web_tools_is_left_alone() -> None:
    model = ScriptedModel(["See https://anything.example/ for more."])
    audit = AuditCapture()
    result = await Executor(audit=audit, hooks=[CitationCheck()]).run(
        RunnableAgent(model=model), Invocation(messages=[Message.user("hi")])
    )
    assert result.output == "See https://anything.example/ for more."
    assert result.note is None
    assert not [e for e in audit.events if isinstance(e, SourcesEvent)]


async def test_a_failed_fetch_is_not_a_source() -> None:
    @tool
    async def web_fetch(url: str) -> str:
        """Always fails."""
        from executor.errors import ToolFailed

        raise ToolFailed(f"{url} answered HTTP 404")

    model = ScriptedModel(
        [call("web_fetch", url="https://gone.example/"), "It is at https://gone.example/."]
    )
    result = await Executor(tools=ToolRegistry([web_fetch]), hooks=[CitationCheck()]).run(
        RunnableAgent(model=model, tools=("web_fetch",)), Invocation(messages=[Message.user("x")])
    )
    assert result.output == "It is at https://gone.example/ [unverified]."
