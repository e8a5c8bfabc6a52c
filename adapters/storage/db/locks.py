"""The process's SQLite write lock: one ``asyncio.Lock`` per engine.

Why a weak map and not a Database attribute: stores receive only a session factory.
One lock per engine, so the audit sink, the budget ledger and every other writer
queue here, in the process, instead of in SQLite's busy handler (which sleeps and
retries); ``BEGIN IMMEDIATE`` still guards against other processes. On PostgreSQL
there is no such lock: row locks, many writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["write_lock"]

_write_locks: weakref.WeakKeyDictionary[Engine, asyncio.Lock] = weakref.WeakKeyDictionary()


def write_lock(engine: AsyncEngine) -> contextlib.AbstractAsyncContextManager[Any]:
    """The engine's write lock (SQLite), or nothing to hold (PostgreSQL)."""
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()  # PostgreSQL: row locks, many writers
    lock = _write_locks.get(engine.sync_engine)
    if lock is None:
        lock = _write_locks[engine.sync_engine] = asyncio.Lock()
    return lock
