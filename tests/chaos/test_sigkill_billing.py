"""Billing survives SIGKILL (issue 12): a real coterie process running concurrent runs
against a loopback model with a known cost per response is killed ten times, each time
with its runs in flight (waiting on the model, mid-stream, or in a slow tool after a
finished response); after crash recovery the ledger equals the cost of every model
response that completed, to the micro-dollar, plus, for each request the process died
waiting on (issue 20: the provider billed its input), its input tokens as the run
counted them at the model's input price; and the audit holds every tool call that ran
(each one whose result went back to the model), across all ten kills."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlmodel import col

from adapters.storage.budget import SqlBudgetLedger
from adapters.storage.db import Database
from adapters.storage.recovery import recover
from adapters.storage.tables import (
    AuditEventRow,
    AuditModelAttempt,
    AuditRun,
    AuditToolCall,
    BudgetLedgerEntry,
)
from executor.messages import Usage
from tests.chaos.loopback import MODEL, HoldMode, LoopbackOpenAI

pytestmark = pytest.mark.chaos

ROOT = Path(__file__).parents[2]
WORKERS = 6
KILLS = 10
MODES: tuple[HoldMode, ...] = ("before", "mid-stream", "in-tool")


@pytest.fixture
async def server() -> AsyncIterator[LoopbackOpenAI]:
    s = LoopbackOpenAI()
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def _env(tmp_path: Path, server: LoopbackOpenAI) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COTERIE_", "ANTHROPIC_", "OPENAI_", "DATABASE_URL"))
    }
    env.update(
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'c.db'}",
        OPENAI_BASE_URL=server.base_url,
        OPENAI_API_KEY="sk-chaos-loopback-key",
        COTERIE_TIER_STANDARD=MODEL,
        COTERIE_BUDGET_DEFAULT_USD="1000",
        COTERIE_LOG_LEVEL="WARNING",
        CHAOS_WAIT_URL=server.wait_url,
        PYTHONUNBUFFERED="1",
    )
    return env


async def _one_life(
    env: dict[str, str], server: LoopbackOpenAI, mode: HoldMode, rng: random.Random
) -> None:
    """Start coterie, let it answer a few more responses, hold it at ``mode``, kill it."""
    server.hold(len(server.completed) + rng.randint(4, 30), mode)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.chaos.worker",
        str(WORKERS),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 60)).strip() == b"ready"
        # Every worker waits on the server: each response it sent before was read.
        await server.wait_held(WORKERS)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        _, err = await proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    server.release()


async def test_ten_sigkills_lose_no_charge_and_no_tool_call(
    tmp_path: Path, server: LoopbackOpenAI
) -> None:
    env = _env(tmp_path, server)
    rng = random.Random(12)
    url = env["DATABASE_URL"]
    interrupted = unanswered = owed = 0
    for kill in range(KILLS):
        await _one_life(env, server, MODES[kill % len(MODES)], rng)
        db = Database.open(url)
        try:
            ledger = SqlBudgetLedger(db.sessions, default_limit_micros=0)
            died_in = await _requests_in_flight(db)
            report = await recover(db.sessions, ledger)
            owed += sum(cost for _, cost in died_in)
            unanswered += len(died_in)
            # Each at the model's price of the input the run counted, no output.
            assert all(
                cost == server.prices.cost_micros(MODEL, Usage(input_tokens=tokens)) > 0
                for tokens, cost in died_in
            ), died_in
            interrupted += len(report.interrupted_runs)
            async with db.sessions() as s:
                charged = int(
                    await s.scalar(
                        select(func.coalesce(func.sum(BudgetLedgerEntry.amount_micros), 0))
                    )
                    or 0
                )
                calls = set(await s.scalars(select(col(AuditToolCall.call_id))))
                running = await s.scalar(
                    select(func.count())
                    .select_from(AuditRun)
                    .where(col(AuditRun.status) == "running")
                )
            assert await ledger.open_reservations() == []
        finally:
            await db.close()
        spent = sum(server.completed)
        # To the micro-dollar: every response that completed, in every life so far, and
        # the input of every request a process died waiting on.
        assert unanswered == server.unanswered, (kill, unanswered, server.unanswered)
        assert charged == spent + owed, (kill, charged, spent, owed)
        assert calls == server.tool_results, (kill, calls ^ server.tool_results)
        assert running == 0
    assert interrupted == KILLS * WORKERS  # every kill landed with every worker mid-run
    print(
        f"\nSIGKILL x{KILLS}: {len(server.completed)} responses, ${spent / 1e6:.6f} spent, "
        f"{unanswered} requests died in flight, their input ${owed / 1e6:.6f}; "
        f"${(spent + owed - charged) / 1e6:.6f} unbilled; {len(calls)} tool calls all "
        f"audited; {interrupted} runs closed as interrupted"
    )


async def _requests_in_flight(db: Database) -> list[tuple[int, int]]:
    """(input tokens, cost) of each running run's last request that no attempt row
    follows: what the process died waiting on."""
    out: list[tuple[int, int]] = []
    async with db.sessions() as s:
        running = list(
            await s.scalars(select(col(AuditRun.run_id)).where(col(AuditRun.status) == "running"))
        )
        for run_id in running:
            last = await s.scalar(
                select(col(AuditEventRow.data))
                .where(
                    col(AuditEventRow.run_id) == run_id, col(AuditEventRow.kind) == "model_request"
                )
                .order_by(col(AuditEventRow.id).desc())
                .limit(1)
            )
            attempts = await s.scalar(
                select(func.count())
                .select_from(AuditModelAttempt)
                .where(col(AuditModelAttempt.run_id) == run_id)
            )
            if last is not None and last["attempts_before"] == attempts:
                out.append((int(last["input_tokens"]), int(last["unanswered_micros"])))
    return out
