"""Memory: the notes personas keep about members, scoped, searched, and in their hands.

See :mod:`memory.store` for the scopes and the search, :mod:`memory.checks` for what is
refused, :mod:`memory.prompt` for what a run sees, :mod:`memory.tools` for the tools.
"""

from memory.checks import clean_note
from memory.errors import MemoryError_, MemoryFull, MemoryOff, NoteNotFound, NoteRefused
from memory.prompt import Recollection, recall_for_prompt, render
from memory.store import Caps, InMemoryNoteStore, Note, NoteStore, Scope, SqlNoteStore, place_of
from memory.tools import MEMORY_TOOLS, MemoryPolicy, memory_source

__all__ = [
    "MEMORY_TOOLS",
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
    "Recollection",
    "Scope",
    "SqlNoteStore",
    "clean_note",
    "memory_source",
    "place_of",
    "recall_for_prompt",
    "render",
]
