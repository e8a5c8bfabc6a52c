"""A 200 the SDK cannot read is a provider failure: fail over, record it, cool down.

Every shape goes through the real SDK over an ``httpx2.MockTransport``. What the
SDKs do with them, found by experiment (anthropic 2.15, openai 3.57):

- a body that is not JSON, or truncated JSON, under a JSON content type: the SDK
  lets ``json.JSONDecodeError`` out of ``create()``, and, mid-stream, out of the
  iteration (``sse.json()``);
- a body that is not JSON under another content type: ``create()`` *returns the
  text* (a ``str``); a JSON array or ``null`` comes back as a list or None;
- a JSON object without the documented fields, or with the wrong types: the SDK
  builds the model unvalidated, so it surfaces as ``AttributeError``/``TypeError``
  (or our own models' ``pydantic.ValidationError``) while we read it. Only with
  ``_strict_response_validation`` does the SDK raise ``APIResponseValidationError``,
  and that mode refuses every new block type or stop reason, so we do not use it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx2
import pytest

from executor.agent import Caller, Invocation, RunnableAgent, RunStatus
from executor.budget import InMemoryBudgetLedger
from executor.errors import MalformedResponse, ModelAPIError, ProviderConnectionError
from executor.events import ModelAttemptEvent
from executor.messages import Message
from executor.models.base import (
    KeepAlive,
    Model,
    ModelRequest,
    ResponseDone,
    StreamReset,
    TextDelta,
)
from executor.models.fallback import Cooldowns, FallbackModel
from executor.run import Executor
from executor.testing import AuditCapture, RecordingDelivery
from tests.executor.models.conftest import Clients, DroppingStream, sse, sse_response
from tests.executor.models.test_models_openai import chunk

REQ = ModelRequest(messages=[Message.user("hi")])
# Stands for whatever a broken body holds (it may echo the request, a key included):
# no error message may quote it.
LEAK = "sk-ant-LEAKED-BODY"
ANSWER = "Hello from the backup"

ANTHROPIC_TEXT: dict[str, Any] = {
    "id": f"msg_{LEAK}",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [{"type": "text", "text": ANSWER}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 10, "output_tokens": 5},
}
OPENAI_TEXT: dict[str, Any] = {
    "id": f"chatcmpl-{LEAK}",
    "object": "chat.completion",
    "created": 1767225600,
    "model": "gpt-5-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": ANSWER},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
}


# --- healthy answers ------------------------------------------------------------------


def anthropic_stream(text: str, *, inject: int | None = None, event: object = None) -> bytes:
    """A text-only Messages stream, with ``event`` inserted at index ``inject``."""
    start = {**ANTHROPIC_TEXT, "content": [], "stop_reason": None}
    events: list[tuple[str | None, Any]] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
    ]
    for word in text.split(" "):
        delta = {"type": "text_delta", "text": word + " "}
        events.append(
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 5},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    if inject is not None:
        events.insert(inject, ("content_block_delta", event))
    return sse(*events)


def openai_stream(text: str, *, inject: int | None = None, event: object = None) -> bytes:
    events: list[tuple[str | None, Any]] = [(None, chunk({"role": "assistant", "content": ""}))]
    events += [(None, chunk({"content": word + " "})) for word in text.split(" ")]
    events += [
        (None, chunk({}, finish="stop")),
        (None, chunk({}, usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})),
        (None, "[DONE]"),
    ]
    if inject is not None:
        events.insert(inject, (None, event))
    return sse(*events)


def healthy(provider: str) -> Callable[[httpx2.Request], httpx2.Response]:
    def answer(request: httpx2.Request) -> httpx2.Response:
        if json.loads(request.content).get("stream"):
            body = anthropic_stream if provider == "anthropic" else openai_stream
            return sse_response(body(ANSWER))
        return httpx2.Response(200, json=ANTHROPIC_TEXT if provider == "anthropic" else OPENAI_TEXT)

    return answer


def raw(body: str, content_type: str = "application/json") -> httpx2.Response:
    return httpx2.Response(200, headers={"content-type": content_type}, content=body.encode())


# --- the broken shapes ------------------------------------------------------------------


def unreadable(good: dict[str, Any]) -> dict[str, Callable[[], httpx2.Response]]:
    """Bodies no provider's SDK can parse into its response type."""
    return {
        "not JSON": lambda: raw(f"<html>502 Bad Gateway {LEAK}</html>"),
        "not JSON, as text/html": lambda: raw(f"<html>{LEAK}</html>", "text/html"),
        "truncated JSON": lambda: raw(json.dumps(good)[:60]),
        "empty body": lambda: raw(""),
        "a JSON array": lambda: raw(f'["{LEAK}"]'),
    }


