"""OpenAI's Chat Completions API (and every server that speaks it), translated
to and from :mod:`executor.messages`.

The only module that imports the ``openai`` SDK; imported lazily by the
provider registry when the first model of an OpenAI-kind provider is built
(``openai``, ``ollama``, ``openrouter``, custom ``kind = "openai"`` ones).

Translation notes:

- Tool results (canonically :class:`~executor.messages.ToolResultPart` in a user
  message) become ``tool`` role messages, before the rest of that user message.
  A failed tool's content is prefixed with ``Error: ``.
- A user message's author name goes in the ``name`` field, reduced to the
  allowed ``[A-Za-z0-9_-]{1,64}``.
- Text-only user messages are sent as a plain string (older compatible
  servers do not take content lists).
- ``tool_choice`` set to a tool's name forces that function;
  ``response_schema`` becomes ``response_format`` ``json_schema`` (strict when
  the schema closes its object with ``additionalProperties: false``, which
  strict mode requires).
- Usage: ``prompt_tokens`` includes cached tokens; they are split out so
  ``input_tokens`` counts uncached ones only (see :mod:`.pricing`).
- A 200 we cannot read (invalid or truncated JSON, a broken SSE event, fields
  missing or of the wrong type) is :class:`~executor.errors.MalformedResponse`:
  the provider failed, so failover moves on and cools it down.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai

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
from executor.models.profiles import openai_compatible_profile
from executor.models.providers import ProviderSpec, is_context_too_long, parse_retry_after

__all__ = ["OpenAIModel", "make_client", "make_model"]

_STOP_REASONS: dict[str, StopReason] = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "length": "max_tokens",
}
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
# Why a placeholder: the SDK refuses to start without a key, and local servers
# (Ollama, vLLM, LM Studio) ignore it.
_NO_KEY = "not-needed"


def make_client(
    *,
    api_key: str | None,
    base_url: str | None,
    max_retries: int,
    timeout: float,
    http_client: Any | None,
) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=api_key or _NO_KEY,
        base_url=base_url,
        max_retries=max_retries,
        timeout=timeout,
        http_client=http_client,
    )


def make_model(
    client: Any, *, spec: ProviderSpec, model_id: str, prices: PriceTable
) -> OpenAIModel:
    return OpenAIModel(
        model_id,
        client=client,
        provider=spec.name,
        prices=prices,
        max_tokens_param=spec.max_tokens_param,
    )


class OpenAIModel:
    def __init__(
        self,
        model_id: str,
        *,
        client: openai.AsyncOpenAI,
        provider: str = "openai",
        prices: PriceTable | None = None,
        max_tokens_param: str = "max_completion_tokens",
        profile: ModelProfile | None = None,
    ) -> None:
        self.model_id = model_id
        self._client = client
        self._name = f"{provider}:{model_id}"
        self._prices = prices or PriceTable()
        self._max_tokens_param = max_tokens_param
        self._profile = profile or openai_compatible_profile(provider, model_id)

    @property
    def name(self) -> str:
        return self._name

    @property
    def profile(self) -> ModelProfile:
        return self._profile

    async def generate(self, request: ModelRequest) -> ModelResponse:
        params = self._params(request)
        try:
            completion = await self._client.chat.completions.create(**params)
        except (openai.OpenAIError, httpx2.HTTPError) as exc:
            raise self._map_error(exc) from exc
        except json.JSONDecodeError as exc:  # the SDK lets a 200's bad JSON through
            raise MalformedResponse.because(self._name, exc) from exc
        # Why read under a net: a 200 that is not JSON comes back as its text, and the
        # SDK builds the completion unvalidated (strict validation would refuse a
        # compatible server's own finish reasons), so a wrong shape shows as we read it.
        if not isinstance(completion, openai.types.chat.ChatCompletion):
            raise MalformedResponse.because(
                self._name, f"a {type(completion).__name__}, not a completion"
            )
        try:
            return self._response(completion)
        except (AttributeError, TypeError, ValueError) as exc:
            raise MalformedResponse.because(self._name, exc) from exc

    def _response(self, completion: openai.types.chat.ChatCompletion) -> ModelResponse:
        if not completion.choices:
            raise MalformedResponse.because(self._name, "no choices")
        choice = completion.choices[0]
        msg = choice.message
        parts: list[Part] = []
        if msg.content:
            parts.append(TextPart(text=msg.content))
        for call in msg.tool_calls or []:
            if call.type == "function":
                parts.append(
                    ToolCallPart(
                        id=call.id,
                        name=call.function.name,
                        arguments=_json_args(call.function.arguments),
                    )
                )
        return ModelResponse(
            message=Message(role="assistant", parts=tuple(parts)),
            usage=self._usage(completion.usage),
            model=self._name,
            stop_reason=_STOP_REASONS.get(choice.finish_reason or "", "other"),
        )

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        params = self._params(request)
        try:
            async for event in self._stream(params):
                yield event
        except (openai.OpenAIError, httpx2.HTTPError) as exc:
            # Why httpx2 too: a stream dropped after the response started may surface
            # as the raw transport error or wrapped by the SDK, by release.
            raise self._map_error(exc) from exc
        except (AttributeError, TypeError, ValueError) as exc:
            # Why: a broken SSE event is the SDK's json.loads error, mid-stream; chunks
            # are built unvalidated, so a wrong shape shows only as we read it.
            raise MalformedResponse.because(self._name, exc) from exc

    async def _stream(self, params: dict[str, Any]) -> AsyncIterator[StreamEvent]:
        params["stream"] = True
        params["stream_options"] = {"include_usage": True}
        stream = await self._client.chat.completions.create(**params)
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        finish: str | None = None
        usage: Any = None
        async with stream:
            async for chunk in stream:
                # Why one event per chunk: failover's idle timeout counts the provider's
                # chunks, and a tool call's arguments stream for a while before the call
                # is whole.
                out: StreamEvent = KeepAlive()
                if chunk.usage is not None:
                    usage = chunk.usage
                # Why `or []`: a compatible server may leave choices out of a usage chunk.
                for choice in (chunk.choices or [])[:1]:
                    delta = choice.delta
                    if delta.content:
                        piece = _text(delta.content)
                        text.append(piece)
                        out = TextDelta(piece)
                    for tc in delta.tool_calls or []:
                        slot = calls.setdefault(tc.index, {"id": "", "name": "", "args": []})
                        if tc.id:
                            slot["id"] = tc.id
                        if tc.function is not None:
                            if tc.function.name:
                                slot["name"] += tc.function.name
                            if tc.function.arguments:
                                slot["args"].append(tc.function.arguments)
                    if choice.finish_reason:
                        finish = choice.finish_reason
                yield out
        if finish is None:
            raise ProviderConnectionError(
                f"{self._name}: the stream ended before the message did", model=self._name
            )
        parts: list[Part] = [TextPart(text="".join(text))] if text else []
        for index in sorted(calls):
            slot = calls[index]
            call = ToolCallPart(
                id=slot["id"] or f"call_{index}",
                name=slot["name"],
                arguments=_json_args("".join(slot["args"])),
            )
            parts.append(call)
            yield ToolCallEvent(call)
        yield ResponseDone(
            ModelResponse(
                message=Message(role="assistant", parts=tuple(parts)),
                usage=self._usage(usage),
                model=self._name,
                stop_reason=_STOP_REASONS.get(finish, "other"),
            )
        )

    # --- request translation ------------------------------------------------------------

    def _params(self, request: ModelRequest) -> dict[str, Any]:
        messages: list[dict[str, Any]] = []
        for m in request.messages:
            messages.extend(_messages(m))
        params: dict[str, Any] = {
            "model": self.model_id,
            "messages": messages,
            self._max_tokens_param: request.max_tokens,
        }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.tools:
            params["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in request.tools
            ]
            params["tool_choice"] = _tool_choice(request.tool_choice)
        if request.response_schema is not None:
            schema = request.response_schema
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": request.response_schema_name,
                    "schema": schema,
                    "strict": schema.get("additionalProperties") is False,
                },
            }
        return params

    def _usage(self, raw: Any) -> Usage:
        if raw is None:
            return Usage(requests=1)
        details = getattr(raw, "prompt_tokens_details", None)
        cached = (getattr(details, "cached_tokens", None) or 0) if details is not None else 0
        usage = Usage(
            input_tokens=max(raw.prompt_tokens - cached, 0),
            output_tokens=raw.completion_tokens,
            cache_read_tokens=cached,
            requests=1,
        )
        return usage.model_copy(update={"cost_micros": self._prices.cost_micros(self._name, usage)})

    # --- errors --------------------------------------------------------------------------

    def _map_error(self, exc: openai.OpenAIError | httpx2.HTTPError) -> ModelAPIError:
        name = self._name
        if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
            return ProviderTimeout(f"{name}: timed out", model=name)
        if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
            return ProviderConnectionError(f"{name}: connection failed: {exc}", model=name)
        if isinstance(exc, openai.APIStatusError):
            return _status_error(exc, name)
        if isinstance(exc, openai.APIResponseValidationError):  # strict validation only
            return MalformedResponse.because(name, "not the documented schema")
        if isinstance(exc, openai.APIError):
            return _stream_error(exc, name)
        return ServerError(f"{name}: {exc}", model=name)


def _status_error(exc: openai.APIStatusError, name: str) -> ModelAPIError:
    status = exc.status_code
    detail = exc.message
    msg = f"{name}: error ({status}): {detail}"
    code = exc.code or ""
    if status == 429:
        return RateLimited(
            msg, model=name, status=status, retry_after=parse_retry_after(exc.response.headers)
        )
    if status in (401, 403):
        return AuthenticationFailed(msg, model=name, status=status)
    if status in (408, 504):
        return ProviderTimeout(msg, model=name, status=status)
    if status in (503, 529):
        return Overloaded(msg, model=name, status=status)
    if status >= 500:
        return ServerError(msg, model=name, status=status)
    if code == "context_length_exceeded" or is_context_too_long(detail) or status == 413:
        return ContextTooLong(msg, model=name, status=status)
    return BadRequest(msg, model=name, status=status)


def _stream_error(exc: openai.APIError, name: str) -> ModelAPIError:
    """An error object inside a 200 stream: go by its type and code."""
    kind = f"{exc.type or ''} {exc.code or ''}"
    msg = f"{name}: {exc.type or 'error'}: {exc.message}"
    if "rate_limit" in kind:
        return RateLimited(msg, model=name, status=None)
    if "overloaded" in kind:
        return Overloaded(msg, model=name)
    if "context_length" in kind or is_context_too_long(exc.message):
        return ContextTooLong(msg, model=name)
    if "invalid_request" in kind:
        return BadRequest(msg, model=name)
    return ServerError(msg, model=name)


# --- message translation -----------------------------------------------------------------


def _clean_name(name: str) -> str | None:
    cleaned = _NAME_CHARS.sub("_", name).strip("_")[:64]
    return cleaned or None


def _messages(m: Message) -> list[dict[str, Any]]:
    if m.role == "system":
        return [{"role": "system", "content": m.text}]
    if m.role == "assistant":
        out: dict[str, Any] = {"role": "assistant", "content": m.text or None}
        if m.tool_calls:
            out["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                }
                for c in m.tool_calls
            ]
        return [out]
    msgs: list[dict[str, Any]] = [
        {
            "role": "tool",
            "tool_call_id": r.tool_call_id,
            "content": f"Error: {r.content}" if r.is_error else r.content,
        }
        for r in m.tool_results
    ]
    content: list[dict[str, Any]] = []
    for p in m.parts:
        if isinstance(p, TextPart) and p.text:
            content.append({"type": "text", "text": p.text})
        elif isinstance(p, ImagePart):
            url = f"data:{p.media_type};base64,{p.data}" if p.data is not None else p.url or ""
            content.append({"type": "image_url", "image_url": {"url": url}})
    if content:
        user: dict[str, Any] = {"role": "user"}
        if all(c["type"] == "text" for c in content):
            user["content"] = "\n".join(c["text"] for c in content)
        else:
            user["content"] = content
        name = _clean_name(m.name) if m.name else None
        if name:
            user["name"] = name
        msgs.append(user)
    return msgs


def _tool_choice(choice: str) -> str | dict[str, Any]:
    if choice in ("auto", "required", "none"):
        return choice
    return {"type": "function", "function": {"name": choice}}


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
