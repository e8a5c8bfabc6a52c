"""The ``Persona`` domain object and the rules its fields follow.

Limits follow Discord, where personas are written (a modal) and shown (embeds,
autocomplete choices):

- ``name``: 2-32 characters, lowercase letters, digits and hyphens, starting with a
  letter or digit (it is typed in slash commands and used as a webhook name).
- ``description``: at most 100 characters (an autocomplete choice's name is capped
  at 100; the description is a one-liner shown beside the name).
- ``system_prompt``: 1-4,000 characters (a modal text input holds at most 4,000).
- ``tier``: one of the deployment's known tiers (checked by the store).
- ``tools``: at most 16, each known, enabled, and usable by the creator (checked by
  the store).
- ``avatar_url``: an http(s) URL of at most 512 characters, or nothing.
- ``temperature``: 0.0-2.0, or nothing (the model's default).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime

from personas.errors import InvalidPersona

__all__ = [
    "DESCRIPTION_MAX",
    "NAME_PATTERN",
    "SYSTEM_PROMPT_MAX",
    "TOOLS_MAX",
    "Persona",
    "normalise_name",
    "parse_tools",
    "validate_fields",
]

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{1,31}$")
DESCRIPTION_MAX = 100
SYSTEM_PROMPT_MAX = 4000
TOOLS_MAX = 16
AVATAR_URL_MAX = 512
TIER_MAX = 32
TEMPERATURE_RANGE = (0.0, 2.0)


@dataclass(frozen=True, slots=True)
class Persona:
    """A persona as the rest of the program sees it: built-in or stored, the same shape."""

    name: str
    system_prompt: str
    description: str = ""
    tier: str = "standard"
    tools: tuple[str, ...] = ()
    avatar_url: str | None = None
    temperature: float | None = None
    # Where it lives: "" for a built-in or a deployment-wide persona, else the guild id.
    guild_id: str = ""
    created_by: str = ""  # user id; "" for a built-in or an anonymised creator
    builtin: bool = False
    # Set on a stored persona whose name is also a built-in's (it overrides it).
    overrides_builtin: bool = False
    source: str = ""  # the file a built-in was read from, for error messages
    created_at: datetime | None = None
    updated_at: datetime | None = None
    id: int | None = field(default=None, compare=False)

    @property
    def origin(self) -> str:
        """A short word for the user: built-in, override (of a built-in) or custom."""
        if self.builtin:
            return "built-in"
        return "override" if self.overrides_builtin else "custom"


def normalise_name(name: str) -> str:
    """Names are case-insensitive: compare and store them lowercased and stripped."""
    return name.strip().lower()


def parse_tools(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"web_fetch, calculator"`` or a list -> a de-duplicated tuple, order kept."""
    if value is None:
        return ()
    items = re.split(r"[,\s]+", value) if isinstance(value, str) else list(value)
    seen: dict[str, None] = {}
    for item in items:
        if not isinstance(item, str):
            raise InvalidPersona("tools", f"each tool must be a name, got {item!r}")
        name = item.strip()
        if name:
            seen.setdefault(name, None)
    return tuple(seen)


def validate_fields(p: Persona) -> Persona:
    """Check the rules that need no context; return the persona with its text tidied.

    Tier and tool membership need the deployment's tiers and tool registry: the
    store checks those.
    """
    name = normalise_name(p.name)
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidPersona(
            "name",
            f"{p.name!r} is not a valid name: use 2-32 lowercase letters, digits and "
            "hyphens, starting with a letter or digit",
        )
    description = " ".join(p.description.split())
    if len(description) > DESCRIPTION_MAX:
        raise InvalidPersona(
            "description", f"at most {DESCRIPTION_MAX} characters (got {len(description)})"
        )
    prompt = p.system_prompt.strip()
    if not prompt:
        raise InvalidPersona("system_prompt", "the system prompt may not be empty")
    if len(prompt) > SYSTEM_PROMPT_MAX:
        raise InvalidPersona(
            "system_prompt", f"at most {SYSTEM_PROMPT_MAX} characters (got {len(prompt)})"
        )
    tier = p.tier.strip().lower()
    if not tier or len(tier) > TIER_MAX:
        raise InvalidPersona("tier", f"give a tier of 1-{TIER_MAX} characters")
    tools = parse_tools(p.tools)
    if len(tools) > TOOLS_MAX:
        raise InvalidPersona("tools", f"at most {TOOLS_MAX} tools (got {len(tools)})")
    avatar = (p.avatar_url or "").strip() or None
    if avatar is not None:
        if not re.match(r"^https?://\S+$", avatar):
            raise InvalidPersona("avatar_url", f"{avatar!r} is not an http(s) URL")
        if len(avatar) > AVATAR_URL_MAX:
            raise InvalidPersona("avatar_url", f"at most {AVATAR_URL_MAX} characters")
    temperature = p.temperature
    if temperature is not None:
        low, high = TEMPERATURE_RANGE
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise InvalidPersona("temperature", f"must be a number, got {temperature!r}")
        if not math.isfinite(temperature) or not low <= temperature <= high:
            raise InvalidPersona("temperature", f"must be between {low:g} and {high:g}")
        temperature = float(temperature)
    return replace(
        p,
        name=name,
        description=description,
        system_prompt=prompt,
        tier=tier,
        tools=tools,
        avatar_url=avatar,
        temperature=temperature,
    )
