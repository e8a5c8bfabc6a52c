"""Loopback fakes of SearXNG, Brave and Tavily: their real JSON shapes, on real sockets."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["RESULTS", "FakeSearch"]

RESULTS = [
    {
        "title": "What&#39;s new in <b>Python</b> 3.13",
        "url": "https://docs.python.org/3/whatsnew/3.13.html",
        "snippet": "The <strong>free-threaded</strong> build and a new interactive interpreter.",
    },
    {
        "title": "PEP 703",
        "url": "https://peps.python.org/pep-0703/",
        "snippet": "Making the Global Interpreter Lock optional.",
    },
]


@dataclass
class FakeSearch:
    """One aiohttp app serving all three APIs; ``fail`` makes one of them answer 500,
    ``hang`` makes Brave hold its answer (``asked`` is set) until :meth:`stop`."""

    brave_key: str = "brave-key"
    tavily_key: str = "tvly-key"
    fail: set[str] = field(default_factory=set)
    hang: set[str] = field(default_factory=set)
    asked: asyncio.Event = field(default_factory=asyncio.Event)
    _let_go: asyncio.Event = field(default_factory=asyncio.Event)
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/searx/search", self._searxng)
        app.router.add_get("/res/v1/web/search", self._brave)
        app.router.add_post("/search", self._tavily)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._let_go.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def searxng_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/searx"

    @property
    def brave_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/res/v1/web/search"

    @property
    def tavily_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/search"

    def calls(self, provider: str) -> list[dict[str, Any]]:
        return [r for p, r in self.requests if p == provider]

    async def _searxng(self, request: web.Request) -> web.Response:
        self.requests.append(("searxng", dict(request.query)))
        if "searxng" in self.fail:
            return web.Response(status=500)
        if request.query.get("format") != "json":
            return web.Response(status=403, text="format not allowed")
        results = [{"title": r["title"], "url": r["url"], "content": r["snippet"]} for r in RESULTS]
        return web.json_response({"query": request.query.get("q"), "results": results})

    async def _brave(self, request: web.Request) -> web.Response:
        self.requests.append(
            ("brave", {**request.query, "token": request.headers.get("X-Subscription-Token")})
        )
        if "brave" in self.hang:
            self.asked.set()
            await self._let_go.wait()
        if "brave" in self.fail:
            return web.Response(status=500)
        if request.headers.get("X-Subscription-Token") != self.brave_key:
            return web.json_response({"error": "bad token"}, status=401)
        results = [
            {"title": r["title"], "url": r["url"], "description": r["snippet"]} for r in RESULTS
        ]
        return web.json_response({"type": "search", "web": {"results": results}})

    async def _tavily(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(("tavily", {**body, "auth": request.headers.get("Authorization")}))
        if "tavily" in self.fail:
            return web.Response(status=500)
        if request.headers.get("Authorization") != f"Bearer {self.tavily_key}":
            return web.json_response({"detail": "Unauthorized"}, status=401)
        results = [
            {"title": r["title"], "url": r["url"], "content": r["snippet"], "score": 0.9}
            for r in RESULTS
        ]
        return web.json_response({"query": body.get("query"), "results": results})
