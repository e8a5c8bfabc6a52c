"""One entry point forgets a member: after ``app.deletion.forget``, no row of any table
names them (by id or by name), except their audit runs, which stay anonymised, and what
their budget needs to keep counting (amounts and times under their id, nothing else).

The scan reads every table of the schema, so a table added later that stores a
member's id and is not covered by the orchestrator fails this test."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import JSON, CursorResult, Table, TypeDecorator, func, select
from sqlmodel import SQLModel, col

from adapters.services.deletion import DataDeletion, DeletionFailed
from adapters.storage.audit_queries import FORGOTTEN
from adapters.storage.tables import AuditRun, BudgetLedgerEntry
from bot.app import App, build_app
from bot.settings import Settings
from executor.agent import Caller, Invocation, Privilege, RunnableAgent
from executor.messages import Message, Usage
from executor.testing import Reply, ScriptedModel, ScriptedTiers
from personas.model import Persona
from skills.tables import Schedule, Skill, SkillVersion

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


# --- every member table, found from the schema -----------------------------------------

#: Columns that hold a member's Discord id.
MEMBER_COLUMNS = frozenset(
    {"user_id", "created_by", "owner_id", "actor_id", "target_id", "granted_by"}
)
#: What a store documents it keeps after a forget, by table.
KEPT_AFTER_FORGET = {
    # SqlBudgetLedger.delete_user_data: an open reservation belongs to a run in flight
    # and is settled when that run ends; the member row it hangs on stays until then.
    "budget_reservations": "open reservations are settled by their run",
    "budget_members": "the row an open reservation hangs on, and a limit an admin set",
    # A forget never resets a budget: charges in the 7-day window and grants not yet
    # expired keep counting under the member's id (amounts and times only).
    "budget_ledger": "charges still in the 7-day window",
    "budget_grants": "grants not yet expired",
}
#: Values a row must have for its store to know it (the rest are generic).
SEMANTIC = {
    "memory_notes": {"kind": "note", "place": "guild:1", "persona": "assistant"},
    "personas": {"guild_id": "1"},
    "skills": {"guild_id": "1"},
}
T0 = datetime(2021, 3, 4, 5, 0, tzinfo=UTC)


def _kind(column: Any) -> type:
    if isinstance(column.type, JSON):
        # A JSON column holds what its model's field says (tools: a list).
        models = [m.class_ for m in SQLModel._sa_registry.mappers if m.local_table is column.table]
        annotation = str(models[0].model_fields[column.name].annotation) if models else ""
        return list if annotation.startswith("list") else dict
    kind: type = column.type.python_type
    if kind is object and isinstance(column.type, TypeDecorator):  # UTCDateTime
        impl: Any = column.type.impl
        kind = impl.python_type
    return kind


def member_tables() -> list[Table]:
    """Every table with a member column, parents before children."""
    return [
        t
        for t in SQLModel.metadata.sorted_tables
        if any(c.name in MEMBER_COLUMNS for c in t.columns)
    ]


async def seed_member_rows(app: App, who: str, tag: str) -> dict[str, list[str]]:
    """One row naming ``who`` in every member table, filled generically; returns, per
    table, the row's distinctive values (markers, numbers, times) to find in an export."""
    markers: dict[str, list[str]] = {}
    ids: dict[str, Any] = {}
    async with app.db.sessions() as s:
        for ti, table in enumerate(member_tables()):
            values: dict[str, Any] = {}
            found: list[str] = []
            for ci, column in enumerate(table.columns):
                name = column.name
                fixed = SEMANTIC.get(table.name, {})
                if name in MEMBER_COLUMNS:
                    values[name] = who
                elif name in fixed:
                    values[name] = fixed[name]
                elif column.foreign_keys:
                    (fk,) = column.foreign_keys
                    values[name] = ids[fk.column.table.name]
                elif table.autoincrement_column is column:
                    continue
                else:
                    kind = _kind(column)
                    if kind is str:
                        length = getattr(column.type, "length", None) or 40
                        value = f"{tag}{ti:02d}{ci:02d}mk"[:length]
                        values[name] = value
                        found.append(value)
                    elif kind is bool:
                        values[name] = False
                    elif kind is int:
                        values[name] = 7_000_000 + ti * 100 + ci + (50 if tag == "b" else 0)
                        found.append(str(values[name]))
                    elif kind is float:
                        values[name] = 1.5
                    elif kind is datetime:
                        at = T0 + timedelta(minutes=ti, seconds=ci + (30 if tag == "b" else 0))
                        values[name] = at
                        found.append(at.strftime("%Y-%m-%dT%H:%M:%S"))
                    elif kind in (dict, list):
                        values[name] = kind()
                    else:
                        raise AssertionError(f"seed {table.name}.{name} of type {kind}")
            result = await s.execute(table.insert().values(**values))
            pk = cast(CursorResult[Any], result).inserted_primary_key
            ids[table.name] = pk[0] if pk else None
            markers[table.name] = found
        await s.commit()
    return markers


async def test_every_member_table_is_forgotten_and_exported_by_the_stores_of_the_app(
    app: tuple[App, ScriptedModel],
) -> None:
    the_app, _ = app
    tables = {t.name for t in member_tables()}
    assert {"memory_notes", "memory_opt_out", "audit_runs", "personas"} <= tables
    alice = await seed_member_rows(the_app, ALICE.user_id, "a")
    bob = await seed_member_rows(the_app, BOB.user_id, "b")

    # /mydata: every table's row is in the export (found by its distinctive values).
    exported = json.dumps(await the_app.deletion.export(ALICE.user_id), default=str)
    missing = [t for t, values in alice.items() if not any(v in exported for v in values)]
    assert not missing, f"export_user_data of no store covers {missing}"
    assert not any(v in exported for values in bob.values() for v in values)

    # /forgetme: no row names alice anywhere, but what a store says it keeps.
    report = await the_app.deletion.forget(ALICE.user_id)
    assert not report.failed
    left = {t for t, _ in await _rows_naming(the_app, ALICE.user_id)}
    assert left <= set(KEPT_AFTER_FORGET), f"delete_user_data of no store covers {left}"
    # Bob's rows are all still there, naming him.
    assert {t for t, _ in await _rows_naming(the_app, BOB.user_id)} == tables


def test_the_app_collects_its_member_data_stores_by_type() -> None:
    from adapters.services.deletion import MemberData, collect_member_data
    from memory import InMemoryNoteStore

    notes = InMemoryNoteStore()
    assert isinstance(notes, MemberData)
    assert collect_member_data([notes, object(), notes, "x"]) == [notes]
    with pytest.raises(ValueError, match="memory notes"):
        DataDeletion([notes, InMemoryNoteStore()])


async def test_the_apps_data_parts(app: tuple[App, ScriptedModel]) -> None:
    the_app, _ = app
    assert (
        set(the_app.deletion.parts)
        == set(the_app.deletion.exports)
        == {
            "audit runs",
            "budget",
            "personas",
            "skills and schedules",
            "thread bindings",
            "memory notes",
            "admin actions",
            "budget warnings",
            "interrupted runs to resume",
            "approval requests",
        }
    )
