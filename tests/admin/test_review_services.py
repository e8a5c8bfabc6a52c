"""What /audit and /budget read, below the Discord edge (issue 20: the cogs imported
storage; they now read through :class:`AuditService` and :class:`BudgetService`, and an
import-linter contract keeps ``commands`` off ``adapters.storage``).

On the real composition root (SQLite) with a fake clock; one fake reader, to see the
export close what it reads when it stops early."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from adapters.services.audit import AuditService, RunFilter, RunRow
from adapters.services.errors import ExportTooLarge, RunNotFound
from bot.app import App, build_app
from bot.settings import Settings
from executor.agent import Caller, Invocation, RunnableAgent
from executor.messages import Message, Usage
from executor.testing import FakeClock, Reply, ScriptedModel, ScriptedTiers

GUILD = "100"
NOW = datetime(2026, 3, 1, 11, 0, tzinfo=UTC)
ADMIN = Caller(user_id="7", display_name="admin", guild_id=GUILD)


async def _app(tmp_path: Path, clock: FakeClock | None = None) -> App:
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'c.db'}",
        budget_default_usd=2.0,
    )
    return await build_app(settings, resolver=ScriptedTiers(ScriptedModel()), clock=clock)


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    built = await _app(tmp_path)
    try:
        yield built
    finally:
        await built.close()


@pytest.fixture
async def clocked_app(tmp_path: Path) -> AsyncIterator[App]:
    """The app on a fake clock: the audit's times and "today" are the clock's."""
    built = await _app(tmp_path, FakeClock(NOW))
    try:
        yield built
    finally:
        await built.close()


async def ran(app: App, user_id: str, cost: int, *, persona: str = "p") -> str:
    model = ScriptedModel()
    model.push(Reply(text="ok", usage=Usage(input_tokens=1, output_tokens=1, cost_micros=cost)))
    result = await app.executor.run(
        RunnableAgent(name=persona, model=model, persona=persona),
        Invocation(
            messages=[Message.user("q")],
            caller=Caller(user_id=user_id, display_name=f"u{user_id}", guild_id=GUILD),
            trigger="chat",
        ),
    )
    assert result.ok
    return result.run_id


async def test_a_run_shows_its_members_spend_before_and_after(app: App) -> None:
    first = await ran(app, "42", 300_000)
    second = await ran(app, "42", 200_000)
    console = await ran(app, "console", 1_000)
    view = await app.audit_service.run(GUILD, second[:10])
    assert view.detail.run.run_id == second
    assert (view.spent_before, view.spent_after) == (300_000, 500_000)
    assert view.limit_micros == 2_000_000
    assert (await app.audit_service.run(GUILD, first)).spent_before == 0
    # No Discord member, no budget line.
    plain = await app.audit_service.run(GUILD, console)
    assert plain.spent_before is None and plain.limit_micros is None
    with pytest.raises(RunNotFound, match="No run starts with"):
        await app.audit_service.run("another guild", second)
    page = await app.audit_service.runs(RunFilter(guild_id=GUILD, user_id="42"), limit=1)
    assert [r.run_id for r in page.runs] == [second] and page.next_cursor is not None


async def test_an_export_is_recorded_and_one_past_the_cap_records_nothing(app: App) -> None:
    ids = {await ran(app, "42", 1_000 * i) for i in range(1, 4)}
    with pytest.raises(ExportTooLarge, match="coterie audit export --guild 100"):
        await app.audit_service.export(ADMIN, GUILD, max_bytes=10)
    assert (await app.admin.actions(GUILD)).entries == []
    done = await app.audit_service.export(ADMIN, GUILD, max_bytes=1_000_000)
    assert done.runs == 3 and len(done.data.decode().splitlines()) == 3
    assert all(i in done.data.decode() for i in ids)
    [entry] = (await app.admin.actions(GUILD)).entries
    assert entry.action == "audit.export" and entry.detail["runs"] == 3
    assert entry.actor_id == ADMIN.user_id


async def test_an_export_stopped_at_the_cap_closes_what_it_reads(app: App) -> None:
    closed: list[bool] = []

    class Reader:
        async def export_lines(self, where: RunFilter | None = None) -> AsyncGenerator[str, None]:
            try:
                while True:
                    yield "x" * 100 + "\n"
            finally:
                closed.append(True)

        async def list_runs(self, *a: Any, **k: Any) -> Any:
            raise AssertionError

        async def resolve_run(self, *a: Any, **k: Any) -> str:
            raise AssertionError

        async def get_run(self, run_id: str) -> Any:
            raise AssertionError

        async def recent_runs(self, **k: Any) -> Sequence[RunRow]:
            return []

        async def recent_skills(self, **k: Any) -> list[str]:
            return []

    service = AuditService(queries=Reader(), sink=app.audit, budget=app.budget, admin=app.admin)
    with pytest.raises(ExportTooLarge):
        await service.export(ADMIN, GUILD, max_bytes=1_000)
    assert closed == [True]


async def test_budget_reads_top_spenders_sheets_and_days_in_the_guilds_zone(
    clocked_app: App,
) -> None:
    app = clocked_app
    await ran(app, "42", 500_000, persona="researcher")
    await ran(app, "42", 250_000, persona="writer")
    await ran(app, "43", 100_000)
    await ran(app, "console", 9_000_000)
    await app.audit.flush()
    top = await app.budget_service.top(GUILD, days=7)
    assert [(r.user_id, r.cost_micros) for r in top.rows] == [
        ("console", 9_000_000),
        ("42", 750_000),
        ("43", 100_000),
    ]
    assert set(top.statuses) == {"42", "43"}  # the console has no budget here
    assert top.statuses["42"].spent_micros == 750_000

    await app.admin.grant(ADMIN, "42", 15_000, reason="exam", guild_id=GUILD)
    sheet = await app.budget_service.sheet(Caller(user_id="42", guild_id=GUILD))
    assert [g.amount_micros for g in sheet.grants] == [15_000]
    assert sheet.status.limit_micros == 2_015_000

    # 11:00 UTC is already the next day at UTC+14.
    await app.admin.configure(ADMIN, GUILD, timezone="Pacific/Kiritimati")
    chart = await app.budget_service.chart(guild_id=GUILD, user_id=None, days=3)
    assert chart.zone is not None and chart.zone.key == "Pacific/Kiritimati"
    assert chart.last_day == date(2026, 3, 2)
    by_label = {r.label: r.cost_micros for r in chart.rows}
    assert by_label == {"researcher": 500_000, "writer": 250_000, "p": 9_100_000}
    assert {r.day for r in chart.rows} == {date(2026, 3, 2)}
    mine = await app.budget_service.chart(guild_id=GUILD, user_id="43", days=3)
    assert {r.label: r.cost_micros for r in mine.rows} == {"p": 100_000}