# (provider, name) -> the 200 that answers a non-streaming request.
BROKEN_BODIES: dict[tuple[str, str], Callable[[], httpx2.Response]] = {
    **{("anthropic", k): v for k, v in unreadable(ANTHROPIC_TEXT).items()},
    **{("openai", k): v for k, v in unreadable(OPENAI_TEXT).items()},
    ("anthropic", "missing content and usage"): lambda: httpx2.Response(
        200, json={"id": LEAK, "type": "message", "role": "assistant"}
    ),
    ("anthropic", "content is a string"): lambda: httpx2.Response(
        200, json={**ANTHROPIC_TEXT, "content": LEAK}
    ),
    ("anthropic", "text of the wrong type"): lambda: httpx2.Response(
        200, json={**ANTHROPIC_TEXT, "content": [{"type": "text", "text": {"x": LEAK}}]}
    ),
    ("anthropic", "usage of the wrong type"): lambda: httpx2.Response(
        200, json={**ANTHROPIC_TEXT, "usage": {"input_tokens": LEAK, "output_tokens": 1}}
    ),
    ("openai", "missing choices"): lambda: httpx2.Response(
        200, json={"id": LEAK, "object": "chat.completion"}
    ),
    ("openai", "a choice without its message"): lambda: httpx2.Response(
        200, json={**OPENAI_TEXT, "choices": [{"index": 0, "finish_reason": "stop"}]}
    ),
    ("openai", "content of the wrong type"): lambda: httpx2.Response(
        200,
        json={
            **OPENAI_TEXT,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": {"x": LEAK}}}],
        },
    ),
    ("openai", "usage of the wrong type"): lambda: httpx2.Response(
        200, json={**OPENAI_TEXT, "usage": {"prompt_tokens": LEAK, "completion_tokens": 1}}
    ),
}

