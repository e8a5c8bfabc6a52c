"""The budget ledger on a SQLite file (issue 19): a reservation, a growth and a settle
are each one call in the database's writer thread, nothing through the engine, and a
reservation whose caller was cancelled while the thread committed it is taken back."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from sqlalchemy import event, func, select

import adapters.storage.budget as budget
from adapters.storage.budget import SqlBudgetLedger
from adapters.storage.db import Database
from adapters.storage.tables import BudgetLedgerEntry, BudgetReservationRow
from executor.agent import Caller
from executor.errors import BudgetExceeded

MEMBER = Caller(user_id="42")


async def _count(db: Database, model: Any) -> int:
    async with db.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def test_the_gate_writes_in_the_writer_thread_not_through_the_engine(
    sqlite_db: Database,
) -> None:
    ledger = SqlBudgetLedger(sqlite_db.sessions, default_limit_micros=1_000)
    statements: list[str] = []
    event.listen(
        sqlite_db.engine.sync_engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_: statements.append(statement),
    )
    reservation = await ledger.reserve(MEMBER, "r1", 300)
    grown = await ledger.grow(reservation, 600)
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve(MEMBER, "r2", 500)  # 600 held + 500 > 1,000
    await ledger.settle(grown, 250)
    assert statements == []  # all of it in the writer's own connection
    details = refused.value.details
    assert (details.reserved_micros, details.estimate_micros, details.limit_micros) == (
        600,
        500,
        1_000,
    )
    assert grown.amount_micros == 600
    status = await ledger.status(MEMBER.user_id)
    assert (status.spent_micros, status.reserved_micros) == (250, 0)
    assert await ledger.settle_by_id(int(grown.token), 250) is False  # never twice
    assert await _count(sqlite_db, BudgetLedgerEntry) == 1


async def test_a_reservation_its_cancelled_caller_never_received_is_taken_back(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_thread, release = threading.Event(), threading.Event()
    reserve_job = budget._reserve_job

    def held(tx: Any, **kwargs: Any) -> Any:
        outcome = reserve_job(tx, **kwargs)
        in_thread.set()
        release.wait(10)
        return outcome

    monkeypatch.setattr(budget, "_reserve_job", held)
    ledger = SqlBudgetLedger(sqlite_db.sessions, default_limit_micros=1_000)
    task = asyncio.ensure_future(ledger.reserve(MEMBER, "r1", 300))
    await asyncio.to_thread(in_thread.wait, 10)
    task.cancel()
    await asyncio.sleep(0)  # the cancellation lands while the thread still holds the job
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _count(sqlite_db, BudgetReservationRow) == 0
    monkeypatch.setattr(budget, "_reserve_job", reserve_job)
    assert (await ledger.reserve(MEMBER, "r2", 1_000)).amount_micros == 1_000  # nothing held
