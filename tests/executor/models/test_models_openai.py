"""The OpenAI (and OpenAI-compatible) adapter, through the real SDK over a mock transport."""

from __future__ import annotations

import json

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

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1767225600,
    "model": "gpt-5-mini",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                    }
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 1000,
        "completion_tokens": 100,
        "total_tokens": 1100,
        "prompt_tokens_details": {"cached_tokens": 400},
    },
}


def chunk(
    delta: dict[str, object], finish: str | None = None, usage: dict[str, object] | None = None
) -> dict[str, object]:
    choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
    out: dict[str, object] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "gpt-5-mini",
        "choices": choices,
    }
    if usage:
        out["usage"] = usage
    return out


def stream_body() -> bytes:
    return sse(
        (None, chunk({"role": "assistant", "content": ""})),
        (None, chunk({"content": "Hello "})),
        (None, chunk({"content": "world"})),
        (
            None,
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_9",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            ),
        ),
        (None, chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]})),
        (None, chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]})),
        (None, chunk({}, finish="tool_calls")),
        (
            None,
            chunk(
                {},
                usage={
                    "prompt_tokens": 80,
                    "completion_tokens": 12,
                    "total_tokens": 92,
                    "prompt_tokens_details": {"cached_tokens": 0},
                },
            ),
        ),
        (None, "[DONE]"),
    )


def request(**kw: object) -> ModelRequest:
    messages = [
        Message.system("You are terse."),
        Message.user(
            "Weather?",
            name="Zoë O'Brien!",
            images=(ImagePart(data="aGk=", media_type="image/jpeg"),),
        ),
        Message(
            role="assistant",
            parts=(
                TextPart(text=""),
                ToolCallPart(id="call_0", name="get_weather", arguments={"city": "Oslo"}),
            ),
        ),
        Message(
            role="user",
            parts=(
                ToolResultPart(tool_call_id="call_0", name="get_weather", content="12C"),
                ToolResultPart(
                    tool_call_id="call_x", name="get_weather", content="boom", is_error=True
                ),
                TextPart(text="Tomorrow?"),
            ),
        ),
    ]
    return ModelRequest(messages=messages, tools=[WEATHER], max_tokens=300, temperature=0.2, **kw)  # type: ignore[arg-type]


async def test_generate_translates_request_and_response(clients: Clients) -> None:
    rec = Recorder(lambda r: httpx2.Response(200, json=COMPLETION))
    model = clients.openai(rec)
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    resp = await model.generate(
        request(tool_choice="get_weather", response_schema=schema, response_schema_name="answer")
    )

    body = rec.bodies[0]
    assert rec.requests[0].url.path == "/v1/chat/completions"
    assert body["max_completion_tokens"] == 300 and "max_tokens" not in body
    assert body["temperature"] == 0.2
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["tools"][0] == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": WEATHER.parameters,
        },
    }
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }
    system, user, assistant, tool1, tool2, user2 = body["messages"]
    assert system == {"role": "system", "content": "You are terse."}
    assert user["name"] == "Zo_O_Brien"
    assert user["content"] == [
        {"type": "text", "text": "Weather?"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,aGk="}},
    ]
    assert assistant["content"] is None
    assert assistant["tool_calls"] == [
        {
            "id": "call_0",
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": "Oslo"})},
        }
    ]
    assert tool1 == {"role": "tool", "tool_call_id": "call_0", "content": "12C"}
    assert tool2 == {"role": "tool", "tool_call_id": "call_x", "content": "Error: boom"}
    assert user2 == {"role": "user", "content": "Tomorrow?"}

    assert resp.model == "openai:gpt-5-mini"
    assert resp.text == "Checking."
    assert resp.tool_calls == [
        ToolCallPart(id="call_1", name="get_weather", arguments={"city": "Oslo"})
    ]
    assert resp.stop_reason == "tool_use"
    u = resp.usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens) == (600, 100, 400)
    # gpt-5-mini: $0.25 in, $2 out, $0.025 cached per MTok -> 150 + 200 + 10
    assert u.cost_micros == 360


