"""Skills as Markdown files: YAML front matter for the fields, the body for the prompt.

::

    ---
    name: daily-digest
    description: Three bullets on what was posted in #reading.
    persona: researcher          # optional: the guild's default persona
    tier: fast                   # optional: the persona's tier
    tools: [web_fetch]           # optional: the run's tools (not the persona's)
    max_steps: 8                 # optional
    max_runtime_s: 120           # optional
    ---
    Summarise what was posted about {topic} as three bullets.

``/skill export`` writes this format and ``/skill import`` reads it. The file is
untrusted: the front matter is read by the personas' limited reader
(:func:`personas.markdown.parse_front_matter`: no YAML anchors or aliases, capped
size, depth and node count), and every error names the file and the field, never
the value found. Whether the persona, tier and tools exist is the store's to check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from personas.errors import PersonaFileError, UnsafeFile
from personas.markdown import excerpt_key, kind_of, parse_front_matter
from skills.errors import InvalidSkill, SkillFileError, UnsafeSkillFile
from skills.model import NAME_PATTERN, SkillInfo, SkillSpec, SkillVersionInfo, validate_spec

__all__ = ["KEYS", "parse_markdown", "render_markdown"]

KEYS = ("name", "description", "persona", "tier", "tools", "max_steps", "max_runtime_s")
_TEXT_KEYS = ("name", "description", "persona", "tier")
_TEXT_MAX = 200  # longer than any text field may be; checked before the value is used


def _error(source: str, problem: str, field: str = "") -> SkillFileError:
    err = SkillFileError(source, f"field `{field}`: {problem}" if field else problem)
    # Why set after: SkillFileError names the file; the cog also wants the field.
    err.field = field
    return err


def _text(meta: Mapping[str, Any], key: str, source: str) -> str | None:
    value = meta.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _error(source, f"must be text, got {kind_of(value)}", key)
    if len(value) > _TEXT_MAX:
        raise _error(source, f"at most {_TEXT_MAX} characters (got {len(value):,})", key)
    return value


def _tools(value: Any, source: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        items: list[Any] = value.replace(",", " ").split()
    elif isinstance(value, list):
        items = value
    else:
        raise _error(source, f"must be a list of tool names, got {kind_of(value)}", "tools")
    for item in items:
        if not isinstance(item, str):
            raise _error(source, f"each tool must be a name, got {kind_of(item)}", "tools")
    return tuple(items)


def _number(meta: Mapping[str, Any], key: str, source: str, *, whole: bool) -> Any:
    value = meta.get(key)
    if value is None:
        return None
    wanted = int if whole else int | float
    if isinstance(value, bool) or not isinstance(value, wanted):
        noun = "a whole number" if whole else "a number of seconds"
        raise _error(source, f"must be {noun}, got {kind_of(value)}", key)
    return value


def parse_markdown(text: str, *, source: str = "<skill>") -> tuple[str, SkillSpec]:
    """Read one skill file: its name and its spec, checked as far as no context is
    needed. Raises :class:`UnsafeSkillFile` past a limit, :class:`SkillFileError`
    otherwise (``field`` names the key at fault, when one is)."""
    try:
        meta, body = parse_front_matter(text, source=source, what="skill")
    except UnsafeFile as exc:
        raise UnsafeSkillFile(source, exc.problem, kind=exc.kind) from exc
    except PersonaFileError as exc:
        raise _error(source, exc.problem) from exc
    unknown = sorted(key for key in meta if key not in KEYS)
    if unknown:
        shown = ", ".join(excerpt_key(key) for key in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise _error(source, f"unknown key(s) {shown}{more}; allowed keys: {', '.join(KEYS)}")
    fields = {key: _text(meta, key, source) for key in _TEXT_KEYS}
    name = (fields["name"] or "").strip().lower()
    if not name:
        raise _error(source, "the front matter needs a name", "name")
    if not NAME_PATTERN.fullmatch(name):
        raise _error(
            source, "1-32 lowercase letters, digits and dashes, e.g. `daily-digest`", "name"
        )
    spec = SkillSpec(
        prompt=body,
        persona=fields["persona"],
        tier=fields["tier"],
        tools=_tools(meta.get("tools"), source),
        max_steps=_number(meta, "max_steps", source, whole=True),
        max_runtime_s=_number(meta, "max_runtime_s", source, whole=False),
        description=fields["description"] or "",
    )
    try:
        return name, validate_spec(spec)
    except InvalidSkill as exc:
        raise _error(source, exc.problem, exc.field) from exc


def render_markdown(info: SkillInfo, version: SkillVersionInfo) -> str:
    """The skill's ``version`` in the format :func:`parse_markdown` reads; reading it
    back gives the same name and spec. Unset optional fields are left out."""
    spec = version.spec
    meta: dict[str, Any] = {"name": info.name, "description": info.description}
    if spec.persona:
        meta["persona"] = spec.persona
    if spec.tier:
        meta["tier"] = spec.tier
    meta["tools"] = list(spec.tools)
    if spec.max_steps is not None:
        meta["max_steps"] = spec.max_steps
    if spec.max_runtime_s is not None:
        meta["max_runtime_s"] = spec.max_runtime_s
    head = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=None)
    return f"---\n{head}---\n{spec.prompt.strip()}\n"
