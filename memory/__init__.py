"""Memory: the notes personas keep about members, scoped, searched, and in their hands.

See :mod:`memory.notes` for the scopes and the contract, :mod:`memory.store` for the
search, :mod:`memory.checks` for what is refused, :mod:`memory.prompt` for what a run sees, :mod:`memory.tools` for the tools.
"""

from memory.checks import clean_note
from memory.errors import MemoryError_, MemoryFull, MemoryOff, NoteNotFound, NoteRefused
from memory.notes import (
    NOTE_MAX_CHARS,
    Caps,
    InMemoryNoteStore,
    Note,
    NoteStore,
    PromptNotes,
    Scope,
    place_of,
)
from memory.prompt import Recollection, recall_for_prompt, render
from memory.store import SqlNoteStore
from memory.tools import MEMORY_TOOLS, MemoryPolicy, memory_source

__all__ = [
    "MEMORY_TOOLS",
    "NOTE_MAX_CHARS",
    "Caps",
    "InMemoryNoteStore",
    "MemoryError_",
    "MemoryFull",
    "MemoryOff",
    "MemoryPolicy",
    "Note",
    "NoteNotFound",
    "NoteRefused",
    "NoteStore",
    "PromptNotes",
    "Recollection",
    "Scope",
    "SqlNoteStore",
    "clean_note",
    "memory_source",
    "place_of",
    "recall_for_prompt",
    "render",
]
