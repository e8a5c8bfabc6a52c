"""The Anthropic adapter, through the real SDK over a mock transport."""

from __future__ import annotations

import httpx2
import pytest

from executor.errors import (
    AuthenticationFailed,
    BadRequest,
    ContextTooLong,
    Overloaded,
    ProviderConnectionError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from executor.messages import ImagePart, Message, TextPart, ToolCallPart, ToolResultPart
from executor.models.base import (
    KeepAlive,
    ModelRequest,
    ResponseDone,
    StreamEvent,
    TextDelta,
    ToolCallEvent,
    ToolDefinition,
)
from tests.executor.models.conftest import Clients, Recorder, sse, sse_response

WEATHER = ToolDefinition(
    name="get_weather",
    description="Weather for a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)

MESSAGE = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Oslo"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 1000,
        "output_tokens": 200,
        "cache_read_input_tokens": 400,
        "cache_creation_input_tokens": 100,
    },
}


def error_body(kind: str, message: str) -> dict[str, object]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def stream_events(*, text: str = "Hello world", error: dict[str, object] | None = None) -> bytes:
    start = {**MESSAGE, "content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": 50, "output_tokens": 1, "cache_read_input_tokens": 20}
    events: list[tuple[str | None, object]] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
    ]
    for word in text.split(" "):
        events.append(
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": word + " "},
                },
            )
        )
    if error is not None:
        events.append(("error", error))
        return sse(*events)
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_02",
                    "name": "get_weather",
                    "input": {},
                },
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"city": '},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '"Oslo"}'},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 30},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return sse(*events)


def request(**kw: object) -> ModelRequest:
    messages = [
        Message.system("You are terse."),
        Message.user(
            "What's the weather?",
            name="Ada [mod]",
            images=(
                ImagePart(data="aGk=", media_type="image/jpeg"),
                ImagePart(url="https://x.test/a.png"),
            ),
        ),
        Message(
            role="assistant",
            parts=(
                TextPart(text="Checking."),
                ToolCallPart(id="toolu_00", name="get_weather", arguments={"city": "Oslo"}),
            ),
        ),
        Message(
            role="user",
            parts=(
                ToolResultPart(tool_call_id="toolu_00", name="get_weather", content="12C"),
                TextPart(text="And tomorrow?"),
            ),
        ),
    ]
    return ModelRequest(messages=messages, tools=[WEATHER], max_tokens=300, temperature=0.2, **kw)  # type: ignore[arg-type]


async def collect(model: object, req: ModelRequest) -> list[StreamEvent]:
    return [e async for e in model.stream(req)]  # type: ignore[attr-defined]


async def test_generate_translates_request_and_response(clients: Clients) -> None:
    rec = Recorder(lambda r: httpx2.Response(200, json=MESSAGE))
    model = clients.anthropic(rec)
    resp = await model.generate(
        request(tool_choice="get_weather", response_schema={"type": "object"})
    )

    body = rec.bodies[0]
    assert rec.requests[0].url.path == "/v1/messages"
    assert body["system"] == "You are terse."
    assert body["max_tokens"] == 300
    assert "temperature" not in body  # API 2026-10-21 rejects sampling parameters
    assert "response_format" not in body and "output_config" not in body
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": WEATHER.parameters,
        }
    ]
    user, assistant, results = body["messages"]
    assert user["content"][0] == {"type": "text", "text": "[Ada mod]: What's the weather?"}
    assert user["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/jpeg", "data": "aGk="},
    }
    assert user["content"][2] == {
        "type": "image",
        "source": {"type": "url", "url": "https://x.test/a.png"},
    }
    assert assistant["content"][1] == {
        "type": "tool_use",
        "id": "toolu_00",
        "name": "get_weather",
        "input": {"city": "Oslo"},
    }
    assert results["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "toolu_00",
        "content": "12C",
        "is_error": False,
    }

    assert resp.model == "anthropic:claude-haiku-4-5"
    assert resp.text == "Let me check."
    assert resp.tool_calls == [
        ToolCallPart(id="toolu_01", name="get_weather", arguments={"city": "Oslo"})
    ]
    assert resp.stop_reason == "tool_use"
    u = resp.usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens) == (
        1000,
        200,
        400,
        100,
    )
    # $1 in, $5 out, $0.10 cache read, $1.25 cache write per MTok
    assert u.cost_micros == 1000 * 1 + 200 * 5 + 40 + 125


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"})],
)
async def test_tool_choice_modes(clients: Clients, choice: str, expected: dict[str, str]) -> None:
    rec = Recorder(lambda r: httpx2.Response(200, json=MESSAGE))
    await clients.anthropic(rec).generate(request(tool_choice=choice))
    assert rec.bodies[0]["tool_choice"] == expected


