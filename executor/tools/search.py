"""``web_search(query)``: titles, URLs and snippets from SearXNG, Brave or Tavily.

Providers are tried in order; one that fails (an HTTP error, a timeout, a refused
key) hands over to the next, and the model hears from the last one only when all
failed.

* **SearXNG** (``COTERIE_SEARXNG_URL``): self-hosted, no key, free. It usually lives
  on loopback or the LAN, so its host (and only it) is let past the SSRF guard.
  The instance must allow the JSON format (``search.formats: [html, json]``).
* **Brave** (``BRAVE_API_KEY``) and **Tavily** (``TAVILY_API_KEY``): keyed and paid
  per query. The price comes from the pricing table (``search:brave``,
  ``search:tavily``; ``[prices."search:brave"] per_call = 0.005`` overrides it). It
  is held in the member's budget through :attr:`ToolContext.charge` *before* the
  request (a member who cannot afford a search gets no search), and charged only
  when the provider answered: a provider that fails (or a search stopped in flight)
  costs nothing, so a search that fails over is charged once, for the provider that
  answered, and one that fails everywhere is charged nothing.

What comes back is text: one numbered result a few lines long (title, URL, snippet),
which the citation check (:mod:`executor.tools.citations`) reads as the URLs a
search returned.
"""

from __future__ import annotations

import contextlib
import html
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import httpx

from executor.budget import format_usd
from executor.errors import ConfigError, ToolFailed, ToolRetry
from executor.tools.netguard import AllowlistGuard, ApiResponse, guarded_request
from executor.tools.registry import Tool, ToolContext, tool
from executor.tools.ssrf import BlockedURL, SSRFGuard

__all__ = [
    "BRAVE_URL",
    "TAVILY_URL",
    "BraveSearch",
    "SearchProvider",
    "SearchResult",
    "SearxngSearch",
    "TavilySearch",
    "search_providers",
    "web_search_tool",
]

log = logging.getLogger(__name__)

BRAVE_URL = "https://api.search.brave.com/res/v1/web/search"
TAVILY_URL = "https://api.tavily.com/search"
PROVIDERS = ("searxng", "brave", "tavily")
MAX_RESULTS = 10
_SNIPPET_CHARS = 300
_TAG = re.compile(r"<[^>]{0,200}>")


@dataclass(frozen=True, slots=True)
class SearchResult:
    title: str
    url: str
    snippet: str = ""


class SearchFailed(Exception):
    """A provider could not answer; the message says why (no secret in it)."""


