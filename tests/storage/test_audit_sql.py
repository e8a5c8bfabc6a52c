"""The SQL audit trail: batching, redaction, queries, deletion, recovery."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import func, select

from adapters.storage.audit_queries import FORGOTTEN, AuditQueries, RunFilter
from adapters.storage.audit_sink import SqlAuditSink
from adapters.storage.budget import SqlBudgetLedger
from adapters.storage.db import Database
from adapters.storage.recovery import INTERRUPTED_ERROR, recover
from adapters.storage.tables import AuditStep, AuditToolCall
from executor.agent import Caller, RunStatus
from executor.events import StepFinished, ToolCallFinished
from executor.messages import Usage
from executor.redaction import redact
from executor.testing import FakeClock
from tests.conformance.test_audit_sink import T0, finished, full_run, started


def test_redaction_of_keys_values_and_size() -> None:
    text = redact(
        {
            "query": "weather",
            "api_key": "abc",
            "headers": {"Authorization": "Bearer abcdefghijkl", "X-Token": "t"},
            "note": "use sk-ant-abcdefghijklmnop please",
            "password": "hunter2",
            "nested": [{"client_secret": "s"}, "Bearer zzzzzzzzzzzz"],
        }
    )
    data = json.loads(text)
    assert data["query"] == "weather"
    assert data["api_key"] == data["password"] == "[redacted]"
    assert data["headers"] == {"Authorization": "[redacted]", "X-Token": "[redacted]"}
    assert data["note"] == "use [redacted] please"
    assert data["nested"] == [{"client_secret": "[redacted]"}, "[redacted]"]
    assert "hunter2" not in text and "abcdefghijkl" not in text
    big = redact({"blob": "x" * 100_000}, limit=4000)
    assert len(big) < 4100 and "more characters" in big


async def _count(db: Database, model: type) -> int:
    async with db.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def test_steps_are_batched_until_finish_or_size(sqlite_db: Database) -> None:
    sink = SqlAuditSink(sqlite_db.sessions, batch_size=3, flush_interval_s=3600)
    await sink.record(started("r1"))
    for step in (1, 2):
        await sink.record(
            StepFinished(run_id="r1", at=T0, step=step, model="m", usage=Usage(), stop_reason="x")
        )
    assert await _count(sqlite_db, AuditStep) == 0  # buffered
    await sink.record(
        StepFinished(run_id="r1", at=T0, step=3, model="m", usage=Usage(), stop_reason="x")
    )
    assert await _count(sqlite_db, AuditStep) == 3  # batch size reached
    await sink.record(
        StepFinished(run_id="r1", at=T0, step=4, model="m", usage=Usage(), stop_reason="x")
    )
    await sink.record(finished("r1", steps=4, cost=0))
    assert await _count(sqlite_db, AuditStep) == 4
    await sink.close()


async def test_tool_arguments_are_stored_redacted(sqlite_db: Database) -> None:
    sink = SqlAuditSink(sqlite_db.sessions)
    await sink.record(started("r1"))
    await sink.record(
        ToolCallFinished(
            run_id="r1",
            at=T0,
            step=1,
            call_id="c",
            name="web_fetch",
            arguments={"url": "https://x", "token": "secret-value"},
            result="Authorization: Bearer abcdefghijklmnop",
            is_error=False,
            duration_ms=2,
        )
    )
    await sink.close()
    async with sqlite_db.sessions() as s:
        call = (await s.scalars(select(AuditToolCall))).one()
    assert "secret-value" not in call.arguments and "[redacted]" in call.arguments
    assert "abcdefghijklmnop" not in call.result_excerpt


async def test_list_filters_newest_first_and_pages(db: Database) -> None:
    sink = SqlAuditSink(db.sessions)
    for i in range(7):
        user = "alice" if i % 2 == 0 else "bob"
        trigger = "schedule" if i == 6 else "chat"
        await sink.record(
            started(f"r{i}", user, at=T0 + timedelta(minutes=i), trigger=trigger, persona="p")
        )
        await sink.record(finished(f"r{i}", steps=1, cost=100 * i))
    await sink.close()
    q = AuditQueries(db.sessions)
    first = await q.list_runs(limit=3)
    assert [r.run_id for r in first.runs] == ["r6", "r5", "r4"]
    second = await q.list_runs(limit=3, cursor=first.next_cursor)
    third = await q.list_runs(limit=3, cursor=second.next_cursor)
    assert [r.run_id for r in second.runs + third.runs] == ["r3", "r2", "r1", "r0"]
    assert third.next_cursor is None
    alice = await q.list_runs(RunFilter(user_id="alice"))
    assert [r.run_id for r in alice.runs] == ["r6", "r4", "r2", "r0"]
    assert [r.run_id for r in (await q.list_runs(RunFilter(trigger="schedule"))).runs] == ["r6"]
    ranged = await q.list_runs(
        RunFilter(since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=4), persona="p")
    )
    assert [r.run_id for r in ranged.runs] == ["r3", "r2"]
    assert (await q.list_runs(RunFilter(status="error"))).runs == []
    days = await q.spend_per_day(since=T0 - timedelta(days=1))
    assert [(d.user_id, d.runs, d.cost_micros) for d in days] == [
        ("alice", 4, 1200),
        ("bob", 3, 900),
    ]
    assert days[0].day == T0.date()


async def test_show_and_export_shape(sqlite_db: Database) -> None:
    sink = SqlAuditSink(sqlite_db.sessions)
    await full_run(sink, "r1")
    await sink.close()
    detail = await AuditQueries(sqlite_db.sessions).get_run("r1")
    assert detail is not None
    data = json.loads(json.dumps(detail.to_dict()))
    assert data["run_id"] == "r1" and data["status"] == "ok"
    assert data["started_at"].startswith("2026-03-01T12:00:00")
    assert len(data["steps"]) == 2 and len(data["tool_calls"]) == 1
    assert await AuditQueries(sqlite_db.sessions).get_run("nope") is None


async def test_delete_user_data_anonymises_the_members_runs(db: Database) -> None:
    sink = SqlAuditSink(db.sessions)
    await full_run(sink, "a1", user="alice")
    await full_run(sink, "b1", user="bob")
    await sink.close()
    q = AuditQueries(db.sessions)
    before = await q.get_run("a1")
    assert before is not None and before.run.cost_micros > 0
    assert await q.delete_user_data("alice") == 1
    after = await q.get_run("a1")
    assert after is not None  # kept for accounting
    assert after.run.user_id == FORGOTTEN and after.run.user_name == ""
    assert after.run.prompt_excerpt == "" and after.run.output_excerpt == ""
    assert after.run.cost_micros == before.run.cost_micros
    assert all(s.text_excerpt == "" for s in after.steps)
    assert all(t.arguments == "" and t.result_excerpt == "" for t in after.tool_calls)
    assert all(e.data == {} for e in after.events)
    assert "alice" not in json.dumps(after.to_dict(), default=str)
    bob = await q.get_run("b1")
    assert bob is not None and bob.run.user_id == "bob" and bob.tool_calls[0].arguments
    assert await _count(db, AuditStep) == 4


async def test_recovery_closes_running_runs_and_settles_reservations(db: Database) -> None:
    clock = FakeClock(T0)
    budget = SqlBudgetLedger(db.sessions, default_limit_micros=1_000_000, clock=clock)
    alice = Caller(user_id="alice")
    crashed = await budget.reserve(alice, "crashed", 50_000)
    orphan = await budget.reserve(alice, "never-started", 40_000)
    done = await budget.reserve(alice, "done", 30_000)
    sink = SqlAuditSink(db.sessions)
    await sink.record(started("crashed", "alice"))
    for step, cost in ((1, 700), (2, 300)):
        await sink.record(
            StepFinished(
                run_id="crashed",
                at=T0,
                step=step,
                model="m",
                usage=Usage(input_tokens=10, output_tokens=5, cost_micros=cost),
                stop_reason="tool_use",
            )
        )
    await sink.record(started("done", "alice"))
    await sink.record(finished("done", steps=1, cost=2_000))  # settle never happened
    await sink.flush()  # the crash: nothing more is written
    assert {crashed.run_id, orphan.run_id, done.run_id} == {"crashed", "never-started", "done"}

    report = await recover(db.sessions, budget)
    assert report.interrupted_runs == ["crashed"]
    assert (report.settled_reservations, report.charged_micros) == (3, 1_000 + 2_000)
    run = (await AuditQueries(db.sessions).get_run("crashed")).run  # type: ignore[union-attr]
    assert run.status == RunStatus.INTERRUPTED.value and run.error == INTERRUPTED_ERROR
    assert (run.steps, run.input_tokens, run.output_tokens, run.cost_micros) == (2, 20, 10, 1_000)
    status = await budget.status("alice")
    assert (status.spent_micros, status.reserved_micros) == (3_000, 0)
    again = await recover(db.sessions, budget)
    assert (again.interrupted_runs, again.settled_reservations) == ([], 0)
    await sink.close()
