"""Crash recovery, run once at start-up before any run begins.

A process that dies mid-run leaves its runs marked ``running`` and their budget
reservations open. :func:`recover` closes each such run as ``interrupted``, with the
steps, tokens and cost its audit rows show, and settles every open reservation:

* the run is in the audit trail: charge what the audit shows it spent: every model
  response that finished (its attempt row carries its usage and is written at once,
  before the step ends), every request stopped in flight (its attempt row carries its
  input's cost), what compaction and the critic's judgements cost (their event rows),
  and the request the process died in, if it died with one in flight: the input
  tokens its ``model_request`` row counted, at its price (its data's
  ``unanswered_micros``), as the run loop charges a request stopped in flight. A
  request was in flight when no attempt row follows it (the run had recorded
  ``attempts_before`` attempts when it was sent, and has as many now). After a
  failover the failed candidate's attempt row (with its charge, when its provider
  billed it) and a request row for the next candidate are written before that one is
  asked: a process that dies while it answers is charged both;
* the run never reached the audit trail (the process died between reserving and
  starting): charge nothing, as no model was called.

Which runs and reservations: only **orphans**, those whose owner (the instance that
ran them, :mod:`adapters.storage.instances`) has no row left: an instance's row is
removed when its lease expires (``reap``), so a live process's runs are never touched,
even with several processes on one PostgreSQL. Rows with no owner at all were written
before instances existed (or by a process that registered none): they are orphans only
at start-up (``unowned=True``), while this process holds the lock that keeps a coterie
too old to register off the database (:mod:`adapters.storage.lock`), so
:func:`recover_interrupted_runs`, the start-up entry point, refuses to run without it.
On PostgreSQL the runs are selected ``FOR UPDATE SKIP LOCKED``: two survivors settling
the same dead instance at once each close a run once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters.storage.budget import SqlBudgetLedger
from adapters.storage.db import IMMEDIATE, translate_errors
from adapters.storage.tables import (
    AuditEventRow,
    AuditModelAttempt,
    AuditRun,
    AuditStep,
    BudgetReservationRow,
    Instance,
)
from executor.agent import RunStatus
from executor.budget import format_usd
from executor.ports import Clock, RealClock

__all__ = [
    "INTERRUPTED_ERROR",
    "RUNNING",
    "RecoveryReport",
    "recover",
    "recover_interrupted_runs",
]

_runs = AuditRun.__table__  # type: ignore[attr-defined]
_steps = AuditStep.__table__  # type: ignore[attr-defined]
_attempts = AuditModelAttempt.__table__  # type: ignore[attr-defined]
_events = AuditEventRow.__table__  # type: ignore[attr-defined]
_reservations = BudgetReservationRow.__table__  # type: ignore[attr-defined]
_instances = Instance.__table__  # type: ignore[attr-defined]

#: The status of a run's row while it runs (the kernel has no such RunStatus: a
#: result only exists once a run has ended).
RUNNING = "running"
INTERRUPTED_ERROR = "the process stopped before the run finished"


@dataclass(slots=True)
class RecoveryReport:
    interrupted_runs: list[str] = field(default_factory=list)
    settled_reservations: int = 0
    charged_micros: int = 0

    def __str__(self) -> str:
        return (
            f"recovered {len(self.interrupted_runs)} interrupted run(s), settled "
            f"{self.settled_reservations} reservation(s) for {format_usd(self.charged_micros)}"
        )


async def _in_flight(session: AsyncSession, run_id: str) -> tuple[int, int]:
    """The input tokens and cost of the request the run died in, if it died with one in
    flight (no attempt recorded after its last request); (0, 0) otherwise."""
    last = await session.scalar(
        select(_events.c.data)
        .where(_events.c.run_id == run_id, _events.c.kind == "model_request")
        .order_by(_events.c.id.desc())
        .limit(1)
    )
    if not isinstance(last, dict) or not isinstance(last.get("attempts_before"), int):
        return 0, 0  # no request, or one recorded before requests said what they owe
    attempts = await session.scalar(
        select(func.count()).select_from(_attempts).where(_attempts.c.run_id == run_id)
    )
    if int(attempts or 0) != last["attempts_before"]:
        return 0, 0  # answered (or failed, or stopped and charged on its attempt)
    return int(last.get("input_tokens", 0)), int(last.get("unanswered_micros", 0))


async def recover_interrupted_runs(
    sessions: async_sessionmaker[AsyncSession],
    budget: SqlBudgetLedger | None = None,
    *,
    clock: Clock | None = None,
    unowned: bool = True,
) -> RecoveryReport:
    """:func:`recover` at start-up: its report says how many runs were closed as
    interrupted and which (their members may be offered to resume them). Only while
    this process holds the database's lock (:mod:`adapters.storage.lock`)."""
    from adapters.storage.db import DatabaseError
    from adapters.storage.lock import holds_lock

    if not holds_lock(sessions.kw["bind"].url):
        raise DatabaseError(
            "crash recovery needs the single-instance lock on the database "
            "(take it with adapters.storage.lock.InstanceLock first)"
        )
    return await recover(sessions, budget, clock=clock, unowned=unowned)


