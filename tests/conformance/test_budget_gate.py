"""The budget gate contract, run against the in-memory ledger, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from adapters.storage.budget import SqlBudgetLedger
from adapters.storage.db import Database
from executor.agent import Caller
from executor.budget import WINDOW, InMemoryBudgetLedger
from executor.errors import BudgetExceeded
from executor.ports import BudgetGate
from executor.testing import FakeClock

LIMIT = 1_000_000  # $1.00


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def gate(request: pytest.FixtureRequest, clock: FakeClock) -> Any:
    if request.param == "memory":
        return InMemoryBudgetLedger(LIMIT, clock=clock)
    db: Database = request.getfixturevalue("sqlite_db" if request.param == "sqlite" else "pg_db")
    return SqlBudgetLedger(db.sessions, default_limit_micros=LIMIT, clock=clock)


def who(user: str = "u1", guild: str | None = "g1") -> Caller:
    return Caller(user_id=user, guild_id=guild)


async def test_is_a_budget_gate(gate: Any) -> None:
    assert isinstance(gate, BudgetGate)


async def test_reserve_within_limit(gate: Any) -> None:
    r = await gate.reserve(who(), "run-1", 400_000)
    assert (r.run_id, r.amount_micros, r.caller) == ("run-1", 400_000, who())
    status = await gate.status("u1")
    assert (status.spent_micros, status.reserved_micros, status.limit_micros) == (0, 400_000, LIMIT)


async def test_exactly_at_the_limit_is_allowed_one_more_micro_is_not(gate: Any) -> None:
    await gate.reserve(who(), "a", LIMIT - 1)
    await gate.reserve(who(), "b", 1)
    with pytest.raises(BudgetExceeded) as info:
        await gate.reserve(who(), "c", 1)
    d = info.value.details
    assert (d.spent_micros, d.reserved_micros, d.estimate_micros, d.limit_micros) == (
        0,
        LIMIT,
        1,
        LIMIT,
    )
    assert d.frees_at is None  # only reservations: nothing will roll out
    assert "budget exceeded" in str(info.value)


async def test_settle_charges_the_real_cost_and_releases_the_rest(gate: Any) -> None:
    r = await gate.reserve(who(), "run", 500_000)
    await gate.settle(r, 120_000)
    status = await gate.status("u1")
    assert (status.spent_micros, status.reserved_micros) == (120_000, 0)
    assert status.available_micros == LIMIT - 120_000


async def test_settling_twice_charges_once(gate: Any) -> None:
    r = await gate.reserve(who(), "run", 500_000)
    await gate.settle(r, 100_000)
    await gate.settle(r, 100_000)
    assert (await gate.status("u1")).spent_micros == 100_000


async def test_a_failed_run_is_charged_what_it_spent_even_past_its_estimate(gate: Any) -> None:
    r = await gate.reserve(who(), "run", 100_000)
    await gate.settle(r, 300_000)
    assert (await gate.status("u1")).spent_micros == 300_000
    cancelled = await gate.reserve(who(), "run2", 100_000)
    await gate.settle(cancelled, 0)
    status = await gate.status("u1")
    assert (status.spent_micros, status.reserved_micros) == (300_000, 0)


async def test_refusal_names_the_numbers_and_when_spend_rolls_out(
    gate: Any, clock: FakeClock
) -> None:
    t0 = clock.now()
    await gate.settle(await gate.reserve(who(), "a", 300_000), 300_000)
    await clock.advance(3600)
    t1 = clock.now()
    await gate.settle(await gate.reserve(who(), "b", 500_000), 500_000)
    await clock.advance(3600)
    with pytest.raises(BudgetExceeded) as info:
        await gate.reserve(who(), "c", 400_000)
    d = info.value.details
    assert (d.spent_micros, d.reserved_micros, d.estimate_micros, d.limit_micros) == (
        800_000,
        0,
        400_000,
        LIMIT,
    )
    # 200_000 must roll out: the first charge (300_000) is enough.
    assert d.frees_at == t0 + WINDOW
    with pytest.raises(BudgetExceeded) as info:
        await gate.reserve(who(), "d", 700_000)
    assert info.value.details.frees_at == t1 + WINDOW  # both charges must go


async def test_spend_rolls_out_after_seven_days(gate: Any, clock: FakeClock) -> None:
    await gate.settle(await gate.reserve(who(), "a", LIMIT), LIMIT)
    with pytest.raises(BudgetExceeded):
        await gate.reserve(who(), "b", 1)
    await clock.advance(WINDOW.total_seconds() - 1)
    with pytest.raises(BudgetExceeded):
        await gate.reserve(who(), "b", 1)
    await clock.advance(1)
    assert (await gate.status("u1")).spent_micros == 0
    await gate.reserve(who(), "b", LIMIT)


async def test_estimate_alone_over_the_limit_never_frees(gate: Any) -> None:
    with pytest.raises(BudgetExceeded) as info:
        await gate.reserve(who(), "big", LIMIT + 1)
    assert info.value.details.frees_at is None


async def test_budgets_are_per_user_across_guilds(gate: Any) -> None:
    await gate.reserve(who("u1", "g1"), "a", 600_000)
    with pytest.raises(BudgetExceeded):
        await gate.reserve(who("u1", "g2"), "b", 600_000)
    await gate.reserve(who("u2", "g1"), "c", 600_000)  # someone else is unaffected


async def test_override_and_back_to_default(gate: Any) -> None:
    await gate.set_limit("u1", 2 * LIMIT)
    await gate.reserve(who(), "a", int(1.5 * LIMIT))
    status = await gate.status("u1")
    assert (status.limit_micros, status.overridden) == (2 * LIMIT, True)
    await gate.set_limit("u1", None)
    status = await gate.status("u1")
    assert (status.limit_micros, status.overridden) == (LIMIT, False)
    with pytest.raises(BudgetExceeded):
        await gate.reserve(who(), "b", 1)


async def test_zero_limit_refuses_everything(gate: Any) -> None:
    await gate.set_limit("u1", 0)
    with pytest.raises(BudgetExceeded):
        await gate.reserve(who(), "a", 1)


async def test_grant_adds_headroom_until_it_expires(gate: Any, clock: FakeClock) -> None:
    await gate.settle(await gate.reserve(who(), "a", LIMIT), LIMIT)
    await gate.grant("u1", 500_000, granted_by="admin", expires_at=clock.now() + timedelta(days=1))
    status = await gate.status("u1")
    assert (status.limit_micros, status.granted_micros) == (LIMIT + 500_000, 500_000)
    r = await gate.reserve(who(), "b", 500_000)
    await gate.settle(r, 0)
    await clock.advance(86_400)
    assert (await gate.status("u1")).granted_micros == 0
    with pytest.raises(BudgetExceeded):
        await gate.reserve(who(), "c", 1)


async def test_negative_amounts_are_rejected(gate: Any) -> None:
    with pytest.raises(ValueError, match="negative"):
        await gate.reserve(who(), "a", -1)
    r = await gate.reserve(who(), "a", 1)
    with pytest.raises(ValueError, match="negative"):
        await gate.settle(r, -5)


async def test_concurrent_reservations_never_pass_the_limit(gate: Any) -> None:
    # 200 concurrent reservations against a member with no row yet: exactly 40 fit.
    estimate = LIMIT // 40
    results = await asyncio.gather(
        *(gate.reserve(who("new"), f"r{i}", estimate) for i in range(200)),
        return_exceptions=True,
    )
    granted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(granted) == 40 and len(refused) == 160, [
        r for r in results if isinstance(r, BaseException) and not isinstance(r, BudgetExceeded)
    ][:3]
    status = await gate.status("new")
    assert status.reserved_micros == sum(r.amount_micros for r in granted) == LIMIT


async def test_concurrent_reserve_and_settle_lose_no_charge(gate: Any) -> None:
    await gate.set_limit("busy", 10**12)

    async def one(i: int) -> None:
        r = await gate.reserve(who("busy"), f"r{i}", 5_000)
        await gate.settle(r, 1_000 + i)

    await asyncio.gather(*(one(i) for i in range(200)))
    status = await gate.status("busy")
    assert status.spent_micros == sum(1_000 + i for i in range(200))
    assert status.reserved_micros == 0


async def test_forgetting_a_member_never_resets_their_budget(gate: Any, clock: FakeClock) -> None:
    """/forgetme must not be a way around a limit: the charges in the window, the limit
    set for them and their live grants keep counting under their id; a charge older
    than the window and an expired grant go."""
    await gate.settle(await gate.reserve(who(), "old", 10), 10)
    await gate.grant("u1", 100, expires_at=clock.now() + timedelta(days=1))
    await clock.advance((WINDOW + timedelta(hours=1)).total_seconds())  # both are gone
    await gate.set_limit("u1", 50)
    await gate.grant("u1", 20, granted_by="admin", note="for Alice's exam")
    await gate.settle(await gate.reserve(who(), "a", 30), 30)
    await gate.settle(await gate.reserve(who(), "b", 40), 40)
    held = await gate.reserve(who(), "in flight", 0)
    await gate.settle(await gate.reserve(who("u2"), "c", 10), 10)
    before = await gate.status("u1")

    await gate.delete_user_data("u1")

    after = await gate.status("u1")
    assert after == before
    assert (after.spent_micros, after.limit_micros, after.overridden) == (70, 70, True)
    with pytest.raises(BudgetExceeded):
        await gate.reserve(who(), "again", 1)
    await gate.settle(held, 0)  # a run in flight still settles
    assert (await gate.status("u2")).spent_micros == 10
    await clock.advance(WINDOW.total_seconds())  # the kept charges and the grant go
    after = await gate.status("u1")
    assert (after.spent_micros, after.granted_micros, after.limit_micros) == (0, 0, 50)


# --- growing a reservation (before each model call of a run) ------------------------


async def test_grow_raises_a_reservation_within_the_limit(gate: Any) -> None:
    r = await gate.reserve(who(), "run", 100_000)
    grown = await gate.grow(r, 350_000)
    assert (grown.run_id, grown.amount_micros, grown.token) == ("run", 350_000, r.token)
    assert (await gate.status("u1")).reserved_micros == 350_000
    same = await gate.grow(grown, 200_000)  # never lowered
    assert same.amount_micros == 350_000
    assert (await gate.status("u1")).reserved_micros == 350_000
    await gate.settle(same, 280_000)
    status = await gate.status("u1")
    assert (status.spent_micros, status.reserved_micros) == (280_000, 0)


async def test_grow_past_the_limit_is_refused_and_leaves_the_reservation(gate: Any) -> None:
    await gate.settle(await gate.reserve(who(), "before", 300_000), 300_000)
    other = await gate.reserve(who(), "other", 200_000)
    r = await gate.reserve(who(), "run", 100_000)
    await gate.grow(r, 500_000)  # exactly at the limit: 300k + 200k + 500k
    with pytest.raises(BudgetExceeded) as info:
        await gate.grow(r, 500_001)
    d = info.value.details
    assert (d.spent_micros, d.reserved_micros, d.estimate_micros, d.limit_micros) == (
        300_000,
        700_000,
        1,
        LIMIT,
    )
    assert (await gate.status("u1")).reserved_micros == 700_000
    await gate.settle(other, 0)
    assert (await gate.grow(r, 700_000)).amount_micros == 700_000


async def test_grow_says_when_enough_rolls_out(gate: Any, clock: FakeClock) -> None:
    t0 = clock.now()
    await gate.settle(await gate.reserve(who(), "a", 600_000), 600_000)
    await clock.advance(60)
    r = await gate.reserve(who(), "run", 100_000)
    with pytest.raises(BudgetExceeded) as info:
        await gate.grow(r, 500_000)
    assert info.value.details.frees_at == t0 + WINDOW


async def test_a_settled_reservation_cannot_grow(gate: Any) -> None:
    r = await gate.reserve(who(), "run", 10)
    await gate.settle(r, 5)
    with pytest.raises(ValueError, match="settled"):
        await gate.grow(r, 20)
    with pytest.raises(ValueError, match="negative"):
        await gate.grow(await gate.reserve(who(), "run2", 10), -1)


async def test_concurrent_grows_never_pass_the_limit(gate: Any) -> None:
    # 100 runs hold 1,000 each; each grows by 18,000 at once: exactly 50 fit.
    held = [await gate.reserve(who("many"), f"r{i}", 1_000) for i in range(100)]
    results = await asyncio.gather(*(gate.grow(r, 19_000) for r in held), return_exceptions=True)
    grown = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert (len(grown), len(refused)) == (50, 50), [
        r for r in results if isinstance(r, BaseException) and not isinstance(r, BudgetExceeded)
    ][:3]
    assert (await gate.status("many")).reserved_micros == LIMIT


async def test_concurrent_grows_and_reservations_share_one_limit(gate: Any) -> None:
    held = [await gate.reserve(who("mixed"), f"g{i}", 1_000) for i in range(50)]

    async def grow(r: Any) -> Any:
        return await gate.grow(r, 20_000)

    async def reserve(i: int) -> Any:
        return await gate.reserve(who("mixed"), f"n{i}", 19_000)

    results = await asyncio.gather(
        *(grow(r) for r in held), *(reserve(i) for i in range(50)), return_exceptions=True
    )
    assert all(isinstance(r, BudgetExceeded) or not isinstance(r, BaseException) for r in results)
    status = await gate.status("mixed")
    assert status.reserved_micros <= LIMIT
    granted_extra = sum(1 for r in results if not isinstance(r, BaseException))
    assert status.reserved_micros == 50 * 1_000 + granted_extra * 19_000
