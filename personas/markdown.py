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

Built-ins (``personas/builtin/*.md``), ``/persona import`` and ``/persona export``
all use this one format. A malformed file raises :class:`PersonaFileError` naming
the file and the problem.

Uploaded files are untrusted, so the front matter is read with limits
(:func:`parse_front_matter`, :func:`load_untrusted_yaml`; skill files use them too):
at most :data:`MAX_FILE_BYTES`, :data:`MAX_YAML_DEPTH` levels of nesting and
:data:`MAX_YAML_NODES` values, and no YAML anchors or aliases. Anything past a
limit raises :class:`UnsafeFile` before a value is built. Why: ``yaml.safe_load``
expands aliases without bound (399 bytes took the bot to 2.4 GB), and its
composer recurses once per level (5,000 ``[`` raised RecursionError). Error
messages name the field and the type expected, never the value found.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent, Event
from yaml.nodes import Node

from personas.errors import InvalidPersona, PersonaFileError, UnsafeFile, UnsafeKind
from personas.model import (
    AVATAR_URL_MAX,
    TEMPERATURE_RANGE,
    Persona,
    parse_tools,
    validate_fields,
)

__all__ = [
    "BUILTIN_DIR",
    "MAX_FILE_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "excerpt_key",
    "kind_of",
    "load_builtins",
    "load_untrusted_yaml",
    "parse_front_matter",
    "parse_markdown",
    "render_markdown",
]

BUILTIN_DIR = Path(__file__).parent / "builtin"

# Why these numbers: a persona's front matter is ~6 keys and at most 16 tools (~30
# values, 3 levels) and its prompt at most 4,000 characters (16 KB of UTF-8); the
# limits leave room for skill files. The worst file within them costs ~0.15 s and
# under 2 MB to refuse (PyYAML's scanner looks up to 1,024 characters ahead).
MAX_FILE_BYTES = 64 * 1024
MAX_YAML_DEPTH = 20
MAX_YAML_NODES = 1_000

_KEYS = ("name", "description", "tier", "tools", "avatar_url", "temperature")
_REQUIRED = ("name",)
_NAME_MAX = 32  # personas.model.NAME_PATTERN's upper bound
_TOOL_NAME_MAX = 64  # the providers' rule, as executor.tools.registry checks it
_EXCERPT_MAX = 40


# --- reading untrusted YAML ----------------------------------------------------------


class _Refused(Exception):
    """Raised inside the loader; translated to :class:`UnsafeFile`, which needs the source."""

    def __init__(self, kind: UnsafeKind, line: int | None) -> None:
        super().__init__(kind)
        self.kind: UnsafeKind = kind
        self.line = line


class _LimitedLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses anchors and aliases and caps depth and node count.

    The checks run in the composer, event by event, before a node is built: an alias
    is refused before it is followed, so nothing is ever expanded.
    """

    def __init__(self, text: str, *, max_depth: int, max_nodes: int) -> None:
        super().__init__(text)
        self._max_depth = max_depth
        self._max_nodes = max_nodes
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event: Event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped stub
        line = event.start_mark.line + 1 if event.start_mark is not None else None
        if isinstance(event, AliasEvent):
            raise _Refused("alias", line)
        if getattr(event, "anchor", None) is not None:
            raise _Refused("anchor", line)
        self._nodes += 1
        if self._nodes > self._max_nodes:
            raise _Refused("nodes", line)
        self._depth += 1
        try:
            if self._depth > self._max_depth:
                raise _Refused("depth", line)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def excerpt_key(text: str, limit: int = _EXCERPT_MAX) -> str:
    """A short, printable excerpt of a key from an untrusted file, for a message."""
    """At most ``limit`` characters of ``text``, control characters replaced, for a message."""
    short = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    return short if len(short) <= limit else short[: limit - 1] + "…"


def _refusal(kind: UnsafeKind, what: str, max_depth: int, max_nodes: int) -> str:
    if kind in ("anchor", "alias"):
        return f"YAML anchors and aliases are not allowed in {what} files"
    if kind == "depth":
        return f"the front matter is nested more than {max_depth} levels deep"
    if kind == "nodes":
        return f"the front matter holds more than {max_nodes:,} values"
    return f"the {what} file is too large"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" (front matter line {mark.line + 1})" if mark is not None else ""
    # Why an excerpt: a problem can quote the input (an unknown tag, an anchor's name).
    problem = excerpt_key(getattr(exc, "problem", None) or type(exc).__name__, 120)
    return f"invalid YAML{where}: {problem}"


def load_untrusted_yaml(
    text: str,
    *,
    source: str = "<yaml>",
    what: str = "persona",
    max_depth: int = MAX_YAML_DEPTH,
    max_nodes: int = MAX_YAML_NODES,
) -> Any:
    """One YAML document from an untrusted source, as ``yaml.safe_load`` would read it.

    Refuses (:class:`UnsafeFile`) anchors and aliases, more than ``max_depth`` levels
    of nesting and more than ``max_nodes`` values; malformed YAML raises
    :class:`PersonaFileError`. ``what`` names the kind of file in messages
    ("persona", "skill"). The caller caps the size of ``text``.
    """
    loader = _LimitedLoader(text, max_depth=max_depth, max_nodes=max_nodes)
    try:
        try:
            node = loader.get_single_node()
        except _Refused as exc:
            where = f" (front matter line {exc.line})" if exc.line is not None else ""
            problem = _refusal(exc.kind, what, max_depth, max_nodes) + where
            raise UnsafeFile(source, problem, kind=exc.kind) from None
        except RecursionError:
            # Why: only reached if max_depth is set beyond what the stack holds.
            problem = _refusal("depth", what, max_depth, max_nodes)
            raise UnsafeFile(source, problem, kind="depth") from None
        except yaml.YAMLError as exc:
            raise PersonaFileError(source, _yaml_problem(exc)) from exc
        if node is None:
            return None
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as exc:
            raise PersonaFileError(source, _yaml_problem(exc)) from exc
        except RecursionError:
            problem = _refusal("depth", what, max_depth, max_nodes)
            raise UnsafeFile(source, problem, kind="depth") from None
        except (ValueError, OverflowError, KeyError, AttributeError, TypeError) as exc:
            # Why: PyYAML's constructors raise these on values they cannot convert
            # (2001-13-01, a 5,000-digit integer, `!!bool maybe`); their messages
            # quote the value, so the member gets a sentence and the log the detail.
            raise PersonaFileError(
                source,
                "invalid YAML: a value cannot be read (an impossible date, a number "
                "with too many digits, or a value that does not fit its !!tag)",
            ) from exc
    finally:
        loader.dispose()


def _split_front_matter(text: str, source: str) -> tuple[str, str]:
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    lines = text.split("\n")
    if not lines or lines[0].strip() != "---":
        raise PersonaFileError(source, "must start with a '---' line opening the front matter")
    for i in range(1, len(lines)):
        if lines[i].strip() == "---":
            return "\n".join(lines[1:i]), "\n".join(lines[i + 1 :])
    raise PersonaFileError(source, "the front matter is not closed by a '---' line")


def parse_front_matter(
    text: str,
    *,
    source: str = "<persona>",
    what: str = "persona",
    max_bytes: int = MAX_FILE_BYTES,
    max_depth: int = MAX_YAML_DEPTH,
    max_nodes: int = MAX_YAML_NODES,
) -> tuple[dict[str, Any], str]:
    """Split an untrusted Markdown file into its front matter (a mapping with text
    keys, read by :func:`load_untrusted_yaml`) and its body.

    The file must open with a ``---`` line and close its front matter with another.
    Raises :class:`UnsafeFile` past a limit, :class:`PersonaFileError` otherwise.
    """
    # Why two steps: a character is at most 4 bytes, so the first check bounds the
    # cost of encoding for the second.
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise UnsafeFile(
            source, f"the {what} file is larger than {max_bytes // 1024} KB", kind="size"
        )
    head, body = _split_front_matter(text, source)
    meta: Any = (
        load_untrusted_yaml(
            head, source=source, what=what, max_depth=max_depth, max_nodes=max_nodes
        )
        if head.strip()
        else {}
    )
    if not isinstance(meta, Mapping):
        raise PersonaFileError(source, "the front matter must be a mapping of key: value lines")
    if not all(isinstance(key, str) for key in meta):
        raise PersonaFileError(source, "every front matter key must be text")
    return dict(meta), body


# --- personas ------------------------------------------------------------------------


def kind_of(value: object) -> str:
    """What a YAML value is, in words, for a message that must not quote it."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, date):
        return "a date"
    return f"a {type(value).__name__}"


def _check_types(meta: Mapping[str, Any], source: str) -> None:
    """Refuse a wrong type or an over-long text before anything formats the value."""
    for key in ("name", "description", "tier", "avatar_url"):
        value = meta.get(key)
        if value is not None and not isinstance(value, str):
            raise PersonaFileError(source, f"must be text, got {kind_of(value)}", field=key)
    name = meta["name"].strip()
    if len(name) > _NAME_MAX:
        raise PersonaFileError(
            source, f"at most {_NAME_MAX} characters (got {len(name):,})", field="name"
        )
    avatar = (meta.get("avatar_url") or "").strip()
    if len(avatar) > AVATAR_URL_MAX:
        raise PersonaFileError(
            source, f"at most {AVATAR_URL_MAX} characters (got {len(avatar):,})", field="avatar_url"
        )
    tools = meta.get("tools")
    if tools is not None:
        if not isinstance(tools, str | list):
            raise PersonaFileError(
                source, f"must be a list of tool names, got {kind_of(tools)}", field="tools"
            )
        for item in tools if isinstance(tools, list) else tools.replace(",", " ").split():
            if not isinstance(item, str):
                raise PersonaFileError(
                    source, f"each tool must be a name, got {kind_of(item)}", field="tools"
                )
            if len(item.strip()) > _TOOL_NAME_MAX:
                raise PersonaFileError(
                    source, f"a tool name is at most {_TOOL_NAME_MAX} characters", field="tools"
                )
    temperature = meta.get("temperature")
    if temperature is not None:
        low, high = TEMPERATURE_RANGE
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise PersonaFileError(
                source,
                f"must be a number between {low:g} and {high:g}, got {kind_of(temperature)}",
                field="temperature",
            )
        if not math.isfinite(temperature) or not low <= temperature <= high:
            raise PersonaFileError(
                source, f"must be between {low:g} and {high:g}", field="temperature"
            )


def parse_markdown(text: str, *, source: str = "<persona>") -> Persona:
    """Read one persona file. The fields are checked (not the tier or the tools:
    those depend on the deployment, and the store checks them)."""
    meta, body = parse_front_matter(text, source=source, what="persona")
    unknown = sorted(key for key in meta if key not in _KEYS)
    if unknown:
        shown = ", ".join(excerpt_key(key) for key in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise PersonaFileError(
            source, f"unknown key(s) {shown}{more}; allowed keys: {', '.join(_KEYS)}"
        )
    for key in _REQUIRED:
        if meta.get(key) in (None, ""):
            raise PersonaFileError(source, f"the front matter needs a {key!r}")
    _check_types(meta, source)
    try:
        persona = validate_fields(
            Persona(
                name=meta["name"],
                description=meta.get("description") or "",
                tier=meta.get("tier") or "standard",
                tools=parse_tools(meta.get("tools")),
                avatar_url=meta.get("avatar_url"),
                temperature=meta.get("temperature"),
                system_prompt=body,
                source=source,
            )
        )
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
