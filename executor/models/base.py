"""The `Model` protocol every provider implements, its profile, and the
request/response shapes.

A model answers a :class:`ModelRequest` either in one piece (``generate``) or as
a stream of :data:`StreamEvent` ending in exactly one :class:`ResponseDone`
that carries the full response with its usage. A provider's stream turns every
event it reads off the wire into one stream event: output (:class:`TextDelta`,
:class:`ToolCallEvent`) or, when the event carries none yet (the message's start,
a piece of a tool call's arguments, usage), a :class:`KeepAlive`. Consumers
ignore ``KeepAlive``; failover reads it as a sign of life (its idle timeout).
Failover adds its own: :class:`StreamReset` (the text so far is void) and
:class:`Failover` (a candidate failed; the next one is asked now).

A model's :class:`ModelProfile` says what it can do (its context window, how
it gives structured output, whether it sees images). The batteries read it
through :func:`profile_of`, never from the model's name: a wrapper (failover,
a tier) is named ``tier:standard`` and passes its current candidate's profile
through.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from executor.messages import Message, ToolCallPart, Usage

__all__ = [
    "DEFAULT_PROFILE",
    "Attempt",
    "Failover",
    "KeepAlive",
    "Model",
    "ModelProfile",
    "ModelRequest",
    "ModelResponse",
    "ResponseDone",
    "StopReason",
    "StreamEvent",
    "StreamReset",
    "StructuredOutputMode",
    "TextDelta",
    "ToolCallEvent",
    "ToolDefinition",
    "profile_of",
]

# How a model is asked for structured output (see :mod:`executor.structured`):
# "tool": forced use of one tool whose arguments are the schema (Anthropic);
# "json_schema": the schema as the response format (OpenAI's ``json_schema``);
# "prompted": the schema in the prompt, the JSON read from the reply (any model).
StructuredOutputMode = Literal["tool", "json_schema", "prompted"]


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """What a model can do, as the batteries need to know it.

    ``context_window``: input tokens the model takes (compaction's trigger);
    ``structured_output``: how :mod:`executor.structured` asks it for a value;
    ``sees_images``: whether images in the conversation reach it usefully;
    ``silent_while_thinking``: it sends nothing at all while it reasons before its
    first token (OpenAI's reasoning models over Chat Completions), so a long first
    silence is its normal and failover gives it the attempt deadline, not the
    tier's first-token timeout.
    The defaults are the conservative ones of a model nobody described.
    """

    provider: str = "unknown"
    context_window: int = 32_000
    structured_output: StructuredOutputMode = "prompted"
    sees_images: bool = False
    silent_while_thinking: bool = False


DEFAULT_PROFILE = ModelProfile()


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One request. ``messages`` may start with a system message.

    ``tool_choice``: ``"auto"``, ``"required"``, ``"none"``, or a tool's name to
    force that tool (structured output on Anthropic).
    ``response_schema``: a JSON schema the reply must follow (structured output
    on OpenAI); ``response_schema_name`` names it.
    """

    messages: list[Message]
    tools: list[ToolDefinition] = field(default_factory=list)
    tool_choice: str = "auto"
    max_tokens: int = 4096
    temperature: float | None = None
    response_schema: dict[str, Any] | None = None
    response_schema_name: str = "output"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of one candidate model: what it was, how long it took, how it failed.

    A failed attempt the provider had begun to answer (it sent an event, and then
    failed or stalled: a mid-stream failover) is ``billed``: the provider charges its
    input. ``usage`` is what it cost when the provider reported that (None: the run
    charges the request's input at its price, as for a request never answered).
    """

    model: str
    latency_ms: float
    error: str | None = None  # None for the attempt that answered
    error_kind: str | None = None
    billed: bool = False
    usage: Usage | None = None


StopReason = Literal["end_turn", "tool_use", "max_tokens", "stop_sequence", "other"]


@dataclass(frozen=True, slots=True)
class ModelResponse:
    message: Message  # role "assistant"
    usage: Usage
    model: str  # "provider:model" that answered
    stop_reason: StopReason = "end_turn"
    attempts: tuple[Attempt, ...] = ()

    @property
    def text(self) -> str:
        return self.message.text

    @property
    def tool_calls(self) -> list[ToolCallPart]:
        return self.message.tool_calls


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallEvent:
    call: ToolCallPart


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """The provider sent something that is not output yet: it is alive."""


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The text streamed so far is void: a failover candidate starts over."""

    reason: str


@dataclass(frozen=True, slots=True)
class Failover:
    """A candidate failed and the next one is asked now (:class:`~executor.models.
    fallback.FallbackModel`): ``attempt`` is the failed one, as it will be in the
    response's ``attempts``. Sent before the next candidate is asked, so its consumer
    (the run loop) charges a ``billed`` attempt and covers it in the run's reservation
    first; a consumer that stops the stream here stops the failover."""

    attempt: Attempt


@dataclass(frozen=True, slots=True)
class ResponseDone:
    response: ModelResponse


StreamEvent = TextDelta | ToolCallEvent | KeepAlive | StreamReset | Failover | ResponseDone


@runtime_checkable
class Model(Protocol):
    """A chat model. ``name`` is ``"provider:model"`` (an opaque label: read
    capabilities from ``profile``)."""

    @property
    def name(self) -> str: ...

    @property
    def profile(self) -> ModelProfile: ...

    async def generate(self, request: ModelRequest) -> ModelResponse: ...

    def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]: ...


def profile_of(model: object) -> ModelProfile:
    """``model.profile``, or :data:`DEFAULT_PROFILE` for a model that has none.

    Why tolerate its absence: a host's own model written before profiles
    existed keeps working, with the conservative defaults.
    """
    profile = getattr(model, "profile", None)
    return profile if isinstance(profile, ModelProfile) else DEFAULT_PROFILE