TRUNCATED_DELTA = '{"type": "content_block_delta", "index": 0, "delta": {"type": "text_de'
# (provider, name) -> (where the bad event goes, the event, whether text came before it)
BROKEN_EVENTS: dict[tuple[str, str], tuple[int, object, bool]] = {
    ("anthropic", "truncated JSON before any text"): (0, TRUNCATED_DELTA, False),
    ("anthropic", "truncated JSON mid-stream"): (4, TRUNCATED_DELTA, True),
    ("anthropic", "not JSON mid-stream"): (4, f"<html>{LEAK}</html>", True),
    ("anthropic", "delta of the wrong shape mid-stream"): (
        4,
        {"type": "content_block_delta", "index": 0, "delta": LEAK},
        True,
    ),
    ("anthropic", "text of the wrong type mid-stream"): (
        4,
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": 5}},
        True,
    ),
    ("openai", "truncated JSON before any text"): (0, '{"id": "chatcmpl-1", "choi', False),
    ("openai", "truncated JSON mid-stream"): (2, '{"id": "c", "choices": [{"delta": {"con', True),
    ("openai", "not JSON mid-stream"): (2, f"<html>{LEAK}</html>", True),
    ("openai", "a JSON array mid-stream"): (2, f'["{LEAK}"]', True),
    ("openai", "choices of the wrong shape mid-stream"): (
        2,
        {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": LEAK},
        True,
    ),
    ("openai", "content of the wrong type mid-stream"): (
        2,
        chunk({"content": {"x": LEAK}}),
        True,
    ),
}


def broken_stream(provider: str, shape: str) -> Callable[[httpx2.Request], httpx2.Response]:
    at, event, _ = BROKEN_EVENTS[provider, shape]
    body = anthropic_stream if provider == "anthropic" else openai_stream
    return lambda request: sse_response(body("Half an answer", inject=at, event=event))


def build(clients: Clients, provider: str, handler: Any) -> Model:
    model: Model = (clients.anthropic if provider == "anthropic" else clients.openai)(handler)
    return model


def cases(shapes: dict[tuple[str, str], Any]) -> list[Any]:
    return [pytest.param(p, s, id=f"{p}: {s}") for p, s in shapes]


def pair(
    clients: Clients, provider: str, broken: Any
) -> tuple[Model, Model, FallbackModel, Cooldowns]:
    """The broken primary, a healthy secondary of the other provider, and failover."""
    other = "openai" if provider == "anthropic" else "anthropic"
    primary = build(clients, provider, broken)
    secondary = build(clients, other, healthy(other))
    cooldowns = Cooldowns(monotonic=lambda: 1000.0)
    return primary, secondary, FallbackModel([primary, secondary], cooldowns=cooldowns), cooldowns


def assert_unreadable(exc: BaseException, model: Model) -> None:
    assert isinstance(exc, MalformedResponse) and isinstance(exc, ModelAPIError)
    assert exc.retriable and exc.kind == "malformed_response" and exc.model == model.name
    assert LEAK not in str(exc)


# --- generate ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "shape"), cases(BROKEN_BODIES))
async def test_generate_fails_over_from_an_unreadable_200(
    clients: Clients, provider: str, shape: str
) -> None:
    primary, secondary, model, cooldowns = pair(
        clients, provider, lambda r: BROKEN_BODIES[provider, shape]()
    )
    resp = await model.generate(REQ)
    assert resp.text == ANSWER and resp.model == secondary.name
    assert [(a.model, a.error_kind) for a in resp.attempts] == [
        (primary.name, "malformed_response"),
        (secondary.name, None),
    ]
    assert LEAK not in (resp.attempts[0].error or "")
    assert cooldowns.cooling(primary.name) and not cooldowns.cooling(secondary.name)


@pytest.mark.parametrize(("provider", "shape"), cases(BROKEN_BODIES))
async def test_generate_without_fallback_raises_a_provider_error(
    clients: Clients, provider: str, shape: str
) -> None:
    primary = build(clients, provider, lambda r: BROKEN_BODIES[provider, shape]())
    with pytest.raises(ModelAPIError) as info:
        await primary.generate(REQ)
    assert_unreadable(info.value, primary)


# --- stream -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "shape"), cases(BROKEN_EVENTS))
async def test_stream_fails_over_from_a_broken_event(
    clients: Clients, provider: str, shape: str
) -> None:
    primary, secondary, model, cooldowns = pair(clients, provider, broken_stream(provider, shape))
    events = [e async for e in model.stream(REQ)]
    done = events[-1]
    assert isinstance(done, ResponseDone)
    assert done.response.text.strip() == ANSWER and done.response.model == secondary.name
    assert [(a.model, a.error_kind) for a in done.response.attempts] == [
        (primary.name, "malformed_response"),
        (secondary.name, None),
    ]
    assert LEAK not in (done.response.attempts[0].error or "")
    assert cooldowns.cooling(primary.name) and not cooldowns.cooling(secondary.name)
    # What was streamed from the primary is taken back before the secondary's text.
    resets = [i for i, e in enumerate(events) if isinstance(e, StreamReset)]
    text_before = BROKEN_EVENTS[provider, shape][2]
    assert len(resets) == (1 if text_before else 0)
    after = events[resets[0] + 1 :] if resets else events
    assert "".join(e.text for e in after if isinstance(e, TextDelta)).strip() == ANSWER


@pytest.mark.parametrize(("provider", "shape"), cases(BROKEN_EVENTS))
async def test_stream_without_fallback_raises_a_provider_error(
    clients: Clients, provider: str, shape: str
) -> None:
    primary = build(clients, provider, broken_stream(provider, shape))
    seen: list[object] = []

    async def drain() -> None:
        async for event in primary.stream(REQ):
            seen.append(event)

    with pytest.raises(ModelAPIError) as info:
        await drain()
    assert_unreadable(info.value, primary)
    # Whatever text reached the consumer was text, never a value of another type
    # (the other events are the provider's signs of life).
    texts = [e for e in seen if not isinstance(e, KeepAlive)]
    assert all(isinstance(e, TextDelta) and isinstance(e.text, str) for e in texts)


async def test_a_stream_with_no_events_at_all_still_fails_over(clients: Clients) -> None:
    """A 200 JSON body to a streaming request: no SSE event, so the stream just ends."""
    primary, secondary, model, cooldowns = pair(
        clients, "anthropic", lambda r: raw(json.dumps(ANTHROPIC_TEXT))
    )
    done = [e async for e in model.stream(REQ)][-1]
    assert isinstance(done, ResponseDone) and done.response.model == secondary.name
    assert done.response.attempts[0].error_kind == "provider_connection_error"
    assert cooldowns.cooling(primary.name)


def dropped(provider: str, error: Exception) -> Callable[[httpx2.Request], httpx2.Response]:
    """Half of a good stream, then the connection drops the way ``error`` says."""
    body = anthropic_stream(ANSWER) if provider == "anthropic" else openai_stream(ANSWER)
    half = body[: len(body) // 2]

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, stream=DroppingStream([half], error)
        )

    return answer


DROPS = [
    pytest.param(p, e, id=f"{p}: {type(e).__name__}")
    for p in ("anthropic", "openai")
    for e in (httpx2.RemoteProtocolError("peer closed connection"), httpx2.ReadError("reset"))
]


@pytest.mark.parametrize(("provider", "error"), DROPS)
async def test_a_stream_dropped_halfway_is_a_connection_failure_and_fails_over(
    clients: Clients, provider: str, error: Exception
) -> None:
    """coterie's contract, whatever exception the SDK of the day wraps the drop in.

    Why not the exception chain: anthropic 2.17 wraps a dropped stream in its own
    ``APIConnectionError`` where 2.12 let the transport error out; members see the
    same either way, and so must this test.
    """
    alone = build(clients, provider, dropped(provider, error))
    with pytest.raises(ProviderConnectionError) as info:
        [e async for e in alone.stream(REQ)]
    assert info.value.kind == "provider_connection_error" and info.value.retriable
    assert info.value.model == alone.name

    primary, secondary, model, cooldowns = pair(clients, provider, dropped(provider, error))
    events = [e async for e in model.stream(REQ)]
    done = events[-1]
    assert isinstance(done, ResponseDone) and done.response.model == secondary.name
    assert [(a.model, a.error_kind) for a in done.response.attempts] == [
        (primary.name, "provider_connection_error"),
        (secondary.name, None),
    ]
    assert done.response.usage.output_tokens > 0  # the answer that was billed is the secondary's
    assert cooldowns.cooling(primary.name)
    # The half answer the member saw is taken back before the secondary's text.
    resets = [i for i, e in enumerate(events) if isinstance(e, StreamReset)]
    assert len(resets) == 1
    after = events[resets[0] + 1 :]
    assert "".join(e.text for e in after if isinstance(e, TextDelta)).strip() == ANSWER


# --- through a run ----------------------------------------------------------------------------


def broken_everywhere(request: httpx2.Request) -> httpx2.Response:
    if json.loads(request.content).get("stream"):
        return sse_response(anthropic_stream("Half an answer", inject=4, event=TRUNCATED_DELTA))
    return raw(json.dumps(ANTHROPIC_TEXT)[:60])


@pytest.mark.parametrize("streaming", [False, True], ids=["generate", "stream"])
async def test_a_run_answers_from_the_fallback_and_records_the_broken_attempt(
    clients: Clients, streaming: bool
) -> None:
    registry = clients.registry({"anthropic": broken_everywhere, "openai": healthy("openai")})
    primary = registry.model("anthropic:claude-haiku-4-5")
    secondary = registry.model("openai:gpt-5-mini")
    model = FallbackModel([primary, secondary], name="tier:standard")
    delivery = RecordingDelivery() if streaming else None
    result = await Executor().run(
        RunnableAgent(model=model),
        Invocation(messages=[Message.user("hi")], delivery=delivery),
    )
    assert result.status is RunStatus.OK, result.error
    assert result.output.strip() == ANSWER and result.model == secondary.name
    assert [(a.model, a.error_kind) for a in result.attempts] == [
        (primary.name, "malformed_response"),
        (secondary.name, None),
    ]
    assert model.cooldowns.cooling(primary.name)
    if delivery is not None:
        assert ("reset", None) in delivery.log and delivery.text_so_far.strip() == ANSWER


async def test_a_mid_stream_failover_charges_what_the_first_provider_reported(
    clients: Clients,
) -> None:
    """Anthropic streams half an answer and fails (overloaded); OpenAI answers. The run
    is charged both: Anthropic's usage as its message_start reported it, on its attempt,
    and OpenAI's answer; the audit and the ledger agree."""
    from tests.executor.models.test_models_anthropic import error_body, stream_events

    half = stream_events(error=error_body("overloaded_error", "Overloaded"))
    registry = clients.registry(
        {"anthropic": lambda r: sse_response(half), "openai": healthy("openai")}
    )
    primary = registry.model("anthropic:claude-haiku-4-5")
    secondary = registry.model("openai:gpt-5-mini")
    model = FallbackModel([primary, secondary], name="tier:standard")
    ledger = InMemoryBudgetLedger(default_limit_micros=5_000_000)
    audit = AuditCapture()
    delivery = RecordingDelivery()
    result = await Executor(budget=ledger, audit=audit).run(
        RunnableAgent(model=model),
        Invocation(messages=[Message.user("hi")], caller=Caller(user_id="ada"), delivery=delivery),
    )
    assert result.status is RunStatus.OK and result.output.strip() == ANSWER
    assert ("reset", None) in delivery.log
    failed, answered = audit.of_type(ModelAttemptEvent)
    assert failed.attempt.model == primary.name and failed.attempt.error_kind == "overloaded"
    assert failed.usage is not None and answered.usage is not None
    assert (failed.usage.input_tokens, failed.usage.cache_read_tokens) == (50, 20)
    assert failed.usage.cost_micros > 0 and answered.usage.cost_micros > 0
    both = failed.usage.cost_micros + answered.usage.cost_micros
    assert result.cost_micros == both == (await ledger.status("ada")).spent_micros


@pytest.mark.parametrize("streaming", [False, True], ids=["generate", "stream"])
async def test_a_run_with_no_fallback_ends_as_a_provider_error_not_internal(
    clients: Clients, streaming: bool
) -> None:
    registry = clients.registry({"anthropic": broken_everywhere})
    primary = registry.model("anthropic:claude-haiku-4-5")
    delivery = RecordingDelivery() if streaming else None
    result = await Executor().run(
        RunnableAgent(model=primary),
        Invocation(messages=[Message.user("hi")], delivery=delivery),
    )
    assert result.status is RunStatus.ERROR
    assert result.error_kind == "malformed_response"
    assert [(a.model, a.error_kind) for a in result.attempts] == [
        (primary.name, "malformed_response")
    ]
    note = result.note or ""
    assert "JSONDecodeError" not in note and LEAK not in note and LEAK not in (result.error or "")


# --- what is not broken --------------------------------------------------------------------


async def test_new_shapes_the_api_may_add_are_read_not_refused(clients: Clients) -> None:
    """Why we read loosely: a new block type, stop reason or event is not a failure."""
    future = {
        **ANTHROPIC_TEXT,
        "content": [{"type": "future_block", "x": 1}, *ANTHROPIC_TEXT["content"]],
        "stop_reason": "future_reason",
        "future_field": {"x": 1},
    }
    resp = await clients.anthropic(lambda r: httpx2.Response(200, json=future)).generate(REQ)
    assert resp.text == ANSWER and resp.stop_reason == "other"

    choice = {**OPENAI_TEXT["choices"][0], "finish_reason": "eos"}
    completion = {**OPENAI_TEXT, "choices": [choice]}
    resp = await clients.openai(lambda r: httpx2.Response(200, json=completion)).generate(REQ)
    assert resp.text == ANSWER and resp.stop_reason == "other"

    stream = anthropic_stream(ANSWER, inject=2, event={"type": "future_event"})
    events = [e async for e in clients.anthropic(lambda r: sse_response(stream)).stream(REQ)]
    assert isinstance(events[-1], ResponseDone)

    # A compatible server's usage chunk without a choices field at all.
    usage_only = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    usage_only["usage"] = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    body = openai_stream(ANSWER, inject=-1, event=usage_only)
    events = [e async for e in clients.openai(lambda r: sse_response(body)).stream(REQ)]
    done = events[-1]
    assert isinstance(done, ResponseDone) and done.response.usage.output_tokens == 5


async def test_strict_sdk_validation_errors_map_too(clients: Clients) -> None:
    """A host that turns the SDK's strict validation on gets the same provider error."""
    import anthropic
    import openai

    from executor.models.anthropic import AnthropicModel
    from executor.models.openai import OpenAIModel

    bad_message = clients.client(
        lambda r: httpx2.Response(200, json={**ANTHROPIC_TEXT, "content": LEAK})
    )
    bad_completion = clients.client(
        lambda r: httpx2.Response(200, json={**OPENAI_TEXT, "choices": LEAK})
    )
    models: list[Model] = [
        AnthropicModel(
            "claude-haiku-4-5",
            client=anthropic.AsyncAnthropic(
                api_key="k",
                max_retries=0,
                http_client=bad_message,
                _strict_response_validation=True,
            ),
        ),
        OpenAIModel(
            "gpt-5-mini",
            client=openai.AsyncOpenAI(
                api_key="k",
                max_retries=0,
                http_client=bad_completion,
                _strict_response_validation=True,
            ),
        ),
    ]
    for model in models:
        with pytest.raises(ModelAPIError) as info:
            await model.generate(REQ)
        assert_unreadable(info.value, model)
