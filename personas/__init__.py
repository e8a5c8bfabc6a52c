"""Personas: the noun, its store, the built-ins, and ``to_runnable``.

The names below are loaded on first use, so that importing ``personas.model``
(what the services need) does not import the SQL store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from executor.lazy import attach as _attach

if TYPE_CHECKING:
    from personas.errors import (
        InvalidPersona,
        PersonaError,
        PersonaExists,
        PersonaFileError,
        PersonaNotFound,
        PersonaPermissionDenied,
        UnsafeFile,
    )
    from personas.markdown import (
        BUILTIN_DIR,
        load_builtins,
        load_untrusted_yaml,
        parse_front_matter,
        parse_markdown,
        render_markdown,
    )
    from personas.model import Persona
    from personas.runnable import to_runnable
    from personas.store import PersonaStore

_WHERE = {
    "BUILTIN_DIR": "personas.markdown",
    "InvalidPersona": "personas.errors",
    "Persona": "personas.model",
    "PersonaError": "personas.errors",
    "PersonaExists": "personas.errors",
    "PersonaFileError": "personas.errors",
    "PersonaNotFound": "personas.errors",
    "PersonaPermissionDenied": "personas.errors",
    "PersonaStore": "personas.store",
    "UnsafeFile": "personas.errors",
    "load_builtins": "personas.markdown",
    "load_untrusted_yaml": "personas.markdown",
    "parse_front_matter": "personas.markdown",
    "parse_markdown": "personas.markdown",
    "render_markdown": "personas.markdown",
    "to_runnable": "personas.runnable",
}

__all__ = [
    "BUILTIN_DIR",
    "InvalidPersona",
    "Persona",
    "PersonaError",
    "PersonaExists",
    "PersonaFileError",
    "PersonaNotFound",
    "PersonaPermissionDenied",
    "PersonaStore",
    "UnsafeFile",
    "load_builtins",
    "load_untrusted_yaml",
    "parse_front_matter",
    "parse_markdown",
    "render_markdown",
    "to_runnable",
]


__getattr__, __dir__ = _attach(__name__, _WHERE, globals())
