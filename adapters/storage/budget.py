"""The durable budget gate: a ledger of charges in SQL, reservations taken atomically.

The rules are the kernel's (:mod:`executor.budget`): a rolling 7-day window of charges
per member (per user id, across guilds), a default limit, a per-member override,
one-off grants that expire, reservations before a run and a settlement after it.

Atomicity: every reservation, growth of one (before each model call of a run) and
settlement is one transaction that first takes the member's lock row in ``budget_members`` (``SELECT ... FOR UPDATE`` on PostgreSQL;
``BEGIN IMMEDIATE`` on SQLite, which takes the database's write lock at once). A
member with no row yet gets one by ``INSERT ... ON CONFLICT DO NOTHING`` inside the
same transaction, so their first concurrent reservations serialise too. Check and
insert happen under that lock, so concurrent reservations can never sum past a limit.

Speed (issue 19): each of the three is a *job*, a function of one transaction's
statements. On a SQLite file a job is one call in the database's writer thread
(:mod:`adapters.storage.sqlite_writer`): the reservation's read of the member's sums,
the check and the insert cost one hop to that thread instead of four to aiosqlite's.
Elsewhere (PostgreSQL) the same job runs in a transaction of the engine. A settle that
charged something also reads, in its transaction, what the budget warnings need (the
member's budget just before and after the charge, the warnings already claimed), so
:class:`~adapters.services.budget_alerts.BudgetAlerts` reads nothing more.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import ColumnElement, bindparam, delete, func, insert, select
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
from sqlalchemy.sql import Executable

from adapters.services.budget_alerts import SettledCharge
from adapters.services.budgets import BudgetLimits
from adapters.storage.audit_queries import FORGOTTEN
from adapters.storage.db import engine_of, translate_errors, write_lock, write_transaction
from adapters.storage.export import jsonable_rows
from adapters.storage.sqlite_writer import writer_for
from adapters.storage.tables import (
    BudgetAlert,
    BudgetGrant,
    BudgetLedgerEntry,
    BudgetMember,
    BudgetReservationRow,
)
from executor.agent import Caller
from executor.budget import WINDOW, BudgetStatus, frees_at
from executor.errors import BudgetDetails, BudgetExceeded
from executor.ports import Clock, RealClock, Reservation

__all__ = ["ActiveGrant", "OpenReservation", "SqlBudgetLedger"]

log = logging.getLogger(__name__)

_ledger = BudgetLedgerEntry.__table__  # type: ignore[attr-defined]
_members = BudgetMember.__table__  # type: ignore[attr-defined]
_reservations = BudgetReservationRow.__table__  # type: ignore[attr-defined]
_grants = BudgetGrant.__table__  # type: ignore[attr-defined]
_alerts = BudgetAlert.__table__  # type: ignore[attr-defined]

T = TypeVar("T")


# --- one transaction's statements (built once: the SQLite writer caches each) ----------


def _sum(column: Any, *where: Any) -> Any:
    return select(func.coalesce(func.sum(column), 0)).where(*where).scalar_subquery()


_USER: Any = bindparam("user_id")
_SPENT = _sum(
    _ledger.c.amount_micros, _ledger.c.user_id == _USER, _ledger.c.at > bindparam("since")
)
_RESERVED = _sum(_reservations.c.amount_micros, _reservations.c.user_id == _USER)
_GRANTED = _sum(
    _grants.c.amount_micros, _grants.c.user_id == _USER, _grants.c.expires_at > bindparam("now")
)
_OVERRIDE = select(_members.c.limit_micros).where(_members.c.user_id == _USER).scalar_subquery()
_EXISTS = select(_members.c.user_id).where(_members.c.user_id == _USER).exists()
# Why one statement: one round trip, and one snapshot of every sum.
_STATUS = select(_SPENT, _RESERVED, _GRANTED, _OVERRIDE, _EXISTS)
# After a charge: the same, and the window's spend as it was just before the charge.
_SETTLED = select(
    _SPENT,
    _RESERVED,
    _GRANTED,
    _OVERRIDE,
    _sum(
        _ledger.c.amount_micros,
        _ledger.c.user_id == _USER,
        _ledger.c.at > bindparam("before_since"),
        _ledger.c.at <= bindparam("before"),
    ),
)
_CLAIMED = select(_alerts.c.threshold_pct, _alerts.c.sent_at).where(_alerts.c.user_id == _USER)
_CHARGES = (
    select(_ledger.c.at, _ledger.c.amount_micros)
    .where(_ledger.c.user_id == _USER, _ledger.c.at > bindparam("since"))
    .order_by(_ledger.c.at)
)
_INSERT_MEMBER = insert(_members)
_INSERT_RESERVATION = insert(_reservations).returning(_reservations.c.id)
_HELD = select(_reservations.c.amount_micros).where(_reservations.c.id == bindparam("b_id"))
_GROW = (
    _reservations.update()
    .where(_reservations.c.id == bindparam("b_id"))
    .values(amount_micros=bindparam("amount"))
)
_TAKE = (
    delete(_reservations)
    .where(_reservations.c.id == bindparam("b_id"))
    .returning(_reservations.c.user_id, _reservations.c.run_id)
)
_INSERT_CHARGE = insert(_ledger)
_DROP_RESERVATION = delete(_reservations).where(_reservations.c.id == bindparam("b_id"))


class Tx(Protocol):
    """One transaction's statements, wherever it runs: the SQLite writer's thread
    (:class:`adapters.storage.sqlite_writer.WriteTx`) or an engine connection."""

    def rows(self, statement: Executable, params: Mapping[str, Any]) -> list[tuple[Any, ...]]: ...

    def run(self, statement: Executable, params: Mapping[str, Any]) -> int: ...


class _EngineTx:
    """:class:`Tx` on a connection of the engine (in ``run_sync``: PostgreSQL, or a
    SQLite database in memory)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def rows(self, statement: Executable, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._conn.execute(statement, dict(params))]

    def run(self, statement: Executable, params: Mapping[str, Any]) -> int:
        return int(self._conn.execute(statement, dict(params)).rowcount)


