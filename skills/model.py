"""The skill noun: a saved agent task, its versions, its prompt template.

A skill is owned by a member, named (unique per guild: 1-32 lowercase letters,
digits and dashes), and made of versions: every edit makes a new version and any
version can be restored (by copying it into a new one). A version says what to
ask (a prompt template with named arguments, ``{topic}``), as whom (a persona),
on which tier, with which tools (capped at the owner's rights when saved and when
run) and within which bounds.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from personas.model import NAME_PATTERN as PERSONA_NAME_PATTERN
from skills.errors import ArgumentError, InvalidSkill

__all__ = [
    "DESCRIPTION_MAX",
    "NAME_PATTERN",
    "PROMPT_MAX",
    "TOOLS_MAX",
    "SkillDeleted",
    "SkillInfo",
    "SkillSpec",
    "SkillVersionInfo",
    "check_name",
    "parse_arguments",
    "render_prompt",
    "template_arguments",
    "validate_spec",
]

NAME_PATTERN = re.compile(r"^[a-z0-9-]{1,32}$")
DESCRIPTION_MAX = 100
PROMPT_MAX = 4000
ARGUMENT_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,31}$")
ARGUMENT_VALUE_MAX = 1000
MAX_ARGUMENTS = 10
MAX_STEPS_RANGE = (1, 50)
MAX_RUNTIME_RANGE = (5.0, 1800.0)
TOOLS_MAX = 16
TIER_MAX = 32
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # the providers' rule for tool names


@dataclass(frozen=True, slots=True)
class SkillSpec:
    """What one version of a skill says."""

    prompt: str
    persona: str | None = None  # None: the guild's default persona
    tier: str | None = None  # None: the persona's tier
    # The run's tools, in place of the persona's (not added to them): capped at the
    # saver's rights when saved and at the owner's when run (skills.runnable).
    tools: tuple[str, ...] = ()
    max_steps: int | None = None
    max_runtime_s: float | None = None
    description: str = ""

    @property
    def arguments(self) -> tuple[str, ...]:
        return template_arguments(self.prompt)


@dataclass(frozen=True, slots=True)
class SkillInfo:
    id: int
    guild_id: str
    name: str
    owner_id: str
    description: str = ""
    current_version: int = 1
    enabled: bool = True
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SkillVersionInfo:
    skill_id: int
    version: int
    spec: SkillSpec
    created_by: str = ""
    created_at: datetime | None = None
    note: str = ""


def check_name(name: str) -> str:
    """The skill's name, normalised (trimmed, lowercase), or :class:`InvalidSkill`."""
    clean = name.strip().lower()
    if not NAME_PATTERN.fullmatch(clean):
        raise InvalidSkill("name", "1-32 lowercase letters, digits and dashes, e.g. `daily-digest`")
    return clean


def template_arguments(prompt: str) -> tuple[str, ...]:
    """The named arguments of a prompt template, in order of first use.

    ``{topic}`` is an argument; ``{{`` and ``}}`` are literal braces. Anything else in
    braces (``{0}``, ``{a.b}``, ``{x!r}``, an unclosed ``{``) is refused.
    """
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(prompt))
    except ValueError as exc:
        raise InvalidSkill("prompt", f"{exc}; write {{{{ and }}}} for literal braces") from exc
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion or not ARGUMENT_NAME.fullmatch(name):
            raise InvalidSkill(
                "prompt",
                "arguments are written {name} (lowercase letters, digits and _); "
                "write {{ and }} for literal braces",
            )
        if name not in names:
            names.append(name)
    if len(names) > MAX_ARGUMENTS:
        raise InvalidSkill("prompt", f"at most {MAX_ARGUMENTS} arguments")
    return tuple(names)


def render_prompt(prompt: str, arguments: Mapping[str, str]) -> str:
    """The prompt with its arguments filled in; every argument must be given, no other."""
    wanted = template_arguments(prompt)
    missing = [n for n in wanted if not arguments.get(n, "").strip()]
    if missing:
        example = "; ".join(f"{n}=..." for n in missing)
        raise ArgumentError(
            f"missing argument{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)}: add args:`{example}`"
        )
    unknown = [n for n in arguments if n not in wanted]
    if unknown:
        known = ", ".join(wanted) or "none"
        raise ArgumentError(f"unknown argument(s) {', '.join(unknown)}; this skill takes: {known}")
    return prompt.format(**{n: arguments[n].strip() for n in wanted})