async def test_compatible_server_uses_max_tokens_and_no_tools_means_no_tool_choice(
    clients: Clients,
) -> None:
    rec = Recorder(lambda r: httpx2.Response(200, json=COMPLETION))
    model = clients.openai(rec, model_id="llama3.2", max_tokens_param="max_tokens")
    resp = await model.generate(ModelRequest(messages=[Message.user("hi")]))
    body = rec.bodies[0]
    assert body["max_tokens"] == 4096 and "tool_choice" not in body and "temperature" not in body
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert resp.usage.cost_micros == 0  # unknown model: unpriced


async def test_stream_yields_text_tool_call_and_one_done(clients: Clients) -> None:
    rec = Recorder(lambda r: sse_response(stream_body()))
    events: list[StreamEvent] = [e async for e in clients.openai(rec).stream(request())]
    assert rec.bodies[0]["stream"] is True
    assert rec.bodies[0]["stream_options"] == {"include_usage": True}
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello world"
    assert [e.call for e in events if isinstance(e, ToolCallEvent)] == [
        ToolCallPart(id="call_9", name="get_weather", arguments={"city": "Oslo"})
    ]
    done = [e for e in events if isinstance(e, ResponseDone)]
    assert len(done) == 1 and events[-1] is done[0]
    resp = done[0].response
    assert resp.stop_reason == "tool_use"
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (80, 12)


async def test_every_chunk_without_text_is_a_keepalive(clients: Clients) -> None:
    """Failover's idle timeout counts chunks: a tool call's arguments arriving are signs
    of life, though the call reaches the consumer only when the stream ends."""
    events = [
        e async for e in clients.openai(lambda r: sse_response(stream_body())).stream(request())
    ]
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "KeepAlive"  # the role chunk
    # the call's three chunks, the finish chunk, the usage chunk
    assert kinds[kinds.index("TextDelta") + 2 : kinds.index("ToolCallEvent")] == ["KeepAlive"] * 5
    assert sum(isinstance(e, KeepAlive) for e in events) == 6


async def test_mid_stream_error_object_maps(clients: Clients) -> None:
    body = sse(
        (None, chunk({"content": "Hel"})),
        (
            None,
            {"error": {"message": "The server had an error", "type": "server_error", "code": None}},
        ),
    )
    with pytest.raises(ServerError):
        [e async for e in clients.openai(lambda r: sse_response(body)).stream(request())]


def oai_error(message: str, type_: str, code: str | None = None) -> dict[str, object]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (
            429,
            oai_error("Rate limit reached", "requests", "rate_limit_exceeded"),
            {"retry-after-ms": "1500"},
            RateLimited,
        ),
        (503, oai_error("The engine is currently overloaded", "server_error"), {}, Overloaded),
        (500, oai_error("oops", "server_error"), {}, ServerError),
        (
            401,
            oai_error("Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
            {},
            AuthenticationFailed,
        ),
        (400, oai_error("Invalid value for 'messages'", "invalid_request_error"), {}, BadRequest),
        (
            400,
            oai_error(
                "This model's maximum context length is 128000 tokens.",
                "invalid_request_error",
                "context_length_exceeded",
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
    model = clients.openai(lambda r: httpx2.Response(status, json=body, headers=headers))
    with pytest.raises(expected) as info:
        await model.generate(request())
    assert type(info.value) is expected and info.value.__cause__ is not None
    if expected is RateLimited:
        assert info.value.retry_after == 1.5  # type: ignore[attr-defined]
    with pytest.raises(expected):
        [e async for e in model.stream(request())]


async def test_timeout_and_connection_failure_map(clients: Clients) -> None:
    def timeout(r: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("timed out", request=r)

    def refused(r: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=r)

    with pytest.raises(ProviderTimeout):
        await clients.openai(timeout).generate(request())
    with pytest.raises(ProviderConnectionError):
        await clients.openai(refused).generate(request())
