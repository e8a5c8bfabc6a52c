"""``ScheduleStore``: the schedules table (the scheduler's source of truth) and its slots.

A schedule runs a skill by cron expression or once (``run_at``), as its creator, in a
channel. Each slot it reaches is one ``schedule_slots`` row, unique per (schedule,
slot time), where the slot time is the trigger's time *before* any stagger, in UTC:

* :meth:`ScheduleStore.claim_slot` inserts the ``running`` row before the run starts;
  a slot that already has a row is refused (the unique constraint decides, so two
  processes or a restart cannot both run it);
* :meth:`ScheduleStore.finish_slot` closes it ``ok`` or ``failed`` and keeps the
  schedule's run of consecutive failures;
* :meth:`ScheduleStore.record_skipped` writes a ``skipped`` row with the reason
  (the previous run was still going, missed while coterie was down);
* when the scheduler starts (or a new leader takes it over),
  :meth:`ScheduleStore.stranded_slots` lists the slots a crash left ``running``: with
  :attr:`ScheduleStore.owner` set (this process is a registered instance), only those
  whose owner is gone (its row in ``instances`` removed when its lease expired) or
  unknown; the scheduler gives each either its one retry
  (:meth:`ScheduleStore.retry_slot`: a conditional ``UPDATE`` from attempt 1 to 2, so
  two processes cannot both pass) or closes it as failed
  (:meth:`ScheduleStore.close_interrupted`). A slot runs at most twice, never at once.

Deleting a schedule deletes its slots (``ON DELETE CASCADE``). A member's schedules go
with their data (``SkillStore.delete_user_data``); slots hold no member id of their own.
"""

from __future__ import annotations

import builtins as _builtins
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import bindparam, column, func, or_, select, update
from sqlalchemy import delete as sa_delete
from sqlalchemy import table as sa_table
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col

from skills import scheduling
from skills.errors import ScheduleError, TooManySchedules
from skills.slots import MISSED_POLICIES, Missed, ScheduleInfo, SlotInfo, SlotStatus
from skills.tables import Schedule, ScheduleSlot, Skill

__all__ = [
    "MISSED_POLICIES",
    "Missed",
    "ScheduleInfo",
    "ScheduleStore",
    "SlotInfo",
    "SlotStatus",
]

_REASON_MAX = 300

# Why by name: the instances table is storage's (adapters.storage.tables), which this
# layer may not import; a slot's owner is alive while its row is there.
_instances = sa_table("instances", column("id"))


def _now() -> datetime:
    return datetime.now(UTC)


def _short(text: str | None) -> str | None:
    if text is None:
        return None
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 1] + "…"


def _utc(moment: datetime) -> datetime:
    if moment.utcoffset() is None:
        raise ValueError("schedule times must be timezone-aware")
    return moment.astimezone(UTC)


def _info(row: Schedule, skill: str | None = "") -> ScheduleInfo:
    assert row.id is not None
    missed: Missed = "catch-up" if row.missed == "catch-up" else "skip"
    return ScheduleInfo(
        id=row.id,
        skill_id=row.skill_id,
        guild_id=row.guild_id,
        channel_id=row.channel_id,
        created_by=row.created_by,
        cron=row.cron,
        run_at=row.run_at,
        timezone=row.timezone,
        arguments={str(k): str(v) for k, v in (row.arguments or {}).items()},
        missed=missed,
        enabled=row.enabled,
        next_run_at=row.next_run_at,
        last_run_at=row.last_run_at,
        last_status=row.last_status,
        last_run_id=row.last_run_id,
        consecutive_failures=row.consecutive_failures,
        disabled_reason=row.disabled_reason,
        stagger_s=row.stagger_s,
        created_at=row.created_at,
        skill=skill or "",
    )


def _slot(row: ScheduleSlot) -> SlotInfo:
    status: Any = row.status
    return SlotInfo(
        schedule_id=row.schedule_id,
        slot_at=row.slot_at,
        status=status,
        reason=row.reason,
        run_id=row.run_id,
        started_at=row.started_at,
        ended_at=row.ended_at,
        attempt=row.attempt,
        owner=row.owner,
    )


