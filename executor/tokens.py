"""The one token estimate: budget reservations and compaction both count with it.

About four characters a token, plus a few tokens a message; an image counts as
6,000 characters (1,500 tokens), near the most either provider charges for one
(Anthropic: width x height / 750, about 1,600 for a full-size image; OpenAI's
high detail: 765 for 1024 x 1024). Compaction calibrates it per model against
the input tokens providers report (:class:`~executor.compaction.TokenEstimator`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from executor.messages import Message

__all__ = [
    "CHARS_PER_TOKEN",
    "IMAGE_CHARS",
    "MESSAGE_OVERHEAD_TOKENS",
    "estimate_message_tokens",
    "estimate_tokens",
]

CHARS_PER_TOKEN = 4
IMAGE_CHARS = 6000
MESSAGE_OVERHEAD_TOKENS = 4

# ``json.dumps(x, default=str)`` without building an encoder on every call.
_JSON = json.JSONEncoder(default=str)


def _chars(message: Message) -> int:
    chars = 0
    for p in message.parts:
        if p.type == "text":
            chars += len(p.text)
        elif p.type == "tool_result":
            chars += len(p.content) + 20
        elif p.type == "tool_call":
            chars += 40 + len(p.name) + len(_JSON.encode(p.arguments))
        else:
            chars += IMAGE_CHARS
    return chars


def estimate_message_tokens(message: Message) -> float:
    """Uncalibrated tokens of one message (a float: compaction sums and scales them)."""
    return _chars(message) / CHARS_PER_TOKEN + MESSAGE_OVERHEAD_TOKENS


def estimate_tokens(messages: Sequence[Message]) -> int:
    """Uncalibrated tokens of a conversation, rounded up."""
    return int(sum(estimate_message_tokens(m) for m in messages)) + 1