async def test_stream_yields_text_tool_call_and_one_done(clients: Clients) -> None:
    rec = Recorder(lambda r: sse_response(stream_events()))
    events = await collect(clients.anthropic(rec), request())
    assert rec.bodies[0]["stream"] is True
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert "".join(deltas) == "Hello world "
    calls = [e.call for e in events if isinstance(e, ToolCallEvent)]
    assert calls == [ToolCallPart(id="toolu_02", name="get_weather", arguments={"city": "Oslo"})]
    done = [e for e in events if isinstance(e, ResponseDone)]
    assert len(done) == 1 and events[-1] is done[0]
    resp = done[0].response
    assert resp.text == "Hello world "
    assert resp.stop_reason == "tool_use"
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.cache_read_tokens) == (
        50,
        30,
        20,
    )
    assert resp.usage.cost_micros > 0


async def test_every_event_without_output_is_a_keepalive(clients: Clients) -> None:
    """Failover's idle timeout counts the provider's events: a tool call's arguments
    arriving are signs of life, though nothing reaches the member until the call is whole."""
    events = await collect(clients.anthropic(lambda r: sse_response(stream_events())), request())
    assert isinstance(events[0], KeepAlive)  # message_start
    kinds = [type(e).__name__ for e in events]
    last_text = max(i for i, k in enumerate(kinds) if k == "TextDelta")
    between = kinds[last_text + 1 : kinds.index("ToolCallEvent")]
    # the text block's end, the tool block's start, two pieces of its arguments
    assert between == ["KeepAlive"] * 4


async def test_mid_stream_overloaded_error_maps_to_overloaded(clients: Clients) -> None:
    body = stream_events(error=error_body("overloaded_error", "Overloaded"))
    model = clients.anthropic(lambda r: sse_response(body))
    seen: list[StreamEvent] = []

    async def consume() -> None:
        async for e in model.stream(request()):
            seen.append(e)

    with pytest.raises(Overloaded) as info:
        await consume()
    assert any(isinstance(e, TextDelta) for e in seen)
    assert info.value.model == "anthropic:claude-haiku-4-5"
    assert info.value.__cause__ is not None
    # What message_start reported: the request was billed that, and the error says so.
    usage = info.value.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens) == (50, 1, 20)
    assert usage.cost_micros > 0


async def test_an_error_before_the_stream_began_reports_no_usage(clients: Clients) -> None:
    model = clients.anthropic(
        lambda r: httpx2.Response(529, json=error_body("overloaded_error", "Overloaded"))
    )
    with pytest.raises(Overloaded) as info:
        await collect(model, request())
    assert info.value.usage is None


async def test_stream_ending_without_message_stop_is_a_connection_error(clients: Clients) -> None:
    full = stream_events().split(b"event: message_delta")[0]
    with pytest.raises(ProviderConnectionError):
        await collect(clients.anthropic(lambda r: sse_response(full)), request())


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (429, error_body("rate_limit_error", "slow down"), {"retry-after": "7"}, RateLimited),
        (529, error_body("overloaded_error", "Overloaded"), {}, Overloaded),
        (500, error_body("api_error", "oops"), {}, ServerError),
        (503, error_body("api_error", "unavailable"), {}, ServerError),
        (401, error_body("authentication_error", "invalid x-api-key"), {}, AuthenticationFailed),
        (400, error_body("invalid_request_error", "messages: field required"), {}, BadRequest),
        (
            400,
            error_body(
                "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"
            ),
            {},
            ContextTooLong,
        ),
    ],
)
async def test_status_errors_map(
    clients: Clients,
    status: int,
    body: dict[str, object],
    headers: dict[str, str],
    expected: type[Exception],
) -> None:
    model = clients.anthropic(lambda r: httpx2.Response(status, json=body, headers=headers))
    with pytest.raises(expected) as info:
        await model.generate(request())
    assert type(info.value) is expected
    assert info.value.__cause__ is not None
    if expected is RateLimited:
        assert info.value.retry_after == 7.0  # type: ignore[attr-defined]
    # the same on a stream request
    with pytest.raises(expected):
        await collect(model, request())


async def test_timeout_and_connection_failure_map(clients: Clients) -> None:
    def timeout(r: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("timed out", request=r)

    def refused(r: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=r)

    with pytest.raises(ProviderTimeout):
        await clients.anthropic(timeout).generate(request())
    with pytest.raises(ProviderConnectionError):
        await clients.anthropic(refused).generate(request())
    with pytest.raises(ProviderTimeout):
        await collect(clients.anthropic(timeout), request())
