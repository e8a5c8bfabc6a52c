"""Runs that cost far more than they reserve cannot overrun their member's budget (issue
12): 200 concurrent runs of one member, each making nine model calls at their worst case
(three times the three-call estimate runs used to reserve, nine times the first call
they reserve now), against the SQL ledger on SQLite and PostgreSQL. Each call is covered
before it is made, so what they spend in total stays within the limit plus at most one
call's worst case."""

from __future__ import annotations

import asyncio

import pytest

from adapters.storage.budget import SqlBudgetLedger
from adapters.storage.db import Database
from executor.agent import RunStatus
from executor.run import Executor
from executor.spend import input_tokens
from executor.testing import AuditCapture
from tests.executor.test_run_budget import AGENT, Tier, WorstCaseModel, _inv, _tools, price

pytestmark = pytest.mark.chaos

RUNS = 200
LIMIT = 20_000_000  # $20: about 650 calls at their worst case, of the 1,800 wanted


async def test_200_concurrent_runs_at_3x_never_overrun_the_limit(db: Database) -> None:
    ledger = SqlBudgetLedger(db.sessions, default_limit_micros=LIMIT)
    audit = AuditCapture()
    models = [WorstCaseModel(steps=8) for _ in range(RUNS)]

    async def one(model: WorstCaseModel) -> object:
        executor = Executor(models=Tier(model), tools=_tools(), budget=ledger, audit=audit)
        return await executor.run(AGENT, _inv())

    results = await asyncio.gather(*(one(m) for m in models))
    status = await ledger.status("m")
    spent = status.spent_micros
    assert spent == sum(r.cost_micros for r in results)  # type: ignore[attr-defined]
    assert status.reserved_micros == 0
    # The dearest single call a run here can make: the longest input, all 2,048 out.
    longest = max(input_tokens(r.messages, r.tools) for m in models for r in m.requests)
    one_call = price(longest, 2048)
    over = max(0, spent - LIMIT)
    assert over <= one_call, (spent, LIMIT, one_call)
    statuses = [r.status for r in results]  # type: ignore[attr-defined]
    assert set(statuses) <= {RunStatus.OK, RunStatus.BUDGET_EXHAUSTED, RunStatus.BUDGET_DENIED}
    calls = sum(len(m.requests) for m in models)
    print(
        f"\n{RUNS} runs x 9 calls wanted on {db.url.get_backend_name()}: {calls} calls made, "
        f"spent ${spent / 1e6:.6f} of ${LIMIT / 1e6:.2f} (over by ${over / 1e6:.6f}; "
        f"one call's worst case ${one_call / 1e6:.6f}); "
        f"{statuses.count(RunStatus.OK)} ok, {statuses.count(RunStatus.BUDGET_EXHAUSTED)} "
        f"exhausted, {statuses.count(RunStatus.BUDGET_DENIED)} denied"
    )
