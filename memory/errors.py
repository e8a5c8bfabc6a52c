"""What can go wrong with a note, each with a message fit for the model or the member.

::

    MemoryError_ (base)
     ├── NoteRefused    the text is not kept (a secret, instructions, empty, too long)
     ├── MemoryFull     the member's notes for this persona reached a cap
     ├── NoteNotFound   no such note for this member
     └── MemoryOff      memory is off here (the guild, the member, or DMs)
"""

from __future__ import annotations

from executor.errors import CoterieError

__all__ = ["MemoryError_", "MemoryFull", "MemoryOff", "NoteNotFound", "NoteRefused"]


class MemoryError_(CoterieError):
    """Base of memory's errors; ``str()`` is what the model or the member reads."""


class NoteRefused(MemoryError_):
    pass


class MemoryFull(MemoryError_):
    pass


class NoteNotFound(MemoryError_):
    pass


class MemoryOff(MemoryError_):
    pass