def _orphaned(owner: ColumnElement[Any], *, unowned: bool) -> ColumnElement[bool]:
    """Owned by an instance that has no row (it was reaped), or by nobody (``unowned``)."""
    gone = owner.not_in(select(_instances.c.id))
    return or_(owner.is_(None), gone) if unowned else gone


async def recover(
    sessions: async_sessionmaker[AsyncSession],
    budget: SqlBudgetLedger | None = None,
    *,
    clock: Clock | None = None,
    unowned: bool = True,
) -> RecoveryReport:
    """Close orphaned runs left running as interrupted; settle orphaned reservations."""
    if clock is None:
        clock = budget.clock if budget is not None else RealClock()
    report = RecoveryReport()
    url = sessions.kw["bind"].url
    now = clock.now()
    with translate_errors(url):
        async with sessions() as session, session.begin():
            await session.connection(execution_options=IMMEDIATE)
            running = list(
                await session.scalars(
                    select(_runs.c.run_id)
                    .where(_runs.c.status == RUNNING, _orphaned(_runs.c.owner, unowned=unowned))
                    .with_for_update(skip_locked=True)
                )
            )
            for run_id in running:
                steps = (
                    await session.execute(
                        select(
                            func.count(),
                            func.coalesce(func.max(_steps.c.step), 0),
                            func.coalesce(func.sum(_steps.c.input_tokens), 0),
                            func.coalesce(func.sum(_steps.c.output_tokens), 0),
                            func.coalesce(func.sum(_steps.c.cost_micros), 0),
                        ).where(_steps.c.run_id == run_id)
                    )
                ).one()
                answered = (
                    await session.execute(
                        select(
                            func.coalesce(func.sum(_attempts.c.input_tokens), 0),
                            func.coalesce(func.sum(_attempts.c.output_tokens), 0),
                            func.coalesce(func.sum(_attempts.c.cost_micros), 0),
                        ).where(_attempts.c.run_id == run_id)
                    )
                ).one()
                extra = await session.scalar(
                    select(func.coalesce(func.sum(_events.c.cost_micros), 0)).where(
                        _events.c.run_id == run_id
                    )
                )
                owed_tokens, owed = await _in_flight(session, run_id)
                # Why the larger of attempts and steps: every finished step has its
                # answering attempt, and an attempt may have no step yet (the crash came
                # between them); rows written before attempts carried usage have only steps.
                await session.execute(
                    update(_runs)
                    .where(_runs.c.run_id == run_id)
                    .values(
                        status=RunStatus.INTERRUPTED.value,
                        ended_at=now,
                        steps=int(steps[1]),
                        input_tokens=max(int(steps[2]), int(answered[0])) + owed_tokens,
                        output_tokens=max(int(steps[3]), int(answered[1])),
                        cost_micros=max(int(steps[4]), int(answered[2])) + int(extra or 0) + owed,
                        error=INTERRUPTED_ERROR,
                        error_kind="interrupted",
                    )
                )
                report.interrupted_runs.append(run_id)

    ledger = budget or SqlBudgetLedger(sessions, default_limit_micros=0, clock=clock)
    # Why not while the run is still running: another survivor is closing it (its row
    # was skipped, locked); charged before that commits, it would be charged nothing.
    still_running = _reservations.c.run_id.in_(
        select(_runs.c.run_id).where(_runs.c.status == RUNNING)
    )
    orphans = and_(_orphaned(_reservations.c.owner, unowned=unowned), ~still_running)
    for reservation in await ledger.open_reservations(orphaned=orphans):
        async with sessions() as session:
            cost = await session.scalar(
                select(_runs.c.cost_micros).where(_runs.c.run_id == reservation.run_id)
            )
        charged = int(cost or 0)
        if await ledger.settle_by_id(reservation.id, charged):
            report.settled_reservations += 1
            report.charged_micros += charged
    return report