@functools.cache
def _pg_lock_statements() -> tuple[Executable, Executable]:
    # Why imported here: PostgreSQL's dialect module is an import a SQLite start skips.
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    return (
        pg_insert(_members).on_conflict_do_nothing(index_elements=["user_id"]),
        select(_members.c.user_id).where(_members.c.user_id == _USER).with_for_update(),
    )


def _lock_member(tx: Tx, user_id: str, now: datetime, *, postgresql: bool) -> None:
    """Serialise this member's reservations (creating their lock row if need be).

    On SQLite, BEGIN IMMEDIATE has already taken the database's write lock, and the
    row is created by the reservation only when missing (one statement less).
    """
    if not postgresql:
        return
    create, lock = _pg_lock_statements()
    tx.run(create, {"user_id": user_id, "limit_micros": None, "updated_at": now})
    tx.rows(lock, {"user_id": user_id})


def _status(
    tx: Tx, user_id: str, now: datetime, window: timedelta, default: int
) -> tuple[BudgetStatus, bool]:
    """The member's status and whether their row exists, in one statement."""
    row = tx.rows(_STATUS, {"user_id": user_id, "since": now - window, "now": now})[0]
    return _status_of(user_id, row, default), bool(row[4])


def _status_of(user_id: str, row: Sequence[Any], default: int) -> BudgetStatus:
    """A status from a row of ``_STATUS`` or ``_SETTLED`` (spent, reserved, granted, override)."""
    override = None if row[3] is None else int(row[3])
    base = override if override is not None else default
    return BudgetStatus(
        user_id=user_id,
        limit_micros=base + int(row[2]),
        base_limit_micros=base,
        overridden=override is not None,
        granted_micros=int(row[2]),
        spent_micros=int(row[0]),
        reserved_micros=int(row[1]),
    )


