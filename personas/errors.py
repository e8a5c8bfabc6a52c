"""The persona package's exceptions. Every message is written for the person who asked.

::

    CoterieError (executor.errors)
    └── PersonaError
        ├── PersonaNotFound          no persona by that name in this guild
        ├── PersonaExists            a stored persona already has that name in this guild
        ├── PersonaPermissionDenied  only its creator or an admin may change it
        └── InvalidPersona           a field breaks a rule; names the field and the rule
            └── PersonaFileError     a Markdown persona file is malformed; names the file
                └── UnsafeFile       refused unread: too large, too deep, too many nodes,
                                     or YAML anchors/aliases (``kind`` says which)
"""

from __future__ import annotations

from typing import Literal

from executor.errors import CoterieError

__all__ = [
    "InvalidPersona",
    "PersonaError",
    "PersonaExists",
    "PersonaFileError",
    "PersonaNotFound",
    "PersonaPermissionDenied",
    "UnsafeFile",
    "UnsafeKind",
]

UnsafeKind = Literal["size", "depth", "nodes", "anchor", "alias"]


class PersonaError(CoterieError):
    """Base of the persona errors. ``str(exc)`` is safe to show to the user."""


class PersonaNotFound(PersonaError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no persona named {name!r}; try /persona list")


class PersonaExists(PersonaError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"a persona named {name!r} already exists in this server; "
            "choose another name or edit that one"
        )


class PersonaPermissionDenied(PersonaError):
    def __init__(self, name: str, action: str, reason: str) -> None:
        self.name = name
        self.action = action
        super().__init__(f"you may not {action} the persona {name!r}: {reason}")


class InvalidPersona(PersonaError):
    """One field breaks one rule. ``field`` is the front-matter key / modal field."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)


class PersonaFileError(InvalidPersona):
    """A persona file (a built-in or an upload) that cannot be read as a persona."""

    def __init__(self, source: str, problem: str, *, field: str = "") -> None:
        self.source = source
        super().__init__(field, problem)
        # Why: the base message names the field; a file error must also name the file.
        self.args = (f"{source}: {f'{field}: ' if field else ''}{problem}",)


class UnsafeFile(PersonaFileError):
    """A file refused before its contents were read as data, to keep the bot up.

    ``kind`` says which limit it broke. The message never quotes the file's contents.
    """

    def __init__(self, source: str, problem: str, *, kind: UnsafeKind) -> None:
        self.kind = kind
        super().__init__(source, problem)
