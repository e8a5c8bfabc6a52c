"""Forgetting a member in the SQL ledger keeps what the gate needs and nothing else.

What stays under the member's id: the amount and time of each charge in the 7-day
window (no run id, no note), a limit an admin set, grants not yet expired (no giver, no
reason). Charges older than the window move to the anonymous id at once, kept ones when
they leave the window (:meth:`SqlBudgetLedger.anonymise_rolled_out`), so the ledger's
total stays what the audit's is.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from adapters.storage.audit_queries import FORGOTTEN
from adapters.storage.budget import SqlBudgetLedger
from adapters.storage.db import Database
from adapters.storage.tables import BudgetGrant, BudgetLedgerEntry, BudgetMember
from executor.agent import Caller
from executor.budget import WINDOW
from executor.testing import FakeClock

ALICE = Caller(user_id="424242", guild_id="g")
ADMIN = "999"


async def _rows(db: Database, table: type) -> list[dict[str, object]]:
    async with db.sessions() as s:
        return [dict(r) for r in (await s.execute(select(table.__table__))).mappings()]  # type: ignore[attr-defined]


async def _charge(ledger: SqlBudgetLedger, who: Caller, run_id: str, micros: int) -> None:
    await ledger.settle(await ledger.reserve(who, run_id, micros), micros)


async def test_forget_keeps_amounts_and_times_under_the_id_and_nothing_else(db: Database) -> None:
    clock = FakeClock()
    ledger = SqlBudgetLedger(db.sessions, default_limit_micros=5_000_000, clock=clock)
    await _charge(ledger, ALICE, "run-old", 7)
    await ledger.grant(ALICE.user_id, 5, granted_by=ADMIN, note="old", expires_at=clock.now())
    await clock.advance((WINDOW + timedelta(hours=1)).total_seconds())
    await ledger.set_limit(ALICE.user_id, 500_000)
    await ledger.grant(ALICE.user_id, 100_000, granted_by=ADMIN, note="Alice's exam week")
    await ledger.grant("someone", 1, granted_by=ALICE.user_id, note="from Alice")
    for i in range(4):
        await _charge(ledger, ALICE, f"run-{i}", 125_000)
    before = await ledger.status(ALICE.user_id)

    touched = await ledger.delete_user_data(ALICE.user_id)

    assert touched > 0
    assert await ledger.status(ALICE.user_id) == before  # the budget is not reset
    charges = await _rows(db, BudgetLedgerEntry)
    kept = [c for c in charges if c["user_id"] == ALICE.user_id]
    assert sorted(int(c["amount_micros"]) for c in kept) == [125_000] * 4  # type: ignore[call-overload]
    assert {(c["run_id"], c["note"]) for c in kept} == {(None, FORGOTTEN)}
    (old,) = [c for c in charges if c["user_id"] == FORGOTTEN]  # older than the window
    assert (old["amount_micros"], old["run_id"], old["note"]) == (7, None, "")
    grants = await _rows(db, BudgetGrant)
    assert sorted(
        (g["user_id"], g["amount_micros"], g["granted_by"], g["note"]) for g in grants
    ) == [
        (ALICE.user_id, 100_000, "", FORGOTTEN),  # live: amount and expiry only
        ("someone", 1, "", "from Alice"),  # she gave it: her id goes (the note is theirs)
    ]
    (member,) = await _rows(db, BudgetMember)
    assert (member["user_id"], member["limit_micros"]) == (ALICE.user_id, 500_000)

    # A week on, nothing of hers is left but the limit the admin set.
    await clock.advance(WINDOW.total_seconds())
    assert await ledger.anonymise_rolled_out() == 5
    assert [c for c in await _rows(db, BudgetLedgerEntry) if c["user_id"] != FORGOTTEN] == []
    assert {c["note"] for c in await _rows(db, BudgetLedgerEntry)} == {""}
    assert [g["user_id"] for g in await _rows(db, BudgetGrant)] == ["someone"]
    assert sum(int(c["amount_micros"]) for c in await _rows(db, BudgetLedgerEntry)) == 500_007  # type: ignore[call-overload]
    assert (await ledger.status(ALICE.user_id)).limit_micros == 500_000


async def test_forget_without_a_limit_drops_the_lock_row_but_not_a_run_in_flight(
    db: Database,
) -> None:
    ledger = SqlBudgetLedger(db.sessions, default_limit_micros=1_000_000, clock=FakeClock())
    await _charge(ledger, ALICE, "a", 10)
    await ledger.delete_user_data(ALICE.user_id)
    assert await _rows(db, BudgetMember) == []
    assert (await ledger.status(ALICE.user_id)).spent_micros == 10

    held = await ledger.reserve(ALICE, "in flight", 100)
    await ledger.delete_user_data(ALICE.user_id)
    assert [m["user_id"] for m in await _rows(db, BudgetMember)] == [ALICE.user_id]
    await ledger.settle(held, 20)
    assert (await ledger.status(ALICE.user_id)).spent_micros == 30
