"""Structured output: ask a model for a value of a pydantic type, get it validated.

::

    verdict = await generate_structured("fast", messages, Judgement, resolver=tiers)

How the model is asked is its profile's ``structured_output`` (for a tier, the
candidate that will answer):

- ``"tool"`` (Anthropic): the model is *forced* to call one tool whose
  arguments are the schema;
- ``"json_schema"`` (OpenAI, Ollama): the schema is the response format
  (``ModelRequest.response_schema``) and the model answers in JSON text;
- ``"prompted"`` (a model nobody described): the schema goes in the system
  prompt and the JSON is read from the reply.

A forced-tool answer is accepted from any model, and JSON is found inside code
fences.

A reply that fails validation goes back to the model with the validation error,
up to ``max_retries`` times; then :class:`~executor.errors.StructuredOutputError`.
Provider failures (:class:`~executor.errors.ModelAPIError`) propagate unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from executor.errors import ConfigError, StructuredOutputError
from executor.messages import Message, TextPart, ToolResultPart, Usage
from executor.models.base import (
    Attempt,
    Model,
    ModelRequest,
    ModelResponse,
    StructuredOutputMode,
    ToolDefinition,
    profile_of,
)

__all__ = [
    "Strategy",
    "StructuredResult",
    "TierResolver",
    "generate_structured",
    "generate_structured_result",
    "resolve_model",
    "strategy_for",
]

T = TypeVar("T", bound=BaseModel)

Strategy = StructuredOutputMode


class TierResolver(Protocol):
    """Anything with ``resolve(tier) -> Model`` (the kernel's ``ModelResolver`` fits)."""

    def resolve(self, tier: str) -> Model: ...


def resolve_model(model_or_tier: Model | str, resolver: TierResolver | None) -> Model:
    """A model as given, or a tier name resolved through ``resolver``."""
    if not isinstance(model_or_tier, str):
        return model_or_tier
    if resolver is None:
        raise ConfigError(
            f"tier {model_or_tier!r} given without a resolver to turn it into a model"
        )
    return resolver.resolve(model_or_tier)


def strategy_for(model: Model) -> Strategy:
    """How ``model`` wants to be asked: its profile's ``structured_output``."""
    return profile_of(model).structured_output


@dataclass(slots=True)
class StructuredResult(Generic[T]):
    """The value, with what it cost to get it."""

    value: T
    usage: Usage
    model: str
    tries: int
    attempts: list[Attempt] = field(default_factory=list)


def _schema_name(schema: type[BaseModel]) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "_", schema.__name__)[:64]
    return name or "output"


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def _json_from_text(text: str) -> Any:
    """The JSON value in ``text``: the whole text, a fenced block, or the outermost object."""
    candidates = [text.strip()]
    candidates += [m.strip() for m in _FENCE.findall(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    last: json.JSONDecodeError | None = None
    for c in candidates:
        if not c:
            continue
        try:
            return json.loads(c)
        except json.JSONDecodeError as exc:
            last = exc
    raise ValueError(
        f"the reply is not JSON ({last.msg if last else 'empty reply'}); "
        "answer with one JSON object only"
    )


def _validation_text(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors()[:10]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"- {loc}: {err['msg']}")
    return "\n".join(lines)


async def generate_structured_result(
    model_or_tier: Model | str,
    messages: Sequence[Message],
    schema: type[T],
    *,
    resolver: TierResolver | None = None,
    strategy: Strategy | None = None,
    max_retries: int = 2,
    max_tokens: int = 1024,
    temperature: float | None = None,
    description: str | None = None,
) -> StructuredResult[T]:
    """Like :func:`generate_structured`, with the usage and tries of getting it."""
    model = resolve_model(model_or_tier, resolver)
    how = strategy or strategy_for(model)
    name = _schema_name(schema)
    json_schema = schema.model_json_schema()
    tool = ToolDefinition(
        name=name,
        description=description
        or (schema.__doc__ or "").strip()
        or f"Give the answer as a {schema.__name__}.",
        parameters=json_schema,
    )
    history = list(messages)
    if how == "prompted":
        history = _with_schema_prompt(history, schema.__name__, json_schema)
    usage = Usage()
    attempts: list[Attempt] = []
    last_error = ""
    tries = 0
    for tries in range(1, max_retries + 2):
        if how == "tool":
            request = ModelRequest(
                messages=list(history),
                tools=[tool],
                tool_choice=name,
                max_tokens=max_tokens,
                temperature=temperature,
            )
        elif how == "json_schema":
            request = ModelRequest(
                messages=list(history),
                max_tokens=max_tokens,
                temperature=temperature,
                response_schema=json_schema,
                response_schema_name=name,
            )
        else:
            request = ModelRequest(
                messages=list(history), max_tokens=max_tokens, temperature=temperature
            )
        response = await model.generate(request)
        usage = usage + response.usage
        attempts.extend(response.attempts)
        value, error, feedback = _parse(response, schema, name)
        if value is not None:
            return StructuredResult(
                value=value, usage=usage, model=response.model, tries=tries, attempts=attempts
            )
        last_error = error
        history.append(response.message)
        if feedback is not None:
            history.append(feedback)
    raise StructuredOutputError(
        f"{model.name} gave no valid {schema.__name__} in {tries} tries: {last_error}",
        attempts=tries,
        last_error=last_error,
    )


def _with_schema_prompt(
    messages: list[Message], type_name: str, json_schema: dict[str, Any]
) -> list[Message]:
    """``messages`` with the schema added to the system prompt (one is made if none)."""
    instruction = (
        f"Answer with one JSON object only, a {type_name} matching this JSON schema, "
        f"and nothing else:\n{json.dumps(json_schema, ensure_ascii=False)}"
    )
    if messages and messages[0].role == "system":
        # Why merged: some local servers take one system message, and only first.
        first = Message.system(f"{messages[0].text}\n\n{instruction}")
        return [first, *messages[1:]]
    return [Message.system(instruction), *messages]


def _parse(
    response: ModelResponse, schema: type[T], name: str
) -> tuple[T | None, str, Message | None]:
    """The value, or the error and the message that tells the model about it."""
    calls = response.tool_calls
    call = next((c for c in calls if c.name == name), calls[0] if calls else None)
    if call is not None:
        try:
            return schema.model_validate(call.arguments), "", None
        except ValidationError as exc:
            error = f"the arguments do not validate:\n{_validation_text(exc)}"
        # Why a tool result: a provider rejects a tool call left without its result.
        parts: list[Any] = [
            ToolResultPart(tool_call_id=c.id, name=c.name, content=error, is_error=True)
            for c in calls
        ]
        parts.append(TextPart(text=f"Call {name} again with corrected arguments."))
        return None, error, Message(role="user", parts=tuple(parts))
    try:
        value = schema.model_validate(_json_from_text(response.text))
        return value, "", None
    except ValueError as exc:  # ValidationError is a ValueError
        error = (
            f"the reply does not validate:\n{_validation_text(exc)}"
            if isinstance(exc, ValidationError)
            else str(exc)
        )
    return (
        None,
        error,
        Message.user(
            f"Your reply was not valid: {error}\nReply again with only a JSON object "
            f"matching the {schema.__name__} schema."
        ),
    )


async def generate_structured(
    model_or_tier: Model | str,
    messages: Sequence[Message],
    schema: type[T],
    *,
    resolver: TierResolver | None = None,
    strategy: Strategy | None = None,
    max_retries: int = 2,
    max_tokens: int = 1024,
    temperature: float | None = None,
    description: str | None = None,
) -> T:
    """A validated ``schema`` instance from ``model_or_tier`` (a model or a tier name).

    Raises :class:`~executor.errors.StructuredOutputError` after ``max_retries``
    corrections fail, :class:`~executor.errors.ModelAPIError` when the provider does.
    """
    result = await generate_structured_result(
        model_or_tier,
        messages,
        schema,
        resolver=resolver,
        strategy=strategy,
        max_retries=max_retries,
        max_tokens=max_tokens,
        temperature=temperature,
        description=description,
    )
    return result.value
