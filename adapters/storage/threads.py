"""Which persona owns which Discord thread (``thread_bindings``).

A ``/chat`` thread is bound to its persona, so every message in it is answered by
that persona without a mention. :class:`SqlThreadStore` implements the chat flow's
:class:`~adapters.services.ports.ThreadStore` port in the database.

The chat flow asks for a thread's binding on every message in any thread (twice for
a bound one), so reads are cached, "not bound" included, for ``ttl_s``; a change
through this store drops the cache (:meth:`SqlThreadStore.invalidate`). A thread
belongs to one guild, and so to the one process that holds its shard.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col

from adapters.services.ports import Binding
from adapters.storage.db import IMMEDIATE
from adapters.storage.tables import ThreadBinding

__all__ = ["SqlThreadStore"]


def _binding(row: ThreadBinding) -> Binding:
    return Binding(
        thread_id=row.thread_id,
        guild_id=row.guild_id,
        channel_id=row.channel_id,
        persona=row.persona,
        created_by=row.created_by,
        created_at=row.created_at,
    )


class SqlThreadStore:
    """Thread bindings in the database. Takes an ``async_sessionmaker``."""

    data_name = "thread bindings"

    def __init__(
        self,
        sessions: async_sessionmaker[Any],
        *,
        ttl_s: float = 30.0,
        max_threads: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self.ttl_s = ttl_s
        self._max = max_threads
        self._monotonic = monotonic
        self._cache: OrderedDict[str, tuple[float, Binding | None]] = OrderedDict()
        self._generation = 0  # bumped by invalidate(): a read begun before keeps nothing

    def invalidate(self) -> None:
        """Forget every cached read (every write of this store calls it)."""
        self._generation += 1
        self._cache.clear()

    async def get(self, thread_id: str) -> Binding | None:
        hit = self._cache.get(thread_id)
        if hit is not None and self._monotonic() - hit[0] <= self.ttl_s:
            self._cache.move_to_end(thread_id)
            return hit[1]
        generation, read_at = self._generation, self._monotonic()
        async with self._sessions() as session:
            row = await session.get(ThreadBinding, thread_id)
            found = _binding(row) if row is not None else None
        if generation == self._generation:
            self._cache[thread_id] = (read_at, found)
            self._cache.move_to_end(thread_id)
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return found

    async def bind(
        self, *, thread_id: str, guild_id: str, channel_id: str, persona: str, created_by: str
    ) -> Binding:
        """Bind (or re-bind) the thread to ``persona``."""
        async with self._sessions() as session:
            await session.connection(execution_options=IMMEDIATE)
            row = await session.get(ThreadBinding, thread_id)
            if row is None:
                row = ThreadBinding(
                    thread_id=thread_id,
                    guild_id=guild_id,
                    channel_id=channel_id,
                    persona=persona,
                    created_by=created_by,
                )
            else:
                row.persona = persona
            session.add(row)
            try:
                await session.commit()
            finally:
                self.invalidate()
            await session.refresh(row)
            return _binding(row)

    async def unbind(self, thread_id: str) -> bool:
        async with self._sessions() as session:
            result = await session.execute(
                delete(ThreadBinding).where(col(ThreadBinding.thread_id) == thread_id)
            )
            try:
                await session.commit()
            finally:
                self.invalidate()
            return bool(getattr(result, "rowcount", 0))

    async def export_user_data(self, user_id: str) -> list[dict[str, Any]]:
        """The persona threads the member opened."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(ThreadBinding)
                .where(col(ThreadBinding.created_by) == user_id)
                .order_by(col(ThreadBinding.created_at))
            )
            return [r.model_dump(mode="json") for r in rows]

    async def delete_user_data(self, user_id: str) -> int:
        """Forget the threads a user opened (the threads stay; they stop being bound)."""
        async with self._sessions() as session:
            result = await session.execute(
                delete(ThreadBinding).where(col(ThreadBinding.created_by) == user_id)
            )
            try:
                await session.commit()
            finally:
                self.invalidate()
            return int(getattr(result, "rowcount", 0) or 0)