def _slot_is(schedule_id: int, slot_at: datetime) -> Any:
    return (col(ScheduleSlot.schedule_id) == schedule_id) & (
        col(ScheduleSlot.slot_at) == _utc(slot_at)
    )


def _running(schedule_id: int, slot_at: datetime, attempt: int) -> Any:
    """The slot, while that attempt of it is running (what every close is guarded by)."""
    return (
        _slot_is(schedule_id, slot_at)
        & (col(ScheduleSlot.status) == "running")
        & (col(ScheduleSlot.attempt) == attempt)
    )


# A schedule with its skill's name, in one statement.
_WITH_SKILL = select(Schedule, col(Skill.name)).outerjoin(
    Skill, col(Skill.id) == col(Schedule.skill_id)
)


class ScheduleStore:
    """Schedules and their slots. Takes an ``async_sessionmaker``; opens no engine."""

    def __init__(self, sessions: async_sessionmaker[Any]) -> None:
        self._sessions = sessions
        # The instance this process registered as: slots it claims carry it. None: it
        # registered none (one process, a test), and every slot left running is stranded.
        self.owner: str | None = None

    # --- schedules ---------------------------------------------------------------------

    async def create(
        self,
        *,
        skill_id: int,
        guild_id: str,
        channel_id: str,
        created_by: str,
        cron: str | None = None,
        run_at: datetime | None = None,
        timezone: str = "UTC",
        arguments: Mapping[str, str] | None = None,
        missed: str = "skip",
        max_per_member: int | None = None,
    ) -> ScheduleInfo:
        """Save a schedule: exactly one of ``cron`` and ``run_at``.

        Checks what the table must never hold (an unknown zone, an unreadable cron
        expression, an unknown missed-run policy) and, with ``max_per_member``, the
        member's cap in the same transaction as the insert. Policy checks (minimum
        interval, budget, a time in the past) are the caller's. The stagger is set here,
        from the new id. The caller then gives it a job (``SkillScheduler.add``).
        """
        if (cron is None) == (run_at is None):
            raise ScheduleError("give exactly one of cron: (repeating) or at: (once)")
        if missed not in MISSED_POLICIES:
            raise ScheduleError(f"missed: is `skip` or `catch-up`, not {missed[:20]!r}")
        tz = scheduling.zone(timezone)
        if cron is not None:
            cron = " ".join(cron.split())
            scheduling.parse_cron(cron, tz)
        row = Schedule(
            skill_id=skill_id,
            guild_id=guild_id,
            channel_id=channel_id,
            created_by=created_by,
            cron=cron,
            run_at=_utc(run_at) if run_at is not None else None,
            timezone=tz.key,
            arguments=dict(arguments or {}),
            missed=missed,
        )
        async with self._sessions() as session, session.begin():
            # Why insert first: the write takes SQLite's lock, so the count below cannot
            # race another member's insert.
            session.add(row)
            await session.flush()
            assert row.id is not None
            row.stagger_s = scheduling.stagger_s(row.id, cron)
            if max_per_member is not None:
                mine = await self._count(session, created_by)
                if mine > max_per_member:
                    raise TooManySchedules(
                        f"you already have {mine - 1} schedules, the most a member may have; "
                        "remove one with /skill unschedule"
                    )
            await session.flush()
            name = await session.scalar(select(col(Skill.name)).where(col(Skill.id) == skill_id))
            return _info(row, name)

    async def get(self, schedule_id: int) -> ScheduleInfo | None:
        found = await self._select(col(Schedule.id) == schedule_id)
        return found[0] if found else None

    async def _select(self, *where: Any) -> _builtins.list[ScheduleInfo]:
        async with self._sessions() as session:
            rows = await session.execute(_WITH_SKILL.where(*where).order_by(col(Schedule.id)))
            return [_info(row, name) for row, name in rows.all()]

    async def list(
        self, guild_id: str, *, created_by: str | None = None
    ) -> _builtins.list[ScheduleInfo]:
        """A guild's schedules (enabled or not), oldest first; only one member's with
        ``created_by``."""
        where = [col(Schedule.guild_id) == guild_id]
        if created_by is not None:
            where.append(col(Schedule.created_by) == created_by)
        return await self._select(*where)

    async def for_skill(self, skill_id: int) -> _builtins.list[ScheduleInfo]:
        return await self._select(col(Schedule.skill_id) == skill_id)

    async def enabled(self) -> _builtins.list[ScheduleInfo]:
        """Every enabled schedule: what the scheduler's jobs are built from."""
        return await self._select(col(Schedule.enabled).is_(True))

    async def delete(self, schedule_id: int) -> bool:
        """Delete a schedule and its slots; False when there was none."""
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                sa_delete(Schedule).where(col(Schedule.id) == schedule_id)
            )
            return bool(getattr(result, "rowcount", 0))

    @staticmethod
    async def _count(session: Any, created_by: str) -> int:
        stmt = (
            select(func.count())
            .select_from(Schedule)
            .where(col(Schedule.created_by) == created_by, col(Schedule.enabled).is_(True))
        )
        return int((await session.execute(stmt)).scalar_one())

    async def count_for_member(self, created_by: str) -> int:
        """How many *enabled* schedules a member has (a finished one-shot or a schedule
        disabled after failures does not count against the cap)."""
        async with self._sessions() as session:
            return await self._count(session, created_by)

    async def set_next_run(self, schedule_id: int, at: datetime | None) -> None:
        await self.set_next_runs({schedule_id: at})

    async def set_next_runs(self, next_runs: Mapping[int, datetime | None]) -> None:
        """Record when each schedule fires next (with its stagger), in one transaction."""
        if not next_runs:
            return
        table: Any = Schedule.__table__  # type: ignore[attr-defined]
        # Why Core with a list of parameters: one executemany, not one UPDATE per row
        # (1,000 schedules at start-up: 20 ms instead of 800).
        stmt = (
            table.update()
            .where(table.c.id == bindparam("schedule_id"))
            .values(next_run_at=bindparam("at", type_=table.c.next_run_at.type))
        )
        params = [
            {"schedule_id": sid, "at": _utc(at) if at is not None else None}
            for sid, at in next_runs.items()
        ]
        async with self._sessions() as session, session.begin():
            await session.execute(stmt, params)

    async def disable(self, schedule_id: int, reason: str) -> bool:
        """Disable a schedule and say why; False when there is no such schedule."""
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(Schedule)
                .where(col(Schedule.id) == schedule_id)
                .values(
                    enabled=False,
                    disabled_reason=_short(reason),
                    next_run_at=None,
                    updated_at=_now(),
                )
            )
            return bool(getattr(result, "rowcount", 0))

    # --- slots -------------------------------------------------------------------------

    async def claim_slot(
        self,
        schedule_id: int,
        slot_at: datetime,
        *,
        started_at: datetime,
        run_id: str | None = None,
    ) -> bool:
        """Mark a slot ``running`` before its run starts, with the id its run will have
        (so a restart that interrupts it knows the run to resume). False when the slot
        already has a row (it ran, is running, or was skipped) or the schedule is gone:
        do not run it.
        """
        try:
            async with self._sessions() as session, session.begin():
                session.add(
                    ScheduleSlot(
                        schedule_id=schedule_id,
                        slot_at=_utc(slot_at),
                        status="running",
                        run_id=run_id,
                        started_at=_utc(started_at),
                        owner=self.owner,
                    )
                )
        except IntegrityError:
            # Why the constraint and not a SELECT first: it is the only check two
            # processes (or a restarted one) cannot both pass.
            return False
        return True

    async def finish_slot(
        self,
        schedule_id: int,
        slot_at: datetime,
        status: Literal["ok", "failed"],
        *,
        run_id: str | None = None,
        reason: str | None = None,
        ended_at: datetime | None = None,
        attempt: int = 1,
    ) -> int:
        """Close a claimed (``running``) slot and return the schedule's consecutive
        failures after it (0 after ``ok``; one more after ``failed``). Also sets the
        schedule's last status, run time and run id. Only the ``attempt`` that is running
        is closed: a slot already closed (say, as interrupted by a restart while this run
        went on) or claimed again for its retry is left as it is.

        ``reason`` None keeps the slot's reason (a retried slot says it was retried)."""
        if status not in ("ok", "failed"):
            raise ValueError(f"a slot finishes ok or failed, not {status!r}")
        ended = _utc(ended_at) if ended_at is not None else _now()
        values: dict[str, Any] = {"status": status, "run_id": run_id, "ended_at": ended}
        if reason is not None:
            values["reason"] = _short(reason)
        async with self._sessions() as session, session.begin():
            # Why RETURNING: the start time and the failure count come back with the
            # writes, not in two more queries.
            closed = (
                await session.execute(
                    update(ScheduleSlot)
                    .where(_running(schedule_id, slot_at, attempt))
                    .values(**values)
                    .returning(col(ScheduleSlot.started_at))
                )
            ).first()
            if closed is None:
                count = await session.scalar(
                    select(col(Schedule.consecutive_failures)).where(
                        col(Schedule.id) == schedule_id
                    )
                )
                return int(count or 0)
            failures: Any = 0 if status == "ok" else col(Schedule.consecutive_failures) + 1
            count = (
                await session.execute(
                    update(Schedule)
                    .where(col(Schedule.id) == schedule_id)
                    .values(
                        consecutive_failures=failures,
                        last_status=status,
                        last_run_at=closed[0] or ended,
                        last_run_id=run_id,
                        updated_at=ended,
                    )
                    .returning(col(Schedule.consecutive_failures))
                )
            ).scalar_one_or_none()
            return int(count or 0)

    async def record_skipped(
        self, schedule_id: int, slot_at: datetime, reason: str, *, at: datetime | None = None
    ) -> bool:
        """Record a slot as skipped, with why. Idempotent: a slot that already has a row
        keeps it (False)."""
        return bool(await self.record_skipped_many([(schedule_id, slot_at, reason)], at=at))

    async def record_skipped_many(
        self, slots: Iterable[tuple[int, datetime, str]], *, at: datetime | None = None
    ) -> int:
        """Record many skipped slots in one transaction (start-up); returns how many were
        new. Slots that already have a row are left as they are."""
        wanted = {(sid, _utc(slot_at)): reason for sid, slot_at, reason in slots}
        if not wanted:
            return 0
        when = _utc(at) if at is not None else _now()
        table: Any = ScheduleSlot.__table__  # type: ignore[attr-defined]
        rows: _builtins.list[dict[str, Any]] = [
            {
                "schedule_id": sid,
                "slot_at": slot_at,
                "status": "skipped",
                "reason": _short(reason),
                "started_at": when,
                "ended_at": when,
            }
            for (sid, slot_at), reason in wanted.items()
        ]
        # Why no SELECT first: a transaction that reads before it writes fails at once on
        # SQLite (WAL) when another connection wrote in between; one whose first
        # statement writes waits its turn.
        try:
            async with self._sessions() as session, session.begin():
                await session.execute(table.insert(), rows)  # one executemany
                await self._mark_skipped(session, {row["schedule_id"] for row in rows})
            return len(rows)
        except IntegrityError:
            pass  # some slot has a row already: one savepoint per slot
        written: set[int] = set()
        count = 0
        async with self._sessions() as session, session.begin():
            for row in rows:
                try:
                    async with session.begin_nested():
                        await session.execute(table.insert().values(**row))
                except IntegrityError:
                    continue  # the slot has a row already (or its schedule is gone)
                written.add(row["schedule_id"])
                count += 1
            await self._mark_skipped(session, written)
        return count

    @staticmethod
    async def _mark_skipped(session: Any, schedule_ids: set[int]) -> None:
        if schedule_ids:
            await session.execute(
                update(Schedule)
                .where(col(Schedule.id).in_(schedule_ids))
                .values(last_status="skipped")
            )

    async def running_slot(self, schedule_id: int) -> SlotInfo | None:
        """The schedule's slot that is running now, if any."""
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(ScheduleSlot)
                    .where(
                        col(ScheduleSlot.schedule_id) == schedule_id,
                        col(ScheduleSlot.status) == "running",
                    )
                    .order_by(col(ScheduleSlot.slot_at).desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            return _slot(row) if row is not None else None

    async def recent_slots(self, schedule_id: int, n: int = 10) -> _builtins.list[SlotInfo]:
        """The schedule's last ``n`` slots, newest first."""
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(ScheduleSlot)
                    .where(col(ScheduleSlot.schedule_id) == schedule_id)
                    .order_by(col(ScheduleSlot.slot_at).desc())
                    .limit(n)
                )
            ).scalars()
            return [_slot(row) for row in rows]

    async def last_slot(self, schedule_id: int) -> SlotInfo | None:
        recent = await self.recent_slots(schedule_id, 1)
        return recent[0] if recent else None

    async def last_slot_times(self) -> dict[int, datetime]:
        """Each schedule's latest recorded slot time (any status): one query at start-up."""
        async with self._sessions() as session:
            rows = await session.execute(
                select(col(ScheduleSlot.schedule_id), func.max(col(ScheduleSlot.slot_at))).group_by(
                    col(ScheduleSlot.schedule_id)
                )
            )
            return {int(sid): _as_utc(at) for sid, at in rows.all() if at is not None}

    async def running_slots(self) -> _builtins.list[SlotInfo]:
        """Every slot ``running`` now, whoever runs it."""
        return await self._running_where()

    async def stranded_slots(self) -> _builtins.list[SlotInfo]:
        """The slots left ``running`` by a process that is gone (a crash or a kill).

        Without :attr:`owner` (one process, holding the database): every running slot.
        With it: those whose owner has no row in ``instances`` any more (it was reaped:
        its lease expired), or that carry no owner (claimed by a coterie from before
        owners); never a live instance's, this one's included."""
        if self.owner is None:
            return await self._running_where()
        owner = col(ScheduleSlot.owner)
        return await self._running_where(
            or_(owner.is_(None), owner.not_in(select(_instances.c.id)))
        )

    async def _running_where(self, *where: Any) -> _builtins.list[SlotInfo]:
        async with self._sessions() as session:
            rows = await session.execute(
                select(ScheduleSlot)
                .where(col(ScheduleSlot.status) == "running", *where)
                .order_by(col(ScheduleSlot.schedule_id), col(ScheduleSlot.slot_at))
            )
            return [_slot(row) for row in rows.scalars()]

    async def close_interrupted(
        self, slots: Iterable[tuple[SlotInfo, str]], *, at: datetime | None = None
    ) -> int:
        """Close slots a crash left running as failed, each with its reason; returns
        how many were still running (that attempt) and are now closed.

        The schedule's last status becomes ``failed``, but its consecutive failures do
        not grow: a restart is not the skill failing."""
        wanted = _builtins.list(slots)
        if not wanted:
            return 0
        when = _utc(at) if at is not None else _now()
        closed: set[int] = set()
        count = 0
        async with self._sessions() as session, session.begin():
            for slot, reason in wanted:
                result = await session.execute(
                    update(ScheduleSlot)
                    .where(_running(slot.schedule_id, slot.slot_at, slot.attempt))
                    .values(status="failed", reason=_short(reason), ended_at=when)
                )
                if getattr(result, "rowcount", 0):
                    closed.add(slot.schedule_id)
                    count += 1
            if closed:
                await session.execute(
                    update(Schedule)
                    .where(col(Schedule.id).in_(closed))
                    .values(last_status="failed", updated_at=when)
                )
        return count

    async def retry_slot(
        self, slot: SlotInfo, *, reason: str, started_at: datetime, run_id: str | None = None
    ) -> bool:
        """Claim a slot a crash left running for its next attempt, whose run will be
        ``run_id``: True for the one caller whose conditional ``UPDATE`` (still running,
        still ``slot.attempt``) took it, False for anyone else. ``reason`` stays on the
        slot unless its run finishes with one of its own."""
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(ScheduleSlot)
                .where(_running(slot.schedule_id, slot.slot_at, slot.attempt))
                .values(
                    attempt=slot.attempt + 1,
                    reason=_short(reason),
                    run_id=run_id,
                    started_at=_utc(started_at),
                    ended_at=None,
                    owner=self.owner,
                )
            )
            return bool(getattr(result, "rowcount", 0))


def _as_utc(value: Any) -> datetime:
    # func.max() over a UTCDateTime column comes back through the column's type on
    # PostgreSQL, as a string on SQLite (the aggregate loses the type there).
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    moment: datetime = value
    return moment.replace(tzinfo=UTC) if moment.utcoffset() is None else moment.astimezone(UTC)
