"""Which persona owns which Discord thread (``thread_bindings``).

A ``/chat`` thread is bound to its persona, so every message in it is answered by
that persona without a mention. :class:`SqlThreadStore` implements the chat flow's
:class:`~adapters.services.ports.ThreadStore` port in the database.

The chat flow asks for a thread's binding on every message in any thread (twice for
a bound one), so reads are cached, "not bound" included, for ``ttl_s``; a change
through this store drops the entry (:meth:`SqlThreadStore.invalidate`). A thread
belongs to one guild, and so to the one process that holds its shard, but the write
need not come from there: ``/forgetme`` in a DM (shard 0's process), ``coterie
forget``, a shard handed over to another process with its cache still warm in the
old one. So with several processes on PostgreSQL a write is also published
(:attr:`SqlThreadStore.publish`, ``NOTIFY`` on ``threads``: the thread's id, ``*``
for many) and each other process drops the entry when told; a lost notification is
covered by the notifier emptying the cache when its connection comes back, and by
the TTL.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col

from adapters.services.ports import Binding
from adapters.storage.db import IMMEDIATE
from adapters.storage.tables import ThreadBinding

__all__ = ["EVERY_THREAD", "SqlThreadStore"]

log = logging.getLogger(__name__)

#: The key published for a write that touched many threads (a member's data deleted).
EVERY_THREAD = "*"


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
        # Tells the other processes a binding changed (the thread's id, or
        # EVERY_THREAD). None: this process is alone.
        self.publish: Callable[[str], Awaitable[None]] | None = None

    def invalidate(self, key: str | None = None) -> None:
        """Forget the cached read of thread ``key`` (None or :data:`EVERY_THREAD`:
        every one): after a write here, or when another process says it wrote."""
        self._generation += 1
        if key is None or key == EVERY_THREAD:
            self._cache.clear()
        else:
            self._cache.pop(key, None)

    async def _written(self, key: str) -> None:
        """After a write: tell the other processes (this one dropped its entry)."""
        if self.publish is None:
            return
        try:
            await self.publish(key)
        except Exception:  # Why not raise: the write is saved; others see it by TTL
            log.warning("could not tell the other processes about thread %s", key, exc_info=True)

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
                self.invalidate(thread_id)
            await session.refresh(row)
            bound = _binding(row)
        await self._written(thread_id)
        return bound

    async def unbind(self, thread_id: str) -> bool:
        async with self._sessions() as session:
            result = await session.execute(
                delete(ThreadBinding).where(col(ThreadBinding.thread_id) == thread_id)
            )
            try:
                await session.commit()
            finally:
                self.invalidate(thread_id)
            gone = bool(getattr(result, "rowcount", 0))
        if gone:
            await self._written(thread_id)
        return gone

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
            count = int(getattr(result, "rowcount", 0) or 0)
        if count:
            await self._written(EVERY_THREAD)
        return count