@runtime_checkable
class SearchProvider(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def price_micros(self) -> int:
        """What one query costs (0: free)."""
        ...

    async def search(self, query: str, count: int) -> list[SearchResult]: ...


def _clean(text: object, limit: int = _SNIPPET_CHARS) -> str:
    plain = " ".join(html.unescape(_TAG.sub("", str(text or ""))).split())
    return plain if len(plain) <= limit else plain[: limit - 1] + "…"


def _results(items: object, snippet_key: str, count: int) -> list[SearchResult]:
    out: list[SearchResult] = []
    if not isinstance(items, list):
        return out
    for item in items:
        if not isinstance(item, dict):
            continue
        url = item.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            continue
        out.append(
            SearchResult(
                title=_clean(item.get("title"), 200) or url,
                url=url.strip(),
                snippet=_clean(item.get(snippet_key)),
            )
        )
        if len(out) >= count:
            break
    return out


@dataclass(slots=True)
class _Http:
    """What every provider shares: its endpoint, the guard, the request bounds."""

    url: str
    guard: AllowlistGuard
    timeout_s: float = 15.0
    max_bytes: int = 2_000_000
    transport: httpx.AsyncBaseTransport | None = None

    async def call(self, provider: str, method: str, **kwargs: Any) -> Any:
        try:
            response: ApiResponse = await guarded_request(
                method,
                self.url,
                guard=self.guard,
                timeout_s=self.timeout_s,
                max_bytes=self.max_bytes,
                transport=self.transport,
                **kwargs,
            )
        except TimeoutError:
            raise SearchFailed(f"{provider} took longer than {self.timeout_s:g} s") from None
        except BlockedURL as exc:
            raise SearchFailed(f"{provider}'s address is refused: {exc}") from None
        except httpx.HTTPError as exc:
            raise SearchFailed(f"{provider} could not be reached: {type(exc).__name__}") from None
        if response.status in (401, 403):
            raise SearchFailed(f"{provider} refused the request (HTTP {response.status}: the key?)")
        if response.status == 429:
            raise SearchFailed(f"{provider} is rate-limiting coterie (HTTP 429)")
        if response.status >= 400:
            raise SearchFailed(f"{provider} answered HTTP {response.status}")
        if response.truncated:
            raise SearchFailed(f"{provider}'s answer was larger than {self.max_bytes:,} bytes")
        try:
            return response.json()
        except ValueError:
            raise SearchFailed(f"{provider} did not answer with JSON") from None


def _guard_for(url: str, base: SSRFGuard | None) -> AllowlistGuard:
    host = urlsplit(url).hostname or ""
    return AllowlistGuard.of(hosts=[host], base=base)


@dataclass(slots=True)
class _Provider:
    """What the providers share: the guard's base and the transport (tests), and the
    :class:`_Http` built for the endpoint :meth:`_endpoint` names."""

    guard_base: SSRFGuard | None = field(default=None, kw_only=True)
    transport: httpx.AsyncBaseTransport | None = field(default=None, kw_only=True)
    _http: _Http = field(init=False)

    def __post_init__(self) -> None:
        endpoint = self._endpoint()
        self._http = _Http(
            endpoint, _guard_for(endpoint, self.guard_base), transport=self.transport
        )

    def _endpoint(self) -> str:
        raise NotImplementedError


@dataclass(slots=True)
class _KeyedProvider(_Provider):
    """A hosted API: a key, a price per search, an endpoint."""

    api_key: str
    price_micros: int = 0
    url: str = ""

    def _endpoint(self) -> str:
        return self.url


@dataclass(slots=True)
class SearxngSearch(_Provider):
    base_url: str

    def _endpoint(self) -> str:
        return self.base_url.rstrip("/") + "/search"

    @property
    def name(self) -> str:
        return "SearXNG"

    @property
    def price_micros(self) -> int:
        return 0

    async def search(self, query: str, count: int) -> list[SearchResult]:
        data = await self._http.call(
            self.name, "GET", params={"q": query, "format": "json", "safesearch": 1}
        )
        return _results(data.get("results") if isinstance(data, dict) else None, "content", count)


@dataclass(slots=True)
class BraveSearch(_KeyedProvider):
    url: str = BRAVE_URL

    @property
    def name(self) -> str:
        return "Brave"

    async def search(self, query: str, count: int) -> list[SearchResult]:
        data = await self._http.call(
            self.name,
            "GET",
            params={"q": query, "count": count},
            headers={"X-Subscription-Token": self.api_key},
        )
        web = data.get("web") if isinstance(data, dict) else None
        return _results(web.get("results") if isinstance(web, dict) else None, "description", count)


@dataclass(slots=True)
class TavilySearch(_KeyedProvider):
    url: str = TAVILY_URL

    @property
    def name(self) -> str:
        return "Tavily"

    async def search(self, query: str, count: int) -> list[SearchResult]:
        data = await self._http.call(
            self.name,
            "POST",
            json_body={"query": query, "max_results": count, "search_depth": "basic"},
            headers={"Authorization": f"Bearer {self.api_key}"},
        )
        return _results(data.get("results") if isinstance(data, dict) else None, "content", count)


def render(query: str, provider: str, results: Sequence[SearchResult]) -> str:
    if not results:
        return f'No results for "{query}" (searched with {provider}).'
    lines = [f'Results for "{query}" (searched with {provider}):']
    for i, r in enumerate(results, 1):
        lines.append(f"{i}. {r.title}\n   {r.url}" + (f"\n   {r.snippet}" if r.snippet else ""))
    return "\n".join(lines)


def web_search_tool(providers: Sequence[SearchProvider], *, timeout_s: float = 40.0) -> Tool:
    """The ``web_search`` tool over ``providers`` (tried in order)."""
    if not providers:
        raise ConfigError("web_search needs at least one search provider")
    chain = list(providers)

    async def web_search(query: str, count: int = 5, ctx: ToolContext | None = None) -> str:
        """Search the web; returns numbered results, each a title, its URL and a snippet.

        Read a result's page with web_fetch before relying on it.

        Args:
            query: what to search for, as you would type it into a search engine
            count: how many results, 1 to 10
        """
        text = query.strip()
        if not text:
            raise ToolRetry("the query is empty")
        if len(text) > 400:
            raise ToolRetry("the query is longer than 400 characters; shorten it")
        n = max(1, min(MAX_RESULTS, count))
        failures: list[str] = []
        for provider in chain:
            price = provider.price_micros
            charge = ctx.charge if ctx is not None else None
            try:
                # The price is held for the request and charged only if it answers.
                # Entering raises ToolFailed (the member cannot afford it): no free
                # fallback would be fair to try silently, so the message says so.
                async with (
                    charge(price, f"a {provider.name} search ({format_usd(price)})")
                    if price > 0 and charge is not None
                    else contextlib.nullcontext()
                ):
                    results = await provider.search(text, n)
            except SearchFailed as exc:
                log.warning("web_search: %s", exc)
                failures.append(str(exc))
                continue
            return render(text, provider.name, results)
        raise ToolFailed(
            "web search is unavailable right now (no search was charged): " + "; ".join(failures)
        )

    # Why read-only: a search changes nothing; a resumed run runs one again (a keyed
    # provider charges it again, through ToolContext.charge like the first).
    return tool(
        web_search,
        timeout_s=timeout_s,
        max_result_chars=12_000,
        status="searching: {query}",
        read_only=True,
    )


def search_providers(
    *,
    searxng_url: str | None = None,
    brave_key: str | None = None,
    tavily_key: str | None = None,
    order: Sequence[str] | None = None,
    brave_price_micros: int = 0,
    tavily_price_micros: int = 0,
    brave_url: str = BRAVE_URL,
    tavily_url: str = TAVILY_URL,
    guard_base: SSRFGuard | None = None,
) -> list[SearchProvider]:
    """The configured providers, in ``order`` (default: SearXNG, Brave, Tavily)."""
    wanted = [p.strip().lower() for p in (order or PROVIDERS) if p.strip()]
    unknown = [p for p in wanted if p not in PROVIDERS]
    if unknown:
        raise ConfigError(
            f"COTERIE_SEARCH_PROVIDERS names {unknown[0]!r}; the providers are {', '.join(PROVIDERS)}"
        )
    if searxng_url and not searxng_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"COTERIE_SEARXNG_URL must be an http:// or https:// URL, not {searxng_url!r}"
        )
    out: list[SearchProvider] = []
    for name in dict.fromkeys(wanted):
        if name == "searxng" and searxng_url:
            out.append(SearxngSearch(searxng_url, guard_base=guard_base))
        elif name == "brave" and brave_key:
            out.append(BraveSearch(brave_key, brave_price_micros, brave_url, guard_base=guard_base))
        elif name == "tavily" and tavily_key:
            out.append(
                TavilySearch(tavily_key, tavily_price_micros, tavily_url, guard_base=guard_base)
            )
        elif order:
            raise ConfigError(
                f"COTERIE_SEARCH_PROVIDERS names {name}, which is not configured ({_needs(name)})"
            )
    return out


def _needs(name: str) -> str:
    return {
        "searxng": "set COTERIE_SEARXNG_URL",
        "brave": "set BRAVE_API_KEY",
        "tavily": "set TAVILY_API_KEY",
    }[name]
