"""Personas as Markdown files: YAML front matter for the fields, the body for the prompt.

::

    ---
    name: researcher
    description: Finds sources on the web and cites them.
    tier: standard
    tools: [web_fetch, current_time]
    avatar_url: https://example.org/researcher.png   # optional
    temperature: 0.3                                 # optional
    ---
    You are a careful researcher ...

Built-ins (``personas/builtin/*.md``), ``/persona export`` and ``/persona import``
all use this one format. A malformed file raises :class:`PersonaFileError` naming
the file and the problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from personas.errors import InvalidPersona, PersonaFileError
from personas.model import Persona, parse_tools, validate_fields

__all__ = ["BUILTIN_DIR", "load_builtins", "parse_markdown", "render_markdown"]

BUILTIN_DIR = Path(__file__).parent / "builtin"

_KEYS = ("name", "description", "tier", "tools", "avatar_url", "temperature")
_REQUIRED = ("name",)


def _split_front_matter(text: str, source: str) -> tuple[str, str]:
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    lines = text.split("\n")
    if not lines or lines[0].strip() != "---":
        raise PersonaFileError(source, "must start with a '---' line opening the front matter")
    for i in range(1, len(lines)):
        if lines[i].strip() == "---":
            return "\n".join(lines[1:i]), "\n".join(lines[i + 1 :])
    raise PersonaFileError(source, "the front matter is not closed by a '---' line")


def parse_markdown(text: str, *, source: str = "<persona>") -> Persona:
    """Read one persona file. The fields are checked (not the tier or the tools:
    those depend on the deployment, and the store checks them)."""
    head, body = _split_front_matter(text, source)
    try:
        meta: Any = yaml.safe_load(head) if head.strip() else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (front matter line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PersonaFileError(source, f"invalid YAML{where}: {problem}") from exc
    if not isinstance(meta, Mapping):
        raise PersonaFileError(source, "the front matter must be a mapping of key: value lines")
    unknown = sorted(str(k) for k in meta if k not in _KEYS)
    if unknown:
        raise PersonaFileError(
            source, f"unknown key(s) {', '.join(unknown)}; allowed keys: {', '.join(_KEYS)}"
        )
    for key in _REQUIRED:
        if meta.get(key) in (None, ""):
            raise PersonaFileError(source, f"the front matter needs a {key!r}")
    for key in ("name", "description", "tier", "avatar_url"):
        value = meta.get(key)
        if value is not None and not isinstance(value, str):
            raise PersonaFileError(source, f"must be text, got {type(value).__name__}", field=key)
    tools = meta.get("tools")
    if tools is not None and not isinstance(tools, str | list):
        raise PersonaFileError(source, "must be a list of tool names", field="tools")
    temperature = meta.get("temperature")
    try:
        persona = validate_fields(
            Persona(
                name=meta["name"],
                description=meta.get("description") or "",
                tier=meta.get("tier") or "standard",
                tools=parse_tools(tools),
                avatar_url=meta.get("avatar_url"),
                temperature=temperature,
                system_prompt=body,
                source=source,
            )
        )
    except PersonaFileError:
        raise
    except InvalidPersona as exc:
        raise PersonaFileError(source, exc.problem, field=exc.field) from exc
    return persona


def render_markdown(persona: Persona) -> str:
    """The persona in the format :func:`parse_markdown` reads (a round trip is exact)."""
    meta: dict[str, Any] = {
        "name": persona.name,
        "description": persona.description,
        "tier": persona.tier,
        "tools": list(persona.tools),
    }
    if persona.avatar_url:
        meta["avatar_url"] = persona.avatar_url
    if persona.temperature is not None:
        meta["temperature"] = persona.temperature
    head = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=None)
    return f"---\n{head}---\n{persona.system_prompt.strip()}\n"


def load_builtins(directory: Path = BUILTIN_DIR) -> dict[str, Persona]:
    """Every ``*.md`` in ``directory``, by name. Two files with one name are an error."""
    found: dict[str, Persona] = {}
    for path in sorted(directory.glob("*.md")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PersonaFileError(str(path), f"cannot be read: {exc}") from exc
        persona = parse_markdown(text, source=str(path))
        if persona.name in found:
            raise PersonaFileError(
                str(path), f"the name {persona.name!r} is also used by {found[persona.name].source}"
            )
        found[persona.name] = replace(persona, builtin=True)
    return found