def _refusal(
    tx: Tx, user_id: str, now: datetime, window: timedelta, status: BudgetStatus, wanted: int
) -> BudgetDetails:
    """Why ``wanted`` more does not fit, and when enough rolls out of the window."""
    charges = tx.rows(_CHARGES, {"user_id": user_id, "since": now - window})
    total = status.spent_micros + status.reserved_micros + wanted
    return BudgetDetails(
        spent_micros=status.spent_micros,
        reserved_micros=status.reserved_micros,
        estimate_micros=wanted,
        limit_micros=status.limit_micros,
        frees_at=frees_at(
            ((r[0], int(r[1])) for r in charges), total - status.limit_micros, window
        ),
    )


@dataclass(frozen=True, slots=True)
class _Gate:
    """What a job needs to know of the ledger (a job runs in another thread)."""

    window: timedelta
    owner: str | None
    postgresql: bool


def _reserve_job(
    tx: Tx, gate: _Gate, user_id: str, run_id: str, estimate: int, now: datetime, default: int
) -> int | BudgetDetails:
    """Check and hold: the reservation's id, or why it was refused."""
    _lock_member(tx, user_id, now, postgresql=gate.postgresql)
    status, exists = _status(tx, user_id, now, gate.window, default)
    if status.spent_micros + status.reserved_micros + estimate > status.limit_micros:
        return _refusal(tx, user_id, now, gate.window, status, estimate)
    if not exists and not gate.postgresql:
        tx.run(_INSERT_MEMBER, {"user_id": user_id, "limit_micros": None, "updated_at": now})
    row = {
        "user_id": user_id,
        "run_id": run_id,
        "amount_micros": estimate,
        "created_at": now,
        "owner": gate.owner,
    }
    return int(tx.rows(_INSERT_RESERVATION, row)[0][0])


def _grow_job(
    tx: Tx, gate: _Gate, user_id: str, token: int, amount: int, now: datetime, default: int
) -> int | BudgetDetails | None:
    """The reservation's amount now (grown, or already as large), why it could not
    grow, or None when it is settled already."""
    _lock_member(tx, user_id, now, postgresql=gate.postgresql)
    held_rows = tx.rows(_HELD, {"b_id": token})
    if not held_rows:
        return None
    held = int(held_rows[0][0])
    if amount <= held:
        return held
    status, _ = _status(tx, user_id, now, gate.window, default)
    extra = amount - held
    if status.spent_micros + status.reserved_micros + extra > status.limit_micros:
        return _refusal(tx, user_id, now, gate.window, status, extra)
    tx.run(_GROW, {"b_id": token, "amount": amount})
    return amount


def _settle_job(
    tx: Tx, window: timedelta, token: int, cost: int, at: datetime, facts_default: int | None
) -> tuple[bool, SettledCharge | None]:
    """Charge and release; with ``facts_default`` (the member's base limit where they
    ran), what the budget warnings need, read in the same transaction."""
    # Why no member lock: a reservation turning into a charge is one commit, and a
    # concurrent reserve sees it wholly before or wholly after (one snapshot).
    gone = tx.rows(_TAKE, {"b_id": token})
    if not gone:
        return False, None  # settled already, maybe by a concurrent settle
    user_id, run_id = str(gone[0][0]), str(gone[0][1])
    if cost:
        charge = {"user_id": user_id, "at": at, "amount_micros": cost, "run_id": run_id, "note": ""}
        tx.run(_INSERT_CHARGE, charge)
    if facts_default is None:
        return True, None
    # The lowest the member's spend was since their last charge: just before this one.
    before = at - timedelta(microseconds=1)
    row = tx.rows(
        _SETTLED,
        {
            "user_id": user_id,
            "since": at - window,
            "now": at,
            "before_since": before - window,
            "before": before,
        },
    )[0]
    claimed = {int(t): sent for t, sent in tx.rows(_CLAIMED, {"user_id": user_id})}
    return True, SettledCharge(
        status=_status_of(user_id, row, facts_default),
        spent_before_micros=int(row[4]),
        claimed=claimed,
    )


@dataclass(frozen=True, slots=True)
class OpenReservation:
    id: int
    user_id: str
    run_id: str
    amount_micros: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ActiveGrant:
    amount_micros: int
    granted_by: str
    granted_at: datetime
    expires_at: datetime
    note: str


#: Called after a settled run that cost something: its caller, the charge's time, and
#: what the settle's transaction read for the budget warnings.
AfterSettle = Callable[[Caller, datetime, SettledCharge | None], Awaitable[object]]


