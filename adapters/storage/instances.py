"""The processes on a database and what they hold: ``instances`` and ``leases``.

:class:`SqlInstances` implements :class:`adapters.services.instances.InstanceStore`.
Times are the database server's on PostgreSQL (``now()``), so hosts whose clocks
disagree still agree on who has expired; SQLite (one host) uses the process clock.

The atomic steps, each one transaction:

* **heartbeat**: the instance's row is renewed only if it still exists, and then its
  leases; a row that is gone means another process declared it dead.
* **reap**: ``DELETE ... WHERE expires_at < now() RETURNING id`` is the death
  certificate: a stalled process's heartbeat after it finds no row. Its leases go
  with it. Recovery then settles what owners with no row left behind
  (:mod:`adapters.storage.recovery`).
* **claim**: on PostgreSQL under a transaction-level advisory lock, so instances
  decide one after another on what the previous one took; a lease is taken only when
  free, expired, or held by an instance that has no row.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import delete, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from adapters.services.instances import (
    SHARD_PREFIX,
    Identity,
    ShardView,
    shard_lease,
    shard_of_lease,
)
from adapters.services.leadership import SCHEDULER_LEASE
from adapters.storage.db import engine_of, translate_errors, write_transaction
from adapters.storage.tables import Instance, Lease
from executor.ports import Clock, RealClock

__all__ = ["SCHEDULER_LEASE", "SHARDS_LOCK_KEY", "InstanceInfo", "SqlInstances"]

_instances = Instance.__table__  # type: ignore[attr-defined]
_leases = Lease.__table__  # type: ignore[attr-defined]

#: PostgreSQL: the transaction-level advisory lock shard claims queue on ("cote", "shrd").
SHARDS_LOCK_KEY: Final = (0x636F7465, 0x73687264)


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """A live instance as ``coterie status`` shows it."""

    id: str
    kind: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_age_s: float
    shard_count: int | None
    shards: tuple[int, ...]
    runs: int
    leader: bool


class SqlInstances:
    """Instances and leases in SQL. Takes an ``async_sessionmaker``."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, clock: Clock | None = None
    ) -> None:
        self._sessions = sessions
        self._engine = engine_of(sessions)
        self._pg = self._engine.dialect.name == "postgresql"
        self.clock: Clock = clock if clock is not None else RealClock()

    # --- time ------------------------------------------------------------------------

    def _now(self) -> Any:
        return func.now() if self._pg else self.clock.now()

    def _in(self, seconds: float) -> Any:
        if self._pg:
            return func.now() + timedelta(seconds=seconds)
        return self.clock.now() + timedelta(seconds=seconds)

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with write_transaction(self._engine) as conn:
            yield conn

    # --- instances -----------------------------------------------------------------

    async def register(self, identity: Identity, *, ttl_s: float) -> None:
        async with self._write() as conn:
            await conn.execute(
                insert(_instances).values(
                    id=identity.id,
                    kind=identity.kind,
                    host=identity.host[:255],
                    pid=identity.pid,
                    started_at=self._now(),
                    heartbeat_at=self._now(),
                    expires_at=self._in(ttl_s),
                    shard_count=None,
                    shards=[],
                    runs=0,
                )
            )

    async def heartbeat(
        self,
        instance_id: str,
        *,
        ttl_s: float,
        runs: int,
        shards: Sequence[int],
        shard_count: int | None,
    ) -> tuple[bool, frozenset[str]]:
        async with self._write() as conn:
            renewed = await conn.execute(
                update(_instances)
                .where(_instances.c.id == instance_id)
                .values(
                    heartbeat_at=self._now(),
                    expires_at=self._in(ttl_s),
                    runs=runs,
                    shards=list(shards),
                    shard_count=shard_count,
                )
            )
            if renewed.rowcount != 1:
                return False, frozenset()
            held = await conn.scalars(
                update(_leases)
                .where(_leases.c.holder == instance_id)
                .values(expires_at=self._in(ttl_s))
                .returning(_leases.c.name)
            )
            return True, frozenset(held)

    async def deregister(self, instance_id: str) -> None:
        async with self._write() as conn:
            await conn.execute(delete(_leases).where(_leases.c.holder == instance_id))
            await conn.execute(delete(_instances).where(_instances.c.id == instance_id))

    async def reap(self, *, sole_bot: str | None = None) -> list[str]:
        dead = _instances.c.expires_at < self._now()
        if sole_bot is not None:
            others = (_instances.c.kind == "bot") & (_instances.c.id != sole_bot)
            dead = or_(dead, others)
        async with self._write() as conn:
            ids = list(
                await conn.scalars(delete(_instances).where(dead).returning(_instances.c.id))
            )
            if ids:
                await conn.execute(delete(_leases).where(_leases.c.holder.in_(ids)))
        return sorted(ids)

    async def live(self, *, kind: str | None = "bot") -> list[InstanceInfo]:
        """The instances whose lease is ahead, oldest first."""
        now = self._now()
        stmt = select(_instances).where(_instances.c.expires_at > now)
        if kind is not None:
            stmt = stmt.where(_instances.c.kind == kind)
        leader = select(_leases.c.holder).where(
            _leases.c.name == SCHEDULER_LEASE, _leases.c.expires_at > now
        )
        with translate_errors(self._engine.url):
            async with self._sessions() as session:
                current = await session.scalar(select(func.now())) if self._pg else now
                rows = (await session.execute(stmt.order_by(_instances.c.started_at))).all()
                leaders = set(await session.scalars(leader))
        return [
            InstanceInfo(
                id=r.id,
                kind=r.kind,
                host=r.host,
                pid=r.pid,
                started_at=r.started_at,
                heartbeat_age_s=max(0.0, (current - r.heartbeat_at).total_seconds()),
                shard_count=r.shard_count,
                shards=tuple(sorted(int(s) for s in r.shards or ())),
                runs=r.runs,
                leader=r.id in leaders,
            )
            for r in rows
        ]

    # --- leases --------------------------------------------------------------------

    def _upsert(self) -> Any:
        return pg_insert(_leases) if self._pg else sqlite_insert(_leases)

    async def _take(self, conn: AsyncConnection, name: str, holder: str, ttl_s: float) -> bool:
        """Take ``name`` for ``holder`` if it is free, expired, held by an instance with
        no row, or already ``holder``'s."""
        stmt = self._upsert().values(
            name=name,
            holder=holder,
            term=1,
            acquired_at=self._now(),
            expires_at=self._in(ttl_s),
        )
        gone = _leases.c.holder.not_in(select(_instances.c.id))
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={
                "holder": stmt.excluded.holder,
                "expires_at": stmt.excluded.expires_at,
                "acquired_at": stmt.excluded.acquired_at,
                "term": _leases.c.term + 1,
            },
            where=or_(
                _leases.c.expires_at < self._now(),
                _leases.c.holder == holder,
                gone,
            ),
        ).returning(_leases.c.name)
        return (await conn.scalar(stmt)) is not None

    async def take(self, name: str, holder: str, *, ttl_s: float) -> bool:
        """Take one named lease (e.g. :data:`SCHEDULER_LEASE`) if it is free."""
        async with self._write() as conn:
            return await self._take(conn, name, holder, ttl_s)

    async def release(self, holder: str, names: Sequence[str]) -> None:
        if not names:
            return
        async with self._write() as conn:
            await conn.execute(
                delete(_leases).where(_leases.c.holder == holder, _leases.c.name.in_(list(names)))
            )

    async def retire(self, holder: str) -> bool:
        """``holder`` is stopping: if another bot instance is alive and not stopping,
        leave ``holder`` out of the share from now on (it stays registered, and owns its
        runs, until it deregisters) and say True; else False (it is the last one and
        keeps its shards). Decided one instance at a time, so two stopping at once do
        not both count on the other."""
        async with self._write() as conn:
            if self._pg:
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:a, :b)"),
                    {"a": SHARDS_LOCK_KEY[0], "b": SHARDS_LOCK_KEY[1]},
                )
            others = await conn.scalar(
                select(func.count()).where(
                    _instances.c.kind == "bot",
                    _instances.c.id != holder,
                    _instances.c.expires_at > self._now(),
                    _instances.c.draining.is_(False),
                )
            )
            if not others:
                return False
            await conn.execute(
                update(_instances).where(_instances.c.id == holder).values(draining=True)
            )
            return True

    async def holders(self, prefix: str = "") -> dict[str, str]:
        """Unexpired leases whose holder is registered: name -> holder."""
        with translate_errors(self._engine.url):
            async with self._sessions() as session:
                return await self._holders(await session.connection(), prefix)

    async def _holders(self, conn: AsyncConnection, prefix: str) -> dict[str, str]:
        stmt = (
            select(_leases.c.name, _leases.c.holder)
            .join(_instances, _instances.c.id == _leases.c.holder)
            .where(_leases.c.expires_at > self._now(), _instances.c.expires_at > self._now())
        )
        if prefix:
            stmt = stmt.where(_leases.c.name.startswith(prefix, autoescape=True))
        return {str(r[0]): str(r[1]) for r in await conn.execute(stmt)}

    # --- shards ------------------------------------------------------------------------

    async def agreed_shard_count(self, instance_id: str) -> int | None:
        """The shard count the other live bot instances use (the most common one)."""
        stmt = (
            select(_instances.c.shard_count, func.count())
            .where(
                _instances.c.kind == "bot",
                _instances.c.id != instance_id,
                _instances.c.expires_at > self._now(),
                _instances.c.draining.is_(False),
                _instances.c.shard_count.is_not(None),
            )
            .group_by(_instances.c.shard_count)
            .order_by(func.count().desc(), _instances.c.shard_count)
        )
        with translate_errors(self._engine.url):
            async with self._sessions() as session:
                row = (await session.execute(stmt)).first()
        return int(row[0]) if row is not None else None

    async def _view(self, conn: AsyncConnection, instance_id: str, count: int) -> ShardView:
        rows = (
            await conn.execute(
                select(_instances.c.id, _instances.c.pinned).where(
                    _instances.c.kind == "bot",
                    _instances.c.expires_at > self._now(),
                    _instances.c.draining.is_(False),
                )
            )
        ).all()
        pinned = {str(r[0]) for r in rows if r[1]}
        live = sorted({str(r[0]) for r in rows if not r[1]} | {instance_id})
        held: dict[str, set[int]] = {i: set() for i in live}
        reserved: set[int] = set()
        for name, holder in (await self._holders(conn, SHARD_PREFIX)).items():
            shard = shard_of_lease(name)
            if shard is None or shard >= count:
                continue
            if holder in held:
                held[holder].add(shard)
            elif holder in pinned:
                reserved.add(shard)
        return ShardView(
            me=instance_id,
            count=count,
            live=tuple(live),
            held={i: frozenset(s) for i, s in held.items()},
            reserved=frozenset(reserved),
        )

    async def shard_view(self, instance_id: str, count: int) -> ShardView:
        with translate_errors(self._engine.url):
            async with self._sessions() as session:
                return await self._view(await session.connection(), instance_id, count)

    async def claim_shards(
        self,
        instance_id: str,
        count: int,
        *,
        ttl_s: float,
        decide: Callable[[ShardView], list[int]],
        pinned: bool = False,
    ) -> list[int]:
        """Decide on the shards as they are held now, and take what ``decide`` picks;
        one instance at a time. The shards actually taken. ``pinned``: the instance
        holds its own shards, outside the share."""
        async with self._write() as conn:
            if self._pg:
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:a, :b)"),
                    {"a": SHARDS_LOCK_KEY[0], "b": SHARDS_LOCK_KEY[1]},
                )
            if pinned:
                await conn.execute(
                    update(_instances).where(_instances.c.id == instance_id).values(pinned=True)
                )
            view = await self._view(conn, instance_id, count)
            taken = []
            for shard in decide(view):
                if await self._take(conn, shard_lease(shard), instance_id, ttl_s):
                    taken.append(shard)
            return taken
