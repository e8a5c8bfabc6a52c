"""Provider-neutral conversation types.

Every provider file translates to and from these, and nothing else in the
kernel knows what a provider's wire format looks like.

A conversation is a list of :class:`Message`. Roles are ``system``, ``user`` and
``assistant``. Tool results travel in a ``user`` message as
:class:`ToolResultPart` (Anthropic's shape); the OpenAI adapter splits them into
its ``tool`` role messages.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ImagePart",
    "Message",
    "Part",
    "TextPart",
    "ToolCallPart",
    "ToolResultPart",
    "Usage",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class TextPart(_Frozen):
    type: Literal["text"] = "text"
    text: str


class ImagePart(_Frozen):
    """An image, by URL or inline base64 data."""

    type: Literal["image"] = "image"
    url: str | None = None
    data: str | None = None  # base64, without a data: prefix
    media_type: str = "image/png"


class ToolCallPart(_Frozen):
    type: Literal["tool_call"] = "tool_call"
    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolResultPart(_Frozen):
    type: Literal["tool_result"] = "tool_result"
    tool_call_id: str
    name: str
    content: str
    is_error: bool = False


Part = Annotated[TextPart | ImagePart | ToolCallPart | ToolResultPart, Field(discriminator="type")]


class Message(_Frozen):
    role: Literal["system", "user", "assistant"]
    parts: tuple[Part, ...] = ()
    # The author's display name in shared channels ("who said this").
    name: str | None = None

    # Why plain construction and not ``model_construct``: with pydantic 2.12+ the
    # validating constructor is the faster one (model_construct resolves every
    # default in Python); the parts are instances already and pass through unchanged.
    @classmethod
    def system(cls, text: str) -> Message:
        return cls(role="system", parts=(TextPart(text=text),))

    @classmethod
    def user(
        cls, text: str, *, name: str | None = None, images: tuple[ImagePart, ...] = ()
    ) -> Message:
        return cls(role="user", parts=(TextPart(text=text), *images), name=name)

    @classmethod
    def assistant(cls, text: str) -> Message:
        return cls(role="assistant", parts=(TextPart(text=text),))

    @property
    def text(self) -> str:
        """The concatenated text parts."""
        # Why ``type`` and not isinstance: a model class's isinstance goes through
        # ABCMeta in Python, and these are read on every step.
        parts = self.parts
        if len(parts) == 1:  # the common case: no join
            only = parts[0]
            return only.text if only.type == "text" else ""
        return "".join([p.text for p in parts if p.type == "text"])

    @property
    def tool_calls(self) -> list[ToolCallPart]:
        return [p for p in self.parts if p.type == "tool_call"]

    @property
    def tool_results(self) -> list[ToolResultPart]:
        return [p for p in self.parts if p.type == "tool_result"]


class Usage(_Frozen):
    """Tokens and cost of one or more model requests. Money in integer micro-dollars."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_micros: int = 0
    requests: int = 0

    def __add__(self, other: Usage) -> Usage:
        # Why the shortcuts: a run adds its first usage to zero, and a zero to what it
        # has, on every step; a frozen model can be shared as it is.
        if _is_zero(other):
            return self
        if _is_zero(self):
            return other
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            cost_micros=self.cost_micros + other.cost_micros,
            requests=self.requests + other.requests,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def cost_usd(self) -> float:
        return self.cost_micros / 1_000_000


def _is_zero(u: Usage) -> bool:
    return not (
        u.input_tokens
        or u.output_tokens
        or u.cache_read_tokens
        or u.cache_write_tokens
        or u.cost_micros
        or u.requests
    )