def parse_arguments(text: str | None) -> dict[str, str]:
    """``"topic=rust; days=7"`` -> ``{"topic": "rust", "days": "7"}``.

    Pairs are separated by ``;`` and split at the first ``=``; names are lowercased.
    """
    out: dict[str, str] = {}
    if not text or not text.strip():
        return out
    for raw in text.split(";"):
        pair = raw.strip()
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        key = key.strip().lower()
        if not sep or not ARGUMENT_NAME.fullmatch(key):
            shown = pair if len(pair) <= 40 else pair[:39] + "…"
            raise ArgumentError(f"{shown!r} is not key=value; write args like `topic=rust; days=7`")
        if key in out:
            raise ArgumentError(f"{key} is given twice")
        if len(value) > ARGUMENT_VALUE_MAX:
            raise ArgumentError(f"{key}: at most {ARGUMENT_VALUE_MAX} characters")
        out[key] = value.strip()
    if len(out) > MAX_ARGUMENTS:
        raise ArgumentError(f"at most {MAX_ARGUMENTS} arguments")
    return out


@dataclass(frozen=True, slots=True)
class SkillDeleted:
    """What :meth:`skills.store.SkillStore.delete` removed, in one transaction."""

    skill: SkillInfo
    versions: int = 0
    schedules: int = 0


def validate_spec(spec: SkillSpec) -> SkillSpec:
    """Check the rules that need no context; return the spec with its text tidied.

    Whether the tier, the persona and the tools exist (and the tools may be granted)
    depends on the deployment: the store checks those. Messages name the field and
    the rule, never the value.
    """
    prompt = spec.prompt.strip() if isinstance(spec.prompt, str) else ""
    if not prompt:
        raise InvalidSkill("prompt", "the prompt may not be empty")
    if len(prompt) > PROMPT_MAX:
        raise InvalidSkill("prompt", f"at most {PROMPT_MAX:,} characters (got {len(prompt):,})")
    template_arguments(prompt)
    description = " ".join((spec.description or "").split())
    if len(description) > DESCRIPTION_MAX:
        raise InvalidSkill(
            "description", f"at most {DESCRIPTION_MAX} characters (got {len(description)})"
        )
    persona = (spec.persona or "").strip().lower() or None
    if persona is not None and not PERSONA_NAME_PATTERN.fullmatch(persona):
        raise InvalidSkill(
            "persona", "not a persona name (2-32 lowercase letters, digits and hyphens)"
        )
    tier = (spec.tier or "").strip().lower() or None
    if tier is not None and len(tier) > TIER_MAX:
        raise InvalidSkill("tier", f"give a tier of 1-{TIER_MAX} characters")
    tools: dict[str, None] = {}
    for item in spec.tools:
        if not isinstance(item, str) or not TOOL_NAME.fullmatch(item.strip()):
            raise InvalidSkill(
                "tools", "each tool is a name of 1-64 letters, digits, _ and -, e.g. `web_fetch`"
            )
        tools.setdefault(item.strip(), None)
    if len(tools) > TOOLS_MAX:
        raise InvalidSkill("tools", f"at most {TOOLS_MAX} tools (got {len(tools)})")
    steps = spec.max_steps
    if steps is not None:
        low, high = MAX_STEPS_RANGE
        if isinstance(steps, bool) or not isinstance(steps, int) or not low <= steps <= high:
            raise InvalidSkill("max_steps", f"a whole number from {low} to {high}")
    runtime = spec.max_runtime_s
    if runtime is not None:
        lo, hi = MAX_RUNTIME_RANGE
        if (
            isinstance(runtime, bool)
            or not isinstance(runtime, int | float)
            or not math.isfinite(runtime)
            or not lo <= runtime <= hi
        ):
            raise InvalidSkill("max_runtime_s", f"a number of seconds from {lo:g} to {hi:g}")
        runtime = float(runtime)
    return replace(
        spec,
        prompt=prompt,
        description=description,
        persona=persona,
        tier=tier,
        tools=tuple(tools),
        max_steps=steps,
        max_runtime_s=runtime,
    )
