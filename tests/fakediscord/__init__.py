"""A wire-level fake Discord for tests: the real discord.py client talks to it.

See README.md in this directory; fixtures live in ``tests.fakediscord.plugin``.
"""

from tests.fakediscord.server import (
    Call,
    FakeDiscord,
    FakeFile,
    FakeGuild,
    FakeInteraction,
    Fault,
    RateLimits,
    shard_of,
)

__all__ = [
    "Call",
    "FakeDiscord",
    "FakeFile",
    "FakeGuild",
    "FakeInteraction",
    "Fault",
    "RateLimits",
    "shard_of",
]
