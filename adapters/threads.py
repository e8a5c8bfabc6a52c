"""Which persona owns which Discord thread (``thread_bindings``).

A ``/chat`` thread is bound to its persona, so every message in it is answered by
that persona without a mention. :class:`ThreadStore` is the port the chat service
uses; :class:`SqlThreadStore` keeps it in the database, :class:`InMemoryThreadStore`
in memory (tests, the console).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col

from adapters.tables import ThreadBinding, utcnow

__all__ = ["Binding", "InMemoryThreadStore", "SqlThreadStore", "ThreadStore"]


@dataclass(frozen=True, slots=True)
class Binding:
    thread_id: str
    guild_id: str
    channel_id: str  # the parent channel
    persona: str
    created_by: str
    created_at: datetime


@runtime_checkable
class ThreadStore(Protocol):
    async def get(self, thread_id: str) -> Binding | None: ...

    async def bind(
        self, *, thread_id: str, guild_id: str, channel_id: str, persona: str, created_by: str
    ) -> Binding: ...

    async def unbind(self, thread_id: str) -> bool: ...


class InMemoryThreadStore:
    def __init__(self) -> None:
        self._by_id: dict[str, Binding] = {}

    async def get(self, thread_id: str) -> Binding | None:
        return self._by_id.get(thread_id)

    async def bind(
        self, *, thread_id: str, guild_id: str, channel_id: str, persona: str, created_by: str
    ) -> Binding:
        b = Binding(thread_id, guild_id, channel_id, persona, created_by, utcnow())
        self._by_id[thread_id] = b
        return b

    async def unbind(self, thread_id: str) -> bool:
        return self._by_id.pop(thread_id, None) is not None


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

    def __init__(self, sessions: async_sessionmaker[Any]) -> None:
        self._sessions = sessions

    async def get(self, thread_id: str) -> Binding | None:
        async with self._sessions() as session:
            row = await session.get(ThreadBinding, thread_id)
            return _binding(row) if row is not None else None

    async def bind(
        self, *, thread_id: str, guild_id: str, channel_id: str, persona: str, created_by: str
    ) -> Binding:
        """Bind (or re-bind) the thread to ``persona``."""
        async with self._sessions() as session:
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
            await session.commit()
            await session.refresh(row)
            return _binding(row)

    async def unbind(self, thread_id: str) -> bool:
        async with self._sessions() as session:
            result = await session.execute(
                delete(ThreadBinding).where(col(ThreadBinding.thread_id) == thread_id)
            )
            await session.commit()
            return bool(getattr(result, "rowcount", 0))

    async def delete_user_data(self, user_id: str) -> int:
        """Forget the threads a user opened (the threads stay; they stop being bound)."""
        async with self._sessions() as session:
            result = await session.execute(
                delete(ThreadBinding).where(col(ThreadBinding.created_by) == user_id)
            )
            await session.commit()
            return int(getattr(result, "rowcount", 0) or 0)
