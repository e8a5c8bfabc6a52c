"""The `Model` protocol every provider implements, and the request/response shapes.

A model answers a :class:`ModelRequest` either in one piece (``generate``) or as
a stream of :data:`StreamEvent` ending in exactly one :class:`ResponseDone`
that carries the full response with its usage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from executor.messages import Message, ToolCallPart, Usage

__all__ = [
    "Attempt",
    "Model",
    "ModelRequest",
    "ModelResponse",
    "ResponseDone",
    "StopReason",
    "StreamEvent",
    "StreamReset",
    "TextDelta",
    "ToolCallEvent",
    "ToolDefinition",
]


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
    """One try of one candidate model: what it was, how long it took, how it failed."""

    model: str
    latency_ms: float
    error: str | None = None  # None for the attempt that answered
    error_kind: str | None = None


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
class StreamReset:
    """The text streamed so far is void: a failover candidate starts over."""

    reason: str


@dataclass(frozen=True, slots=True)
class ResponseDone:
    response: ModelResponse


StreamEvent = TextDelta | ToolCallEvent | StreamReset | ResponseDone


@runtime_checkable
class Model(Protocol):
    """A chat model. ``name`` is ``"provider:model"``."""

    @property
    def name(self) -> str: ...

    async def generate(self, request: ModelRequest) -> ModelResponse: ...

    def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]: ...
