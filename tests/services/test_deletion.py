"""One entry point forgets a member: after ``app.deletion.forget``, no row of any table
names them (by id or by name), except their audit runs, which stay anonymised, and what
their budget needs to keep counting (amounts and times under their id, nothing else).

The scan reads every table of the schema, so a table added later that stores a
member's id and is not covered by the orchestrator fails this test."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlmodel import SQLModel, col

from adapters.services.deletion import DataDeletion, DeletionFailed
from adapters.storage.audit_queries import FORGOTTEN
from adapters.storage.tables import AuditRun, BudgetLedgerEntry
from bot.app import App, build_app
from bot.settings import Settings
from executor.agent import Caller, Invocation, Privilege, RunnableAgent
from executor.messages import Message, Usage
from executor.testing import Reply, ScriptedModel
from personas.model import Persona
from skills.tables import Schedule, Skill, SkillVersion
from tests.discord.test_app_e2e import ScriptedTiers

ALICE = Caller(user_id="424242", display_name="Alice Wonder", guild_id="1", channel_id="5")
BOB = Caller(user_id="515151", display_name="Bob Builder", guild_id="1", channel_id="5")
ADMIN = Caller(user_id="999", display_name="Admin", privilege=Privilege.ADMIN, guild_id="1")


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[App, ScriptedModel]]:
    model = ScriptedModel()
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'coterie.db'}",
    )
    built = await build_app(settings, resolver=ScriptedTiers(model))
    try:
        yield built, model
    finally:
        await built.close()


async def _leave_traces(app: App, model: ScriptedModel, who: Caller) -> None:
    model.push(
        Reply(
            text=f"Hello {who.display_name}",
            usage=Usage(input_tokens=10, output_tokens=5, cost_micros=1_234, requests=1),
        )
    )
    result = await app.executor.run(
        RunnableAgent(name="assistant", model=model),
        Invocation(
            messages=[Message.user(f"I am {who.display_name}", name=who.display_name)],
            caller=who,
            trigger="chat",
        ),
    )
    assert result.ok
    await app.audit.flush()
    await app.budget.set_limit(who.user_id, 2_000_000)
    await app.budget.grant(who.user_id, 500_000, granted_by=ADMIN.user_id, note="thanks")
    await app.budget.grant(ADMIN.user_id, 1, granted_by=who.user_id)  # as an admin
    await app.personas.create("1", Persona(name=f"p{who.user_id}", system_prompt="hi"), by=who)
    await app.threads.bind(
        thread_id=f"t{who.user_id}",
        guild_id="1",
        channel_id="5",
        persona="assistant",
        created_by=who.user_id,
    )
    async with app.db.sessions() as s:
        skill = Skill(guild_id="1", name=f"s{who.user_id}", owner_id=who.user_id)
        s.add(skill)
        await s.flush()
        assert skill.id is not None
        s.add(SkillVersion(skill_id=skill.id, version=1, prompt="x", created_by=who.user_id))
        s.add(Schedule(skill_id=skill.id, channel_id="5", created_by=who.user_id, cron="0 9 * * *"))
        await s.commit()


async def ledger_and_audit_totals(app: App) -> tuple[int, int]:
    """What the budget ledger charged and what the audit says runs cost, in all."""
    async with app.db.sessions() as s:
        ledger = await s.scalar(
            select(func.coalesce(func.sum(col(BudgetLedgerEntry.amount_micros)), 0))
        )
        audit = await s.scalar(select(func.coalesce(func.sum(col(AuditRun.cost_micros)), 0)))
    return int(ledger or 0), int(audit or 0)


async def _rows_naming(app: App, *needles: str) -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    async with app.db.sessions() as s:
        for table in SQLModel.metadata.sorted_tables:
            for row in (await s.execute(select(table))).mappings():
                text = json.dumps(dict(row), default=str)
                if any(n in text for n in needles):
                    found.append((table.name, dict(row)))
    return found


# What the budget keeps of a forgotten member under their id (the gate keys on it), and
# what such a row must hold: nothing personal but the id.
_BUDGET_KEPT: dict[str, dict[str, Any]] = {
    "budget_ledger": {"run_id": None, "note": FORGOTTEN},
    "budget_grants": {"granted_by": "", "note": FORGOTTEN},
    "budget_members": {},
}


async def _rows_naming_beyond_the_budget(
    app: App, user_id: str, *names: str
) -> list[tuple[str, dict[str, Any]]]:
    """:func:`_rows_naming`, less the budget's bare rows kept under the member's id."""

    def kept(table: str, row: dict[str, Any]) -> bool:
        bare = _BUDGET_KEPT.get(table)
        return (
            bare is not None
            and row.get("user_id") == user_id
            and all(row[k] == v for k, v in bare.items())
            and not any(n in json.dumps(row, default=str) for n in names)
        )

    return [(t, r) for t, r in await _rows_naming(app, user_id, *names) if not kept(t, r)]


async def test_forget_leaves_no_row_naming_the_member_but_anonymised_audit(
    app: tuple[App, ScriptedModel],
) -> None:
    the_app, model = app
    await _leave_traces(the_app, model, ALICE)
    await _leave_traces(the_app, model, BOB)
    assert {t for t, _ in await _rows_naming(the_app, ALICE.user_id)} >= {
        "audit_runs",
        "budget_ledger",
        "budget_grants",
        "budget_members",
        "personas",
        "thread_bindings",
        "skills",
        "skill_versions",
        "schedules",
    }

    budget = await the_app.budget.status(ALICE.user_id)

    report = await the_app.deletion.forget(ALICE.user_id)

    assert not report.failed and report.total > 0
    assert await _rows_naming_beyond_the_budget(the_app, ALICE.user_id, ALICE.display_name) == []
    # Her budget keeps counting: forgetting is no way around a limit.
    assert await the_app.budget.status(ALICE.user_id) == budget
    assert (budget.spent_micros, budget.limit_micros) == (1_234, 2_500_000)
    ledger, audit = await ledger_and_audit_totals(the_app)
    assert ledger == audit == 2 * 1_234
    runs = await the_app.audit_queries.list_runs()
    forgotten = [r for r in runs.runs if r.user_id == FORGOTTEN]
    assert len(forgotten) == 1 and forgotten[0].cost_micros == 1_234  # kept for accounting
    # Bob keeps everything.
    bob_tables = {t for t, _ in await _rows_naming(the_app, BOB.user_id)}
    assert {"audit_runs", "budget_ledger", "personas", "skills", "schedules"} <= bob_tables
    # The grant Alice gave the admin stays, without her name.
    admin_grants = [
        r for t, r in await _rows_naming(the_app, ADMIN.user_id) if t == "budget_grants"
    ]
    assert sorted(r["granted_by"] for r in admin_grants if r["user_id"] == ADMIN.user_id) == [
        "",
        BOB.user_id,
    ]


async def test_one_member_at_a_time_and_a_failing_part_is_reported() -> None:
    order: list[str] = []
    gate = asyncio.Event()

    async def slow(user_id: str) -> int:
        order.append(f"slow {user_id}")
        await gate.wait()
        return 1

    async def broken(user_id: str) -> int:
        order.append(f"broken {user_id}")
        raise RuntimeError("disk full")

    deletion = DataDeletion({"slow": slow, "broken": broken})
    first = asyncio.create_task(deletion.forget("u1"))
    second = asyncio.create_task(deletion.forget("u1"))
    await asyncio.sleep(0)  # let both reach the lock
    assert order == ["slow u1"]  # the second waits for the first
    gate.set()
    for task in (first, second):
        with pytest.raises(DeletionFailed) as info:
            await task
        assert info.value.report.counts == {"slow": 1}
        assert info.value.report.failed == {"broken": "RuntimeError"}
    assert order == ["slow u1", "broken u1", "slow u1", "broken u1"]
