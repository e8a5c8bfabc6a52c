"""Personas: the noun, its store, the built-ins, and ``to_runnable``."""

from personas.defaults import ChannelDefaults, InMemoryChannelDefaults
from personas.errors import (
    InvalidPersona,
    PersonaError,
    PersonaExists,
    PersonaFileError,
    PersonaNotFound,
    PersonaPermissionDenied,
)
from personas.markdown import BUILTIN_DIR, load_builtins, parse_markdown, render_markdown
from personas.model import Persona
from personas.runnable import to_runnable
from personas.store import PersonaStore

__all__ = [
    "BUILTIN_DIR",
    "ChannelDefaults",
    "InMemoryChannelDefaults",
    "InvalidPersona",
    "Persona",
    "PersonaError",
    "PersonaExists",
    "PersonaFileError",
    "PersonaNotFound",
    "PersonaPermissionDenied",
    "PersonaStore",
    "load_builtins",
    "parse_markdown",
    "render_markdown",
    "to_runnable",
]
