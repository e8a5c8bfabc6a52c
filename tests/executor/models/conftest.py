"""Fixtures for the provider tests: real SDKs over an ``httpx2.MockTransport``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import httpx2
import pytest

from executor.models.pricing import PriceTable
from executor.models.providers import ProviderRegistry, ProviderSettings, ProviderSpec

# What ``httpx2.MockTransport`` takes: a sync handler or an async one.
Handler = (
    Callable[[httpx2.Request], httpx2.Response]
    | Callable[[httpx2.Request], Coroutine[Any, Any, httpx2.Response]]
)


def sse(*events: tuple[str | None, Any]) -> bytes:
    """Server-sent events: (event name or None, JSON-able data or a raw string)."""
    out = []
    for name, data in events:
        body = data if isinstance(data, str) else json.dumps(data)
        out.append((f"event: {name}\n" if name else "") + f"data: {body}\n\n")
    return "".join(out).encode()


class DroppingStream(httpx2.AsyncByteStream):
    """Sends ``chunks``, then fails the way a dropped connection does."""

    def __init__(self, chunks: list[bytes], error: Exception) -> None:
        self.chunks = chunks
        self.error = error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for c in self.chunks:
            yield c
        raise self.error


def sse_response(body: bytes, status: int = 200) -> httpx2.Response:
    return httpx2.Response(status, headers={"content-type": "text/event-stream"}, content=body)


class Recorder:
    """Answers from a handler and keeps every request body."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx2.Request] = []

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        result = self.handler(request)
        if not isinstance(result, httpx2.Response):
            result = await result
        return result


def _unreachable(request: httpx2.Request) -> httpx2.Response:
    raise AssertionError(f"unexpected request to {request.url}")


class Clients:
    """Builds SDK http clients over mock transports and closes them after the test."""

    def __init__(self) -> None:
        self.made: list[httpx2.AsyncClient] = []

    def client(self, handler: Handler) -> httpx2.AsyncClient:
        c = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
        self.made.append(c)
        return c

    def registry(
        self,
        handlers: dict[str, Handler],
        settings: ProviderSettings | None = None,
        *,
        providers: dict[str, ProviderSpec] | None = None,
        prices: PriceTable | None = None,
    ) -> ProviderRegistry:
        return ProviderRegistry(
            settings or ProviderSettings(anthropic_api_key="sk-ant-test", openai_api_key="sk-test"),
            providers=providers,
            prices=prices,
            http_client_factory=lambda spec: self.client(handlers.get(spec.name, _unreachable)),
        )

    def anthropic(self, handler: Handler, model_id: str = "claude-haiku-4-5") -> Any:
        from executor.models import anthropic as mod

        sdk = mod.make_client(
            api_key="sk-ant-test",
            base_url="https://api.anthropic.com",
            max_retries=0,
            timeout=30,
            http_client=self.client(handler),
        )
        return mod.AnthropicModel(model_id, client=sdk)

    def openai(self, handler: Handler, model_id: str = "gpt-5-mini", **kw: Any) -> Any:
        from executor.models import openai as mod

        sdk = mod.make_client(
            api_key="sk-test",
            base_url="https://api.openai.com/v1",
            max_retries=0,
            timeout=30,
            http_client=self.client(handler),
        )
        return mod.OpenAIModel(model_id, client=sdk, **kw)


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    c = Clients()
    yield c
    for client in c.made:
        await client.aclose()
