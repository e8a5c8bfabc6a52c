"""The built-in tools: calculator, current_time, web_fetch; the default registry."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

import executor.errors
import executor.tools
from executor.tools import ToolContext, WebFetcher, builtin_tools, calculate, default_registry
from executor.tools.builtin import (
    CalculationError,
    calculator_tool,
    current_time_tool,
    html_to_text,
)
from tests.executor.tools.tool_fakes import PUBLIC_IP

# --- calculator -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("7 / 2", "3.5"),
        ("7 // 2", "3"),
        ("-7 % 3", "2"),
        ("2 ** 10", "1024"),
        ("2 ** -1", "0.5"),
        ("-(3)", "-3"),
        ("+4", "4"),
        ("0.1 + 0.2", "0.3"),
        ("sqrt(16)", "4"),
        ("sqrt(2)", "1.4142135623731"),
        ("pi", "3.14159265358979"),
        ("e ** 1", "2.71828182845905"),
        ("log(100, 10)", "2"),
        ("ln(e)", "1"),
        ("sin(0) + cos(0)", "1"),
        ("max(1, 5, 3) - min(4, 2)", "3"),
        ("factorial(10)", "3628800"),
        ("round(2.567, 2)", "2.57"),
        ("2 ** 100", "1267650600228229401496703205376"),
        ("3 × 4 ÷ 2 − 1", "5"),
        ("1e3 * 2", "2000"),
    ],
)
def test_calculator_evaluates(expression: str, result: str) -> None:
    assert calculate(expression) == result


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1 / 0", "division by zero"),
        ("1 // 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("9 ** 9 ** 9", "too large"),
        ("10 ** 100000", "too large"),
        ("(2 ** 9000) * (2 ** 9000)", "too large"),
        ("factorial(100000)", "limited"),
        ("10.0 ** 400", "too large"),
        ("1e308 * 10", "not a finite number"),
        ("(-8) ** (1/3)", "not a real number"),
        ("sqrt(-1)", "math domain error"),
        ("2 ^ 3", "use \\*\\* for powers"),
        ("__import__('os').system('true')", "unknown function"),
        ("(1).__class__", "Attribute is not allowed"),
        ("x + 1", "unknown name 'x'"),
        ("'a' * 3", "only numbers"),
        ("True + 1", "only numbers"),
        ("1j * 2", "only numbers"),
        ("[1, 2]", "List is not allowed"),
        ("lambda: 1", "Lambda is not allowed"),
        ("1 < 2", "Compare is not allowed"),
        ("sqrt(x=4)", "unknown function"),
        ("1 +", "cannot parse"),
        ("", "empty"),
        ("1+" * 300 + "1", "longer than 500"),
    ],
)
def test_calculator_refuses_clearly(expression: str, message: str) -> None:
    with pytest.raises(CalculationError, match=message):
        calculate(expression)


def test_calculator_is_fast_on_hostile_input() -> None:
    start = time.perf_counter()
    for expression in [
        "9**9**9",
        "2**2**2**2**2**2",
        "factorial(1000)**1000",
        "((10**3000)*10)**2",
    ]:
        with pytest.raises(CalculationError):
            calculate(expression)
    assert time.perf_counter() - start < 1.0


async def test_calculator_tool_errors_reach_the_model(ctx: ToolContext) -> None:
    calc = calculator_tool()
    out = await calc.invoke({"expression": "1/0"}, ctx)
    assert out.is_error and out.content == "division by zero"
    out = await calc.invoke({"expression": "6*7"}, ctx)
    assert not out.is_error and out.content == "42"


# --- current_time -------------------------------------------------------------------------

SUMMER = datetime(2025, 7, 14, 12, 30, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        ("UTC", "2025-07-14T12:30:05+00:00 (Monday, UTC, UTC+00:00) in UTC"),
        ("Europe/Paris", "2025-07-14T14:30:05+02:00 (Monday, CEST, UTC+02:00) in Europe/Paris"),
        (
            "America/New_York",
            "2025-07-14T08:30:05-04:00 (Monday, EDT, UTC-04:00) in America/New_York",
        ),
        ("Asia/Kolkata", "2025-07-14T18:00:05+05:30 (Monday, IST, UTC+05:30) in Asia/Kolkata"),
        (
            "Pacific/Kiritimati",
            "2025-07-15T02:30:05+14:00 (Tuesday, +14, UTC+14:00) in Pacific/Kiritimati",
        ),
    ],
)
async def test_current_time_in_a_zone(ctx: ToolContext, zone: str, expected: str) -> None:
    out = await current_time_tool(lambda: SUMMER).invoke({"timezone": zone}, ctx)
    assert not out.is_error and out.content == expected


async def test_current_time_defaults_to_utc_and_is_aware(ctx: ToolContext) -> None:
    out = await current_time_tool().invoke({}, ctx)
    stamp = datetime.fromisoformat(out.content.split(" ")[0])
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    naive = await current_time_tool(lambda: datetime(2025, 1, 1, 9)).invoke(
        {"timezone": "utc"}, ctx
    )
    assert naive.content.startswith("2025-01-01T09:00:00+00:00")


@pytest.mark.parametrize(
    "zone", ["Mars/Olympus_Mons", "../../etc/passwd", "/etc/localtime", "Europe", "+02:00"]
)
async def test_an_unknown_zone_is_a_clear_error_with_an_example(
    ctx: ToolContext, zone: str
) -> None:
    out = await current_time_tool(lambda: SUMMER).invoke({"timezone": zone}, ctx)
    assert out.is_error
    assert out.content.startswith(f"unknown timezone {zone!r}")
    assert "Europe/Paris" in out.content


# --- web_fetch --------------------------------------------------------------------------------

ARTICLE = """<!doctype html><html><head><title>A Fine Article</title>
<script>var tracking = "do not show me";</script><style>p { color: red }</style></head>
<body><nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<article><h1>A Fine Article</h1>
<p>The first paragraph of the article explains the topic at some length so that an
extractor has enough text to recognise it as the main content of the page.</p>
<p>The second paragraph adds more detail, with further sentences about the topic,
because real articles are rarely a single line long and extractors know it.</p>
</article><footer>Copyright nobody</footer></body></html>"""


async def test_web_fetch_turns_html_into_text(
    ctx: ToolContext, make_fetcher: Callable[..., WebFetcher]
) -> None:
    fetcher = make_fetcher(
        lambda r: httpx.Response(
            200, text=ARTICLE, headers={"content-type": "text/html; charset=utf-8"}
        )
    )
    (web_fetch,) = [t for t in builtin_tools(fetcher=fetcher) if t.name == "web_fetch"]
    out = await web_fetch.invoke({"url": "https://example.com/article"}, ctx)
    assert not out.is_error, out.content
    assert out.content.startswith("https://example.com/article\n\n")
    assert "first paragraph of the article" in out.content
    assert "second paragraph" in out.content
    assert "tracking" not in out.content and "color: red" not in out.content


async def test_a_large_page_is_read_in_a_child_process(
    make_fetcher: Callable[..., WebFetcher],
) -> None:
    filler = "<p>" + "More words that pad the article out past the in-thread size. " * 20 + "</p>"
    page = ARTICLE.replace("</article>", filler * 60 + "</article>")
    fetcher = make_fetcher(
        lambda r: httpx.Response(200, text=page, headers={"content-type": "text/html"}),
        inline_extract_bytes=len(ARTICLE),
    )
    assert len(page) > fetcher.inline_extract_bytes
    text = await fetcher.fetch_text("https://example.com/long-article")
    assert "first paragraph of the article" in text and "pad the article out" in text
    assert "tracking" not in text


def test_html_to_text_falls_back_when_trafilatura_finds_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import trafilatura

    monkeypatch.setattr(trafilatura, "extract", lambda *a, **k: None)
    text = html_to_text(ARTICLE)
    assert text.startswith("# A Fine Article\n\n")
    assert "first paragraph of the article" in text and "Copyright nobody" in text
    assert "tracking" not in text and "color: red" not in text


async def test_plain_text_passes_through_with_its_charset(
    ctx: ToolContext, make_fetcher: Callable[..., WebFetcher]
) -> None:
    body = "café  au\tlait\n  spacing kept".encode("latin-1")
    fetcher = make_fetcher(
        lambda r: httpx.Response(
            200, content=body, headers={"content-type": "text/plain; charset=iso-8859-1"}
        )
    )
    assert (
        await fetcher.fetch_text("http://example.com/t.txt")
        == "http://example.com/t.txt\n\ncafé  au\tlait\n  spacing kept"
    )


@pytest.mark.parametrize(
    "content_type", ["application/pdf", "image/png", "application/octet-stream", "video/mp4"]
)
async def test_other_content_types_are_refused_clearly(
    ctx: ToolContext, make_fetcher: Callable[..., WebFetcher], content_type: str
) -> None:
    fetcher = make_fetcher(
        lambda r: httpx.Response(
            200, content=b"%PDF-1.7 \x00\x01", headers={"content-type": content_type}
        )
    )
    (web_fetch,) = [t for t in builtin_tools(fetcher=fetcher) if t.name == "web_fetch"]
    out = await web_fetch.invoke({"url": "https://example.com/file"}, ctx)
    assert out.is_error
    assert out.content == (
        f"https://example.com/file is {content_type}, not a web page; web_fetch reads HTML and plain text only"
    )


async def test_http_errors_and_refusals_reach_the_model(
    ctx: ToolContext, make_fetcher: Callable[..., WebFetcher]
) -> None:
    fetcher = make_fetcher(lambda r: httpx.Response(404, text="nope"))
    web_fetch = next(t for t in builtin_tools(fetcher=fetcher) if t.name == "web_fetch")
    out = await web_fetch.invoke({"url": "https://example.com/missing"}, ctx)
    assert out.is_error and out.content == "https://example.com/missing answered HTTP 404"
    out = await web_fetch.invoke({"url": "http://169.254.169.254/latest/meta-data/"}, ctx)
    assert out.is_error and out.content.startswith(
        "refused: 169.254.169.254 is 169.254.169.254, a link-local address"
    )


async def test_transport_failures_are_tool_errors(
    ctx: ToolContext, make_fetcher: Callable[..., WebFetcher]
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    fetcher = make_fetcher(refuse)
    with pytest.raises(
        executor.errors.ToolFailed, match=r"could not fetch http://example\.com/: ConnectError"
    ):
        await fetcher.fetch_text("http://example.com/")


async def test_a_long_page_is_read_up_to_the_cap_and_says_so(
    make_fetcher: Callable[..., WebFetcher],
) -> None:
    fetcher = make_fetcher(
        lambda r: httpx.Response(
            200, content=b"word " * 100_000, headers={"content-type": "text/plain"}
        ),
        max_bytes=1_000,
    )
    text = await fetcher.fetch_text("http://example.com/long")
    assert text.endswith("[the page is longer than 1,000 bytes; only its start was read]")
    assert text.count("word") == 200


# --- the set ----------------------------------------------------------------------------------


def test_builtin_tools_and_default_registry() -> None:
    assert sorted(t.name for t in builtin_tools()) == ["calculator", "current_time", "web_fetch"]
    reg = default_registry(["calculator"])
    assert reg.names == ["calculator", "current_time", "web_fetch"]
    assert reg.enabled_names == ["calculator"]
    assert default_registry().enabled_names == ["calculator", "current_time", "web_fetch"]
    web_fetch = reg.get("web_fetch")
    assert web_fetch is not None
    assert (
        web_fetch.status_line({"url": f"https://news.example.org/{PUBLIC_IP}"})
        == "reading news.example.org"
    )
    assert web_fetch.isolation == "inline" and web_fetch.timeout_s > 20


def test_public_names_are_exported_sorted() -> None:
    names = executor.tools.__all__
    assert names == sorted(names)
    assert all(hasattr(executor.tools, n) for n in names)
    public = {n for n in vars(executor.tools) if not n.startswith("_")}
    submodules = {
        "builtin",
        "citations",
        "htmltext",
        "isolation",
        "netguard",
        "registry",
        "search",
        "sources",
        "ssrf",
    }
    assert public - submodules == set(names)
