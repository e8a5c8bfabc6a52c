"""Crash recovery, run once at start-up before any run begins.

A process that dies mid-run leaves its runs marked ``running`` and their budget
reservations open. :func:`recover` closes each such run as ``interrupted``, with the
steps, tokens and cost its audit rows show, and settles every open reservation:

* the run is in the audit trail: charge what the audit shows it spent: every model
  response that finished (its attempt row carries its usage and is written at once,
  before the step ends) plus what compaction cost (its event rows);
* the run never reached the audit trail (the process died between reserving and
  starting): charge nothing, as no model was called.

Why every open reservation: coterie is one process per database, so at start-up no
run is in flight and every open reservation is an orphan. That holds only while this
process holds the single-instance lock (:mod:`adapters.storage.lock`), so
:func:`recover_interrupted_runs`, the start-up entry point, refuses to run without it:
a second process would close the first one's live runs and release their reservations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters.storage.budget import SqlBudgetLedger
from adapters.storage.db import IMMEDIATE, translate_errors
from adapters.storage.tables import AuditEventRow, AuditModelAttempt, AuditRun, AuditStep
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


async def recover_interrupted_runs(
    sessions: async_sessionmaker[AsyncSession],
    budget: SqlBudgetLedger | None = None,
    *,
    clock: Clock | None = None,
) -> list[str]:
    """:func:`recover`, returning the ids of the runs it closed as interrupted (the
    runs whose members may be offered to resume them). Only while this process holds
    the database's single-instance lock."""
    from adapters.storage.db import DatabaseError
    from adapters.storage.lock import holds_lock

    if not holds_lock(sessions.kw["bind"].url):
        raise DatabaseError(
            "crash recovery needs the single-instance lock on the database "
            "(take it with adapters.storage.lock.InstanceLock first)"
        )
    return (await recover(sessions, budget, clock=clock)).interrupted_runs


async def recover(
    sessions: async_sessionmaker[AsyncSession],
    budget: SqlBudgetLedger | None = None,
    *,
    clock: Clock | None = None,
) -> RecoveryReport:
    """Close runs left running as interrupted; settle every open reservation."""
    if clock is None:
        clock = budget.clock if budget is not None else RealClock()
    report = RecoveryReport()
    url = sessions.kw["bind"].url
    now = clock.now()
    with translate_errors(url):
        async with sessions() as session, session.begin():
            await session.connection(execution_options=IMMEDIATE)
            running = list(
                await session.scalars(select(_runs.c.run_id).where(_runs.c.status == RUNNING))
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
                        input_tokens=max(int(steps[2]), int(answered[0])),
                        output_tokens=max(int(steps[3]), int(answered[1])),
                        cost_micros=max(int(steps[4]), int(answered[2])) + int(extra or 0),
                        error=INTERRUPTED_ERROR,
                        error_kind="interrupted",
                    )
                )
                report.interrupted_runs.append(run_id)

    ledger = budget or SqlBudgetLedger(sessions, default_limit_micros=0, clock=clock)
    for reservation in await ledger.open_reservations():
        async with sessions() as session:
            cost = await session.scalar(
                select(_runs.c.cost_micros).where(_runs.c.run_id == reservation.run_id)
            )
        charged = int(cost or 0)
        if await ledger.settle_by_id(reservation.id, charged):
            report.settled_reservations += 1
            report.charged_micros += charged
    return report
