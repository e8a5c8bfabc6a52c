"""The adapters import discord.py, which imports the deprecated ``audioop``."""

from __future__ import annotations

import warnings

# Why: pytest runs with filterwarnings=error; import discord once with that one
# warning silenced (the same as tests/fakediscord/plugin.py does).
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    import discord  # noqa: F401
