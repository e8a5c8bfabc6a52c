"""Failover, cooldown, deadlines and stream resets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx2
import pytest

from executor.errors import (
    AllModelsFailed,
    BadRequest,
    ModelAPIError,
    Overloaded,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from executor.messages import Message, Usage
from executor.models.base import (
    DEFAULT_PROFILE,
    Failover,
    ModelProfile,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    StreamReset,
    TextDelta,
)
from executor.models.fallback import Cooldowns, FallbackModel
from tests.executor.models.conftest import Clients
from tests.executor.models.test_models_anthropic import MESSAGE

REQ = ModelRequest(messages=[Message.user("hi")])


class FakeModel:
    """Answers ``text``, or fails with ``error`` (after ``partial`` streamed text)."""

    def __init__(
        self, name: str, text: str = "ok", error: Exception | None = None, partial: str = ""
    ) -> None:
        self._name = name
        self.text = text
        self.error = error
        self.partial = partial
        self.calls = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def profile(self) -> ModelProfile:
        return DEFAULT_PROFILE

    async def generate(self, request: ModelRequest) -> ModelResponse:
        self.calls += 1
        if self.error:
            raise self.error
        return ModelResponse(
            message=Message.assistant(self.text), usage=Usage(requests=1), model=self.name
        )

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        self.calls += 1
        if self.partial:
            yield TextDelta(self.partial)
        if self.error:
            raise self.error
        yield TextDelta(self.text)
        yield ResponseDone(
            ModelResponse(
                message=Message.assistant(self.text), usage=Usage(requests=1), model=self.name
            )
        )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_fails_over_on_retriable_errors_and_records_attempts() -> None:
    a = FakeModel("p:a", error=Overloaded("busy"))
    b = FakeModel("p:b", error=ServerError("500"))
    c = FakeModel("p:c", text="from c")
    resp = await FallbackModel([a, b, c]).generate(REQ)
    assert resp.text == "from c" and resp.model == "p:c"
    assert [(t.model, t.error_kind) for t in resp.attempts] == [
        ("p:a", "overloaded"),
        ("p:b", "server_error"),
        ("p:c", None),
    ]
    assert resp.attempts[-1].error is None


async def test_bad_request_is_reraised_at_once() -> None:
    a = FakeModel("p:a", error=BadRequest("bad"))
    b = FakeModel("p:b")
    with pytest.raises(BadRequest):
        await FallbackModel([a, b]).generate(REQ)
    assert b.calls == 0


async def test_our_own_bugs_propagate() -> None:
    a = FakeModel("p:a", error=KeyError("bug"))
    b = FakeModel("p:b")
    with pytest.raises(KeyError):
        await FallbackModel([a, b]).generate(REQ)
    assert b.calls == 0


async def test_all_failed_carries_every_attempt() -> None:
    models = [
        FakeModel("p:a", error=RateLimited("429", retry_after=3)),
        FakeModel("p:b", error=ServerError("500")),
    ]
    with pytest.raises(AllModelsFailed) as info:
        await FallbackModel(models, name="tier:fast").generate(REQ)
    assert [t.model for t in info.value.attempts] == ["p:a", "p:b"]
    assert info.value.tier == "fast"
    assert not info.value.retriable


async def test_cooldown_puts_a_failed_model_last_until_it_expires() -> None:
    clock = Clock()
    cooldowns = Cooldowns(60, monotonic=clock)
    a = FakeModel("p:a", error=Overloaded("busy"))
    b = FakeModel("p:b")
    model = FallbackModel([a, b], cooldowns=cooldowns)
    await model.generate(REQ)
    assert a.calls == 1
    # a second run (even through another FallbackModel sharing the cooldowns) skips a first
    other = FallbackModel([a, b], cooldowns=cooldowns)
    resp = await other.generate(REQ)
    assert a.calls == 1 and [t.model for t in resp.attempts] == ["p:b"]
    clock.now += 61
    await model.generate(REQ)
    assert a.calls == 2


async def test_all_cooling_are_still_tried_least_recently_failed_first() -> None:
    clock = Clock()
    cooldowns = Cooldowns(60, monotonic=clock)
    a = FakeModel("p:a", error=Overloaded("busy"))
    b = FakeModel("p:b", error=Overloaded("busy"))
    cooldowns.fail("p:b", Overloaded("x"))
    clock.now += 1
    cooldowns.fail("p:a", Overloaded("x"))
    with pytest.raises(AllModelsFailed) as info:
        await FallbackModel([a, b], cooldowns=cooldowns).generate(REQ)
    assert [t.model for t in info.value.attempts] == ["p:b", "p:a"]


async def test_rate_limit_retry_after_extends_the_cooldown() -> None:
    clock = Clock()
    cooldowns = Cooldowns(10, monotonic=clock)
    cooldowns.fail("p:a", RateLimited("429", retry_after=120))
    clock.now += 60
    assert cooldowns.cooling("p:a")
    clock.now += 61
    assert not cooldowns.cooling("p:a")


async def test_stream_failover_after_text_sends_reset_first() -> None:
    a = FakeModel("p:a", error=Overloaded("overloaded_error"), partial="Half an ans")
    b = FakeModel("p:b", text="Whole answer")
    events = [e async for e in FallbackModel([a, b]).stream(REQ)]
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["TextDelta", "StreamReset", "Failover", "TextDelta", "ResponseDone"]
    assert isinstance(events[1], StreamReset)
    done = events[-1]
    assert isinstance(done, ResponseDone)
    assert [t.model for t in done.response.attempts] == ["p:a", "p:b"]
    # The failed attempt is sent before the next candidate is asked, as it is answered.
    failover = events[2]
    assert isinstance(failover, Failover) and failover.attempt is done.response.attempts[0]
    assert failover.attempt.billed and b.calls == 1


async def test_a_consumer_that_stops_at_the_failover_stops_it() -> None:
    a = FakeModel("p:a", error=Overloaded("overloaded_error"), partial="Half an ans")
    b = FakeModel("p:b", text="Whole answer")
    stream = FallbackModel([a, b]).stream(REQ)
    async for event in stream:
        if isinstance(event, Failover):
            break
    await stream.aclose()  # type: ignore[attr-defined]
    assert b.calls == 0  # the next candidate was never asked


async def test_the_last_candidate_failing_sends_no_failover() -> None:
    a = FakeModel("p:a", error=ServerError("500"))
    b = FakeModel("p:b", error=ServerError("500"))
    seen: list[object] = []

    async def read() -> None:
        async for event in FallbackModel([a, b]).stream(REQ):
            seen.append(event)

    with pytest.raises(AllModelsFailed):
        await read()
    assert [type(e).__name__ for e in seen] == ["Failover"]


async def test_stream_failover_before_any_text_sends_no_reset() -> None:
    a = FakeModel("p:a", error=ServerError("500"))
    b = FakeModel("p:b")
    events = [e async for e in FallbackModel([a, b]).stream(REQ)]
    assert not any(isinstance(e, StreamReset) for e in events)


async def test_a_hung_candidate_fails_over_within_the_deadline(clients: Clients) -> None:
    never = asyncio.Event()

    async def hang(request: httpx2.Request) -> httpx2.Response:
        await never.wait()
        raise AssertionError("unreachable")

    registry = clients.registry(
        {
            "anthropic": hang,
            "openai": lambda r: httpx2.Response(
                200,
                json={
                    "id": "c",
                    "object": "chat.completion",
                    "created": 1,
                    "model": "gpt-5-mini",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "hi"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                },
            ),
        }
    )
    openai_model = registry.model("openai:gpt-5-mini")
    # Why: the SDK's first call builds its response types; on a loaded machine that
    # alone can pass a 0.2 s deadline. Warm it so the test measures failover only.
    await openai_model.generate(REQ)
    model = FallbackModel(
        [registry.model("anthropic:claude-haiku-4-5"), openai_model],
        timeout_s=0.2,
    )
    started = time.perf_counter()
    resp = await model.generate(REQ)
    elapsed = time.perf_counter() - started
    assert resp.model == "openai:gpt-5-mini"
    assert resp.attempts[0].error_kind == "provider_timeout"
    # Far below the SDK's own 600 s timeout and its retries: our deadline ruled.
    assert elapsed < 5


async def test_a_hung_stream_fails_over_within_the_deadline(clients: Clients) -> None:
    never = asyncio.Event()

    class Trickle(httpx2.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b'event: ping\ndata: {"type": "ping"}\n\n'
            await never.wait()

    def stalled(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=Trickle())

    registry = clients.registry({"anthropic": stalled})
    backup = FakeModel("p:backup", text="rescued")
    model = FallbackModel([registry.model("anthropic:claude-haiku-4-5"), backup], timeout_s=0.2)
    events = [e async for e in model.stream(REQ)]
    done = events[-1]
    assert isinstance(done, ResponseDone) and done.response.text == "rescued"
    assert done.response.attempts[0].error_kind == "provider_timeout"


async def test_a_5xx_fails_over_without_sdk_retries(clients: Clients) -> None:
    hits = 0

    def five_hundred(request: httpx2.Request) -> httpx2.Response:
        nonlocal hits
        hits += 1
        return httpx2.Response(
            500, json={"type": "error", "error": {"type": "api_error", "message": "x"}}
        )

    registry = clients.registry(
        {"anthropic": five_hundred, "openai": lambda r: httpx2.Response(200, json=MESSAGE)}
    )
    backup = FakeModel("p:backup")
    started = time.perf_counter()
    resp = await FallbackModel([registry.model("anthropic:claude-haiku-4-5"), backup]).generate(REQ)
    assert time.perf_counter() - started < 1.0
    assert hits == 1 and resp.model == "p:backup"


async def test_first_token_deadline_on_streams() -> None:
    never = asyncio.Event()

    class Slow(FakeModel):
        async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
            await never.wait()
            yield TextDelta("never")

    model = FallbackModel([Slow("p:slow"), FakeModel("p:b")], timeout_s=30, first_token_s=0.05)
    events = [e async for e in model.stream(REQ)]
    done = events[-1]
    assert isinstance(done, ResponseDone)
    assert isinstance(ProviderTimeout("x"), ModelAPIError)
    assert done.response.attempts[0].error_kind == "provider_timeout"
