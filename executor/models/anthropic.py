"""Anthropic's Messages API, translated to and from :mod:`executor.messages`.

The only module that imports the ``anthropic`` SDK; imported lazily by the
provider registry when the first Anthropic model is built.

Translation notes:

- System messages become the top-level ``system`` parameter (joined by blank lines).
- A user message's author name is conveyed as a ``[name]: `` prefix on its
  first text block (the API has no name field). Brackets and newlines are
  stripped from the name so the prefix stays one unambiguous token.
- Tool results are ``tool_result`` blocks, placed first in their user message
  (the API requires it).
- ``temperature`` is not sent: API version 2026-10-21 (the SDK's default)
  rejects every sampling parameter, even at its default value.
- ``response_schema`` is ignored here: structured output on Anthropic is
  forced tool use (``tool_choice`` set to the tool's name).
- ``overloaded_error`` may arrive inside an HTTP 200 stream as an ``error``
  event; it maps to :class:`~executor.errors.Overloaded` like a 529 does.
- A 200 we cannot read (invalid or truncated JSON, a broken SSE event, fields
  missing or of the wrong type) is :class:`~executor.errors.MalformedResponse`:
  the provider failed, so failover moves on and cools it down.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2

from executor.errors import (
    AuthenticationFailed,
    BadRequest,
    ContextTooLong,
    MalformedResponse,
    ModelAPIError,
    Overloaded,
    ProviderConnectionError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from executor.messages import (
    ImagePart,
    Message,
    Part,
    TextPart,
    ToolCallPart,
    ToolResultPart,
    Usage,
)
from executor.models.base import (
    KeepAlive,
    ModelProfile,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StopReason,
    StreamEvent,
    TextDelta,
    ToolCallEvent,
)
from executor.models.pricing import PriceTable
from executor.models.profiles import anthropic_profile
from executor.models.providers import ProviderSpec, is_context_too_long, parse_retry_after

__all__ = ["AnthropicModel", "make_client", "make_model"]

_STOP_REASONS: dict[str, StopReason] = {
    "end_turn": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "stop_sequence": "stop_sequence",
    "model_context_window_exceeded": "max_tokens",
}


def make_client(
    *,
    api_key: str | None,
    base_url: str | None,
    max_retries: int,
    timeout: float,
    http_client: Any | None,
) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key=api_key,
        base_url=base_url,
        max_retries=max_retries,
        timeout=timeout,
        http_client=http_client,
    )


def make_model(
    client: Any, *, spec: ProviderSpec, model_id: str, prices: PriceTable
) -> AnthropicModel:
    return AnthropicModel(model_id, client=client, provider=spec.name, prices=prices)


class AnthropicModel:
    def __init__(
        self,
        model_id: str,
        *,
        client: anthropic.AsyncAnthropic,
        provider: str = "anthropic",
        prices: PriceTable | None = None,
        profile: ModelProfile | None = None,
    ) -> None:
        self.model_id = model_id
        self._client = client
        self._name = f"{provider}:{model_id}"
        self._prices = prices or PriceTable()
        self._profile = profile or anthropic_profile(model_id, provider=provider)

    @property
    def name(self) -> str:
        return self._name

    @property
    def profile(self) -> ModelProfile:
        return self._profile

    async def generate(self, request: ModelRequest) -> ModelResponse:
        params = self._params(request)
        try:
            msg = await self._client.messages.create(**params)
        except (anthropic.AnthropicError, httpx2.HTTPError) as exc:
            raise self._map_error(exc) from exc
        except json.JSONDecodeError as exc:  # the SDK lets a 200's bad JSON through
            raise MalformedResponse.because(self._name, exc) from exc
        # Why read under a net: a 200 that is not JSON comes back as its text, and the
        # SDK builds the message unvalidated (strict validation would refuse every new
        # block type or stop reason), so a wrong shape shows only as we read it.
        if not isinstance(msg, anthropic.types.Message):
            raise MalformedResponse.because(self._name, f"a {type(msg).__name__}, not a message")
        try:
            return self._response(msg)
        except (AttributeError, TypeError, ValueError) as exc:
            raise MalformedResponse.because(self._name, exc) from exc

    def _response(self, msg: anthropic.types.Message) -> ModelResponse:
        parts: list[Part] = []
        for block in msg.content:
            if block.type == "text":
                if block.text:
                    parts.append(TextPart(text=block.text))
            elif block.type == "tool_use":
                parts.append(
                    ToolCallPart(id=block.id, name=block.name, arguments=dict(block.input))
                )
        u = msg.usage
        usage = self._usage(
            u.input_tokens,
            u.output_tokens,
            u.cache_read_input_tokens,
            u.cache_creation_input_tokens,
        )
        return ModelResponse(
            message=Message(role="assistant", parts=tuple(parts)),
            usage=usage,
            model=self._name,
            stop_reason=_STOP_REASONS.get(msg.stop_reason or "", "other"),
        )

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        params = self._params(request)
        # What the stream reported it cost so far: a stream that breaks after its
        # message_start was billed that much (the error carries it).
        billed: list[Usage] = []
        try:
            async for event in self._stream(params, billed):
                yield event
        except (anthropic.AnthropicError, httpx2.HTTPError) as exc:
            # Why httpx2 too: depending on the SDK release, a stream dropped after the
            # response started surfaces as the raw transport error (2.12) or wrapped in
            # the SDK's APIConnectionError (2.17); both are a connection failure.
            raise _with_usage(self._map_error(exc), billed) from exc
        except (AttributeError, TypeError, ValueError) as exc:
            # Why: a broken SSE event is the SDK's json.loads error, mid-stream; events
            # are built unvalidated, so a wrong shape shows only as we read it.
            raise _with_usage(MalformedResponse.because(self._name, exc), billed) from exc
        except ModelAPIError as exc:
            _with_usage(exc, billed)
            raise

    async def _stream(
        self, params: dict[str, Any], billed: list[Usage]
    ) -> AsyncIterator[StreamEvent]:
        stream = await self._client.messages.create(**params, stream=True)
        parts: list[Part] = []
        text: list[str] = []  # the text block being streamed
        tool: dict[str, Any] | None = None  # the tool_use block being streamed
        input_tokens = output_tokens = cache_read = cache_write = 0
        stop_reason: str | None = None
        async with stream:
            async for ev in stream:
                # Why one event per wire event: failover's idle timeout counts the
                # provider's events, and a tool call's arguments stream for a while
                # before the call is whole.
                out: StreamEvent = KeepAlive()
                if ev.type == "message_start":
                    u = ev.message.usage
                    input_tokens = u.input_tokens
                    output_tokens = u.output_tokens
                    cache_read = u.cache_read_input_tokens or 0
                    cache_write = u.cache_creation_input_tokens or 0
                elif ev.type == "content_block_start":
                    block = ev.content_block
                    if block.type == "tool_use":
                        tool = {"id": block.id, "name": block.name, "json": []}
                    elif block.type == "text":
                        start = _text(block.text or "")
                        text = [start] if start else []
                        if start:
                            out = TextDelta(start)
                elif ev.type == "content_block_delta":
                    delta = ev.delta
                    if delta.type == "text_delta":
                        piece = _text(delta.text)
                        text.append(piece)
                        out = TextDelta(piece)
                    elif delta.type == "input_json_delta" and tool is not None:
                        tool["json"].append(delta.partial_json)
                elif ev.type == "content_block_stop":
                    if tool is not None:
                        call = ToolCallPart(
                            id=tool["id"],
                            name=tool["name"],
                            arguments=_json_args("".join(tool["json"])),
                        )
                        parts.append(call)
                        tool = None
                        out = ToolCallEvent(call)
                    elif text:
                        parts.append(TextPart(text="".join(text)))
                        text = []
                elif ev.type == "message_delta":
                    stop_reason = ev.delta.stop_reason or stop_reason
                    u2 = ev.usage
                    output_tokens = u2.output_tokens
                    # Cumulative counts; present on message_delta in newer API versions.
                    input_tokens = u2.input_tokens if u2.input_tokens is not None else input_tokens
                    if u2.cache_read_input_tokens is not None:
                        cache_read = u2.cache_read_input_tokens
                    if u2.cache_creation_input_tokens is not None:
                        cache_write = u2.cache_creation_input_tokens
                if ev.type in ("message_start", "message_delta"):
                    billed[:] = [self._usage(input_tokens, output_tokens, cache_read, cache_write)]
                yield out
        if text:
            parts.append(TextPart(text="".join(text)))
        if stop_reason is None:
            raise ProviderConnectionError(
                f"{self._name}: the stream ended before the message did", model=self._name
            )
        yield ResponseDone(
            ModelResponse(
                message=Message(role="assistant", parts=tuple(parts)),
                usage=self._usage(input_tokens, output_tokens, cache_read, cache_write),
                model=self._name,
                stop_reason=_STOP_REASONS.get(stop_reason, "other"),
            )
        )

    # --- request translation ---------------------------------------------------------

    def _params(self, request: ModelRequest) -> dict[str, Any]:
        system = "\n\n".join(m.text for m in request.messages if m.role == "system" and m.text)
        params: dict[str, Any] = {
            "model": self.model_id,
            "max_tokens": request.max_tokens,
            "messages": [_message(m) for m in request.messages if m.role != "system"],
        }
        if system:
            params["system"] = system
        if request.tools:
            params["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters}
                for t in request.tools
            ]
            params["tool_choice"] = _tool_choice(request.tool_choice)
        return params

    def _usage(
        self, input_tokens: int, output_tokens: int, cache_read: int | None, cache_write: int | None
    ) -> Usage:
        usage = Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read or 0,
            cache_write_tokens=cache_write or 0,
            requests=1,
        )
        return usage.model_copy(update={"cost_micros": self._prices.cost_micros(self._name, usage)})

    # --- errors -----------------------------------------------------------------------

    def _map_error(self, exc: anthropic.AnthropicError | httpx2.HTTPError) -> ModelAPIError:
        name = self._name
        if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException):
            return ProviderTimeout(f"{name}: timed out", model=name)
        if isinstance(exc, anthropic.APIConnectionError | httpx2.TransportError):
            return ProviderConnectionError(f"{name}: connection failed: {exc}", model=name)
        if isinstance(exc, anthropic.APIStatusError):
            return _status_error(exc, name)
        if isinstance(exc, anthropic.APIResponseValidationError):  # strict validation only
            return MalformedResponse.because(name, "not the documented schema")
        if isinstance(exc, anthropic.CredentialsError):
            return AuthenticationFailed(f"{name}: {exc}", model=name)
        return ServerError(f"{name}: {exc}", model=name)


def _with_usage(error: ModelAPIError, billed: list[Usage]) -> ModelAPIError:
    """``error`` carrying what the stream had reported it cost (if it had)."""
    if billed and error.usage is None:
        error.usage = billed[-1]
    return error


def _status_error(exc: anthropic.APIStatusError, name: str) -> ModelAPIError:
    status = exc.status_code
    etype = exc.type or ""
    detail = exc.api_message or exc.message
    msg = f"{name}: {etype or 'error'} ({status}): {detail}"
    # Mid-stream errors arrive with the stream's 200 status: go by the type.
    if etype == "overloaded_error" or status == 529:
        return Overloaded(msg, model=name, status=status)
    if etype == "rate_limit_error" or status == 429:
        return RateLimited(
            msg, model=name, status=status, retry_after=parse_retry_after(exc.response.headers)
        )
    if etype in ("authentication_error", "permission_error") or status in (401, 403):
        return AuthenticationFailed(msg, model=name, status=status)
    if etype == "timeout_error" or status in (408, 504):
        return ProviderTimeout(msg, model=name, status=status)
    if etype == "invalid_request_error" or status in (400, 404, 413, 422):
        if is_context_too_long(detail) or status == 413:
            return ContextTooLong(msg, model=name, status=status)
        return BadRequest(msg, model=name, status=status)
    return ServerError(msg, model=name, status=status)


# --- message translation --------------------------------------------------------------


def _clean_name(name: str) -> str:
    return " ".join(name.replace("[", "").replace("]", "").split())


def _message(m: Message) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    results = [p for p in m.parts if isinstance(p, ToolResultPart)]
    for r in results:
        content.append(
            {
                "type": "tool_result",
                "tool_use_id": r.tool_call_id,
                "content": r.content,
                "is_error": r.is_error,
            }
        )
    prefix = f"[{_clean_name(m.name)}]: " if m.role == "user" and m.name else ""
    for p in m.parts:
        if isinstance(p, TextPart):
            text = prefix + p.text
            prefix = ""
            if text:
                content.append({"type": "text", "text": text})
        elif isinstance(p, ImagePart):
            content.append({"type": "image", "source": _image_source(p)})
        elif isinstance(p, ToolCallPart):
            content.append({"type": "tool_use", "id": p.id, "name": p.name, "input": p.arguments})
    if prefix:  # a named message with no text (an image alone): say who sent it
        content.insert(len(results), {"type": "text", "text": prefix.rstrip()})
    return {"role": m.role, "content": content}


def _image_source(p: ImagePart) -> dict[str, Any]:
    if p.data is not None:
        return {"type": "base64", "media_type": p.media_type, "data": p.data}
    return {"type": "url", "url": p.url or ""}


def _tool_choice(choice: str) -> dict[str, Any]:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    return {"type": "tool", "name": choice}


def _text(value: object) -> str:
    # Why: text reaches the consumer as it streams, before any model checks its type.
    if not isinstance(value, str):
        raise TypeError(f"a text field holds {type(value).__name__}")
    return value


def _json_args(raw: str) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        # Why not raise: a malformed call goes back to the model as a tool error.
        return {"_raw": raw}
    return value if isinstance(value, dict) else {"_value": value}
