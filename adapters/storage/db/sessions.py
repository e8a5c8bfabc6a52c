"""Sessions and transactions: the engine behind a store's session factory, and one
write transaction (the process's write lock, then ``BEGIN IMMEDIATE``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from adapters.storage.db.engine import IMMEDIATE
from adapters.storage.db.errors import translate_errors
from adapters.storage.db.locks import write_lock

__all__ = ["engine_of", "write_transaction"]


def engine_of(sessions: async_sessionmaker[AsyncSession]) -> AsyncEngine:
    """The engine a store's session factory is bound to."""
    bind = sessions.kw.get("bind")
    if not isinstance(bind, AsyncEngine):
        raise TypeError("the session factory must be bound to an AsyncEngine")
    return bind


@contextlib.asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One write transaction: the process's SQLite write lock, then ``BEGIN IMMEDIATE``
    (row locks on PostgreSQL), errors translated; committed when the block ends."""
    with translate_errors(engine.url):
        async with write_lock(engine), engine.connect() as conn:
            conn = await conn.execution_options(**IMMEDIATE)
            async with conn.begin():
                yield conn