class SqlBudgetLedger:
    """``executor.ports.BudgetGate`` on SQLite or PostgreSQL, with the admin operations.

    ``limits`` (optional) decides a member's base limit from where they ask (the
    guild's default or a role's, :class:`adapters.services.budgets.GuildBudgetLimits`)
    when they have no override of their own; without it every member's base is
    ``default_limit_micros``. ``after_settle`` callbacks run after each settled run
    that cost something, with its caller and the charge's time (the budget warnings);
    their errors are logged, never raised.
    """

    data_name = "budget"

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        default_limit_micros: int,
        clock: Clock | None = None,
        window: timedelta = WINDOW,
    ) -> None:
        if default_limit_micros < 0:
            raise ValueError("default_limit_micros must not be negative")
        self._sessions = sessions
        engine = engine_of(sessions)
        self._engine = engine
        self._url: URL = engine.url
        self._dialect = engine.dialect.name
        if self._dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"budgets need SQLite or PostgreSQL, not {self._dialect}")
        self.default_limit_micros = default_limit_micros
        self.clock: Clock = clock if clock is not None else RealClock()
        self.window = window
        self.limits: BudgetLimits | None = None
        self.after_settle: list[AfterSettle] = []
        # The instance whose runs reserve here (crash recovery settles a reservation
        # only once its owner is gone); None: a process that registered none.
        self.owner: str | None = None

    async def _default_for(self, caller: Caller | None) -> int:
        if caller is None or self.limits is None:
            return self.default_limit_micros
        return await self.limits.default_for(caller)

    # --- transactions --------------------------------------------------------------

    def _transaction(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return write_transaction(self._engine)

    @property
    def _gate(self) -> _Gate:
        return _Gate(window=self.window, owner=self.owner, postgresql=self._dialect == "postgresql")

    async def _job(self, job: Callable[[Tx], T], *, undo: Callable[[T], Any] | None = None) -> T:
        """Run ``job`` in one write transaction: one call in the SQLite writer's thread,
        or a transaction of the engine. Cancelled while the writer runs it, the caller
        waits for its end; ``undo`` makes a committed job's result a job of its own to
        take it back (a reservation nobody will settle), run before the cancellation
        goes on."""
        writer = writer_for(self._engine)
        if writer is None:
            async with self._transaction() as conn:
                return await conn.run_sync(lambda c: job(_EngineTx(c)))
        async with write_lock(self._engine):
            submitted = writer.submit(job)
            try:
                result: T = await submitted.future
            except asyncio.CancelledError:
                committed, value = await submitted.settled()
                if committed and undo is not None:
                    rollback = writer.submit(lambda tx: undo(value)(tx))
                    await rollback.settled()
                raise
        return result

    async def _lock_member(self, conn: AsyncConnection, user_id: str) -> None:
        postgresql = self._dialect == "postgresql"
        if postgresql:
            now = self.clock.now()
            await conn.run_sync(lambda c: _lock_member(_EngineTx(c), user_id, now, postgresql=True))

    async def _ensure_member(self, conn: AsyncConnection, user_id: str, exists: bool) -> None:
        if not exists:
            await conn.execute(
                insert(_members).values(
                    user_id=user_id, limit_micros=None, updated_at=self.clock.now()
                )
            )

    async def _status_in(
        self, conn: AsyncConnection, user_id: str, now: datetime, default: int | None = None
    ) -> tuple[BudgetStatus, bool]:
        """The member's status and whether their row exists, in one statement."""
        base = default if default is not None else self.default_limit_micros
        return await conn.run_sync(lambda c: _status(_EngineTx(c), user_id, now, self.window, base))

    # --- the gate ----------------------------------------------------------------------

    async def reserve(self, caller: Caller, run_id: str, estimate_micros: int) -> Reservation:
        if estimate_micros < 0:
            raise ValueError(f"estimate_micros must not be negative (got {estimate_micros})")
        # Why before the transaction: the guild's limits are a cached read; never hold
        # the write lock over it.
        default = await self._default_for(caller)
        job = functools.partial(
            _reserve_job,
            gate=self._gate,
            user_id=caller.user_id,
            run_id=run_id,
            estimate=estimate_micros,
            now=self.clock.now(),
            default=default,
        )
        outcome = await self._job(job, undo=_undo_reservation)
        if isinstance(outcome, BudgetDetails):
            raise BudgetExceeded(outcome)
        return Reservation(
            run_id=run_id, caller=caller, amount_micros=estimate_micros, token=outcome
        )

    async def grow(self, reservation: Reservation, amount_micros: int) -> Reservation:
        """Raise an open reservation to ``amount_micros`` under the member's lock, or
        refuse as :meth:`reserve` does (the refusal's estimate is the extra)."""
        if amount_micros < 0:
            raise ValueError(f"amount_micros must not be negative (got {amount_micros})")
        caller = reservation.caller
        default = await self._default_for(caller)
        job = functools.partial(
            _grow_job,
            gate=self._gate,
            user_id=caller.user_id,
            token=int(reservation.token),
            amount=amount_micros,
            now=self.clock.now(),
            default=default,
        )
        outcome = await self._job(job)
        if outcome is None:
            raise ValueError(f"the reservation of run {reservation.run_id} is settled already")
        if isinstance(outcome, BudgetDetails):
            raise BudgetExceeded(outcome)
        return replace(reservation, amount_micros=outcome)

    async def settle(self, reservation: Reservation, cost_micros: int) -> None:
        if cost_micros < 0:
            raise ValueError(f"cost_micros must not be negative (got {cost_micros})")
        at = self.clock.now()
        callbacks = list(self.after_settle)
        # Why read here what the warnings need: in the settle's own transaction it costs
        # one statement, where the warnings' own reads cost a session each.
        wanted = await self._default_for(reservation.caller) if callbacks and cost_micros else None
        job = functools.partial(
            _settle_job,
            window=self.window,
            token=int(reservation.token),
            cost=cost_micros,
            at=at,
            facts_default=wanted,
        )
        settled, facts = await self._job(job)
        if settled and cost_micros:
            for callback in callbacks:
                try:
                    await callback(reservation.caller, at, facts)
                except Exception:  # Why: a warning DM must never fail the run's finish
                    log.exception("after-settle callback failed for run %s", reservation.run_id)

    async def settle_by_id(
        self, reservation_id: int, cost_micros: int, *, at: datetime | None = None
    ) -> bool:
        """Charge ``cost_micros`` for an open reservation and release it.

        False when it was settled already (settling twice never charges twice).
        """
        if cost_micros < 0:
            raise ValueError(f"cost_micros must not be negative (got {cost_micros})")
        job = functools.partial(
            _settle_job,
            window=self.window,
            token=reservation_id,
            cost=cost_micros,
            at=at or self.clock.now(),
            facts_default=None,
        )
        settled, _ = await self._job(job)
        return settled

    async def open_reservations(
        self, *, orphaned: ColumnElement[bool] | None = None
    ) -> list[OpenReservation]:
        """Every open reservation, or those ``orphaned`` selects (crash recovery)."""
        stmt = select(_reservations).order_by(_reservations.c.id)
        if orphaned is not None:
            stmt = stmt.where(orphaned)
        async with self._sessions() as session:
            rows = await session.execute(stmt)
            return [
                OpenReservation(
                    id=r.id,
                    user_id=r.user_id,
                    run_id=r.run_id,
                    amount_micros=r.amount_micros,
                    created_at=r.created_at,
                )
                for r in rows
            ]

    # --- admin -----------------------------------------------------------------------

    async def set_limit(self, user_id: str, limit_micros: int | None) -> None:
        """Override one member's limit; None returns them to the default."""
        if limit_micros is not None and limit_micros < 0:
            raise ValueError("limit_micros must not be negative")
        async with self._transaction() as session:
            await self._lock_member(session, user_id)
            _, exists = await self._status_in(session, user_id, self.clock.now())
            await self._ensure_member(session, user_id, exists)
            await session.execute(
                _members.update()
                .where(_members.c.user_id == user_id)
                .values(limit_micros=limit_micros, updated_at=self.clock.now())
            )

    async def grant(
        self,
        user_id: str,
        amount_micros: int,
        *,
        granted_by: str = "",
        expires_at: datetime | None = None,
        note: str = "",
    ) -> None:
        """A one-off grant: extra allowance until it expires (one window by default)."""
        if amount_micros < 0:
            raise ValueError("amount_micros must not be negative")
        async with self._transaction() as session:
            now = self.clock.now()
            await session.execute(
                insert(_grants).values(
                    user_id=user_id,
                    amount_micros=amount_micros,
                    granted_by=granted_by,
                    granted_at=now,
                    expires_at=expires_at if expires_at is not None else now + self.window,
                    note=note[:200],
                )
            )

    async def status(self, user_id: str, *, context: Caller | None = None) -> BudgetStatus:
        """The member's budget now; ``context`` (the member where they ask: guild and
        roles) picks the guild's or a role's limit when they have no override."""
        default = await self._default_for(context)
        now = self.clock.now()
        with translate_errors(self._url):
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(
                        _STATUS, {"user_id": user_id, "since": now - self.window, "now": now}
                    )
                ).one()
                await conn.rollback()
        return _status_of(user_id, row, default)

    async def window_charges(self, user_id: str) -> list[tuple[datetime, int]]:
        """The member's charges inside the window now, oldest first."""
        now = self.clock.now()
        stmt = (
            select(_ledger.c.at, _ledger.c.amount_micros)
            .where(_ledger.c.user_id == user_id, _ledger.c.at > now - self.window)
            .order_by(_ledger.c.at)
        )
        async with self._sessions() as session:
            return [(r[0], int(r[1])) for r in await session.execute(stmt)]

    async def spent_at(self, user_id: str, at: datetime) -> int:
        """What the member had spent in the window that ended at ``at`` (charges in
        ``(at - window, at]``): their budget before or after a run, from the ledger."""
        stmt = select(func.coalesce(func.sum(_ledger.c.amount_micros), 0)).where(
            _ledger.c.user_id == user_id,
            _ledger.c.at > at - self.window,
            _ledger.c.at <= at,
        )
        async with self._sessions() as session:
            return int(await session.scalar(stmt) or 0)

    async def active_grants(self, user_id: str) -> list[ActiveGrant]:
        now = self.clock.now()
        stmt = (
            select(_grants)
            .where(_grants.c.user_id == user_id, _grants.c.expires_at > now)
            .order_by(_grants.c.granted_at)
        )
        async with self._sessions() as session:
            return [
                ActiveGrant(
                    amount_micros=int(r.amount_micros),
                    granted_by=r.granted_by,
                    granted_at=r.granted_at,
                    expires_at=r.expires_at,
                    note=r.note,
                )
                for r in await session.execute(stmt)
            ]

    async def affordable_at(
        self, user_id: str, needed_micros: int, *, context: Caller | None = None
    ) -> datetime | None:
        """When enough spend will have rolled out of the window for ``needed_micros``
        more: None when it is affordable now or when rolling out is not enough."""
        status = await self.status(user_id, context=context)
        excess = needed_micros - status.available_micros
        if excess <= 0:
            return None
        return frees_at(await self.window_charges(user_id), excess, self.window)

    async def spend_summary(self, user_ids: Sequence[str] | None = None) -> list[BudgetStatus]:
        """Every member's status (or the given members'), biggest spenders first."""
        async with self._sessions() as session:
            if user_ids is None:
                ids = list(await session.scalars(select(_members.c.user_id)))
            else:
                ids = list(user_ids)
        out = [await self.status(u) for u in ids]
        return sorted(out, key=lambda s: (-s.spent_micros, s.user_id))

    async def export_user_data(self, user_id: str) -> dict[str, Any]:
        """The member's limit override, charges, open reservations, the grants they
        received and those they gave."""
        async with self._sessions() as session:

            async def rows(stmt: Any) -> list[dict[str, Any]]:
                return jsonable_rows(await session.execute(stmt))

            member = await rows(select(_members).where(_members.c.user_id == user_id))
            return {
                "limit": member[0] if member else None,
                "charges": await rows(
                    select(_ledger).where(_ledger.c.user_id == user_id).order_by(_ledger.c.id)
                ),
                "reservations": await rows(
                    select(_reservations)
                    .where(_reservations.c.user_id == user_id)
                    .order_by(_reservations.c.id)
                ),
                "grants_received": await rows(
                    select(_grants).where(_grants.c.user_id == user_id).order_by(_grants.c.id)
                ),
                "grants_given": await rows(
                    select(_grants).where(_grants.c.granted_by == user_id).order_by(_grants.c.id)
                ),
            }

    async def delete_user_data(self, user_id: str) -> int:
        """Forget a member, keeping only what their budget needs; returns rows touched.

        The gate keys on the member's id, so deleting their charges and limit would
        reset their budget (a member at their limit could ``/forgetme`` and start
        again). What is kept stays under their id with nothing else personal:

        * charges inside the window: the amount and time only (no run id, no note),
          marked :data:`FORGOTTEN`; :meth:`anonymise_rolled_out` moves each to the
          :data:`FORGOTTEN` id once it leaves the window;
        * charges older than the window: moved to the :data:`FORGOTTEN` id at once
          (they no longer count; kept, like the anonymised audit runs, so the ledger
          and the audit still agree on what was spent);
        * grants to them that have not expired: the amount and expiry only (no giver,
          no reason), deleted once expired; expired ones are deleted now;
        * a limit an admin set: kept (it is the server's decision about that id);
        * open reservations: kept (runs in flight settle them).

        Grants they gave others as an admin stay, without their id.
        """
        async with self._transaction() as session:
            now = self.clock.now()
            since = now - self.window
            await self._lock_member(session, user_id)
            mine = _ledger.c.user_id == user_id
            touched = (
                await session.execute(
                    _ledger.update()
                    .where(mine, _ledger.c.at > since)
                    .values(run_id=None, note=FORGOTTEN)
                )
            ).rowcount
            touched += (
                await session.execute(
                    _ledger.update()
                    .where(mine, _ledger.c.at <= since)
                    .values(user_id=FORGOTTEN, run_id=None, note="")
                )
            ).rowcount
            theirs = _grants.c.user_id == user_id
            touched += (
                await session.execute(delete(_grants).where(theirs, _grants.c.expires_at <= now))
            ).rowcount
            touched += (
                await session.execute(
                    _grants.update().where(theirs).values(granted_by="", note=FORGOTTEN)
                )
            ).rowcount
            # Grants this member gave others as an admin stay, without their id.
            touched += (
                await session.execute(
                    _grants.update().where(_grants.c.granted_by == user_id).values(granted_by="")
                )
            ).rowcount
            open_count = await session.scalar(
                select(func.count()).where(_reservations.c.user_id == user_id)
            )
            if not open_count:
                # The row is only a lock row when no admin set a limit: it is made again
                # on the member's next reservation.
                touched += (
                    await session.execute(
                        delete(_members).where(
                            _members.c.user_id == user_id, _members.c.limit_micros.is_(None)
                        )
                    )
                ).rowcount
        return int(touched)

    async def anonymise_rolled_out(self) -> int:
        """Move the kept charges of forgotten members that left the window to the
        :data:`FORGOTTEN` id, and delete their expired grants; returns rows touched.

        The app runs it at start and hourly, so a forgotten member's id stays on a
        charge at most about an hour past the window.
        """
        async with self._transaction() as session:
            now = self.clock.now()
            touched = (
                await session.execute(
                    _ledger.update()
                    .where(_ledger.c.note == FORGOTTEN, _ledger.c.at <= now - self.window)
                    .values(user_id=FORGOTTEN, note="")
                )
            ).rowcount
            touched += (
                await session.execute(
                    delete(_grants).where(_grants.c.note == FORGOTTEN, _grants.c.expires_at <= now)
                )
            ).rowcount
        return int(touched)


def _undo_reservation(token: int | BudgetDetails) -> Callable[[Tx], None]:
    """The job that takes back a reservation its caller never received."""

    def undo(tx: Tx) -> None:
        if isinstance(token, int):
            tx.run(_DROP_RESERVATION, {"b_id": token})

    return undo
