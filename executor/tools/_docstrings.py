"""A tool's description and its arguments' descriptions, read from its docstring."""

from __future__ import annotations

import inspect
import re

__all__ = ["parse_docstring"]

# A section header alone on its line ("Args:", "Example:"); Returns/Yields/Raises
# may also carry text on the same line ("Returns: the sum"). "Note: ..." with text
# stays in the description.
_SECTION_RE = re.compile(
    r"^(?:(Args|Arguments|Parameters|Params|Returns?|Yields?|Raises|Examples?|Notes?|See Also"
    r"|Warnings?)\s*:\s*$|(Returns?|Yields?|Raises)\s*:)",
    re.IGNORECASE,
)
_ARGS_SECTIONS = {"args", "arguments", "parameters", "params"}
# "name (type): description" or "name: description"
_GOOGLE_ARG_RE = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
# ":param name: description" or ":param type name: description"
_SPHINX_ARG_RE = re.compile(r"^:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """The description (text before the first section) and per-argument descriptions.

    Google style (``Args:`` with indented ``name (type): text`` entries and
    indented continuation lines) and Sphinx style (``:param name: text``).
    """
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    description: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    arg_indent: int | None = None

    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        sphinx = _SPHINX_ARG_RE.match(stripped)
        if sphinx:
            section, current = "sphinx", sphinx.group(1)
            params[current] = sphinx.group(2).strip()
            continue
        if stripped.startswith(":") and section in (None, "sphinx"):
            # :returns:, :raises ...: end the description without adding to it
            section, current = "sphinx-other", None
            continue
        header = _SECTION_RE.match(stripped) if indent == 0 else None
        if header:
            section = (header.group(1) or header.group(2)).lower()
            current, arg_indent = None, None
            continue
        if section is None:
            description.append(line)
        elif section in _ARGS_SECTIONS:
            if not stripped:
                continue
            if arg_indent is None:
                arg_indent = indent
            elif indent < arg_indent:
                section, current = "other", None  # dedented: the section ended
                continue
            m = _GOOGLE_ARG_RE.match(stripped)
            if indent <= arg_indent and m:
                current = m.group(1)
                params[current] = m.group(2).strip()
            elif current is not None:
                params[current] = f"{params[current]} {stripped}".strip()
        elif section == "sphinx" and current is not None and stripped:
            params[current] = f"{params[current]} {stripped}".strip()
    return "\n".join(description).strip(), {k: v for k, v in params.items() if v}
