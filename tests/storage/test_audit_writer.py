"""The SQL audit sink's writes on a SQLite file (issue 19): a transaction is one call,
on the event loop's thread when it is small and SQLite's write lock is free, else in the
database's writer thread; concurrent runs share it, the rows are the ones the engine
would have written either way, and a cancellation never writes a row twice nor loses
one."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

import adapters.storage.audit_sink as audit_sink
from adapters.storage.audit_sink import SqlAuditSink
from adapters.storage.db import Database
from adapters.storage.sqlite_writer import writer_for
from adapters.storage.tables import (
    AuditEventRow,
    AuditModelAttempt,
    AuditRun,
    AuditStep,
    AuditToolCall,
)
from executor.events import ModelAttemptEvent, ModelRequestEvent, RunDelivered, ToolChargeEvent
from executor.messages import Usage
from executor.models.base import Attempt
from tests.conformance.test_audit_sink import T0, finished, full_run, started

QUIET: dict[str, Any] = {"batch_size": 100_000, "flush_interval_s": 3600}
TABLES = (AuditRun, AuditStep, AuditModelAttempt, AuditToolCall, AuditEventRow)


async def _dump(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every audit row, as stored (ids left out), in a stable order."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    async with db.engine.connect() as conn:
        for model in TABLES:
            table: Any = getattr(model, "__table__")  # noqa: B009  (SQLModel types it loosely)
            columns = [c for c in table.columns if c.name != "id"]
            rows = (await conn.execute(select(*columns))).all()
            out[table.name] = sorted(tuple(r) for r in rows)
    return out


async def _through(db: Database, *, how: str) -> dict[str, list[tuple[Any, ...]]]:
    sink = SqlAuditSink(db.sessions, **QUIET)
    sink.owner = "instance-1"  # audit_runs.owner (scale-out)
    if how == "engine":
        sink._sqlite_file = None  # the engine's path, as on PostgreSQL
    elif how == "thread":
        sink.inline_rows = 0  # every write in the writer's thread
    try:
        for i in range(3):
            await full_run(sink, f"r{i}", user=f"u{i}")
        # The rows the sink learned after the writer thread was first written: whether
        # the answer arrived (an update after the finish), a tool's own charge, a
        # request owed were it never answered (written at once, both).
        await sink.record(RunDelivered(run_id="r0", at=T0, delivered=True))
        await sink.record(RunDelivered(run_id="r1", at=T0, delivered=False, error="gone"))
        await sink.record(started("open"))
        await sink.record(
            ModelRequestEvent(
                run_id="open",
                at=T0,
                step=1,
                message_count=1,
                input_tokens=120,
                unanswered_micros=36,
            )
        )
        await sink.record(
            ToolChargeEvent(
                run_id="open", at=T0, step=1, call_id="c9", name="web_search", cost_micros=5_000
            )
        )
        await sink.record(
            ModelAttemptEvent(
                run_id="open",
                at=T0 + timedelta(seconds=1),
                step=1,
                attempt=Attempt(model="a:1", latency_ms=12.5),
                usage=Usage(input_tokens=10, output_tokens=2, cost_micros=33),
            )
        )
    finally:
        await sink.close()
    return await _dump(db)


@pytest.mark.parametrize("how", ["loop", "thread"])
async def test_the_writer_stores_the_rows_the_engine_stores(
    sqlite_db: Database, tmp_path: Any, how: str
) -> None:
    other = Database.open(f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}")
    try:
        await other.upgrade()
        by_engine = await _through(other, how="engine")
    finally:
        await other.close()
    by_thread = await _through(sqlite_db, how=how)
    assert by_thread == by_engine
    assert len(by_thread["audit_runs"]) == 4 and by_thread["audit_events"]
    runs = await _runs(sqlite_db)
    assert {r.run_id: r.delivered for r in runs} == {
        "r0": True,
        "r1": False,
        "r2": None,
        "open": None,
    }
    assert {r.owner for r in runs} == {"instance-1"}
    kinds = {row[1] for row in by_thread["audit_events"]}
    assert {"tool_charge", "model_request"} <= kinds


async def _runs(db: Database) -> list[AuditRun]:
    async with db.sessions() as s:
        return list((await s.scalars(select(AuditRun))).all())


async def test_concurrent_runs_share_a_transaction(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    write_rows = audit_sink._write_rows

    def counted(tx: Any, batch: Any) -> None:
        writes.append(threading.get_ident())
        write_rows(tx, batch)

    monkeypatch.setattr(audit_sink, "_write_rows", counted)
    sink = SqlAuditSink(sqlite_db.sessions, **QUIET)
    try:
        await asyncio.gather(*(sink.record(started(f"r{i}")) for i in range(10)))
        assert len(writes) <= 2  # ten runs' starts: one transaction (two when one was first)
        writes.clear()
        await asyncio.gather(
            *(
                sink.record(
                    ModelAttemptEvent(
                        run_id=f"r{i}",
                        at=T0,
                        step=1,
                        attempt=Attempt(model="a:1", latency_ms=1),
                        usage=Usage(input_tokens=1, output_tokens=1, cost_micros=5),
                    )
                )
                for i in range(10)
            )
        )
        assert len(writes) <= 2
    finally:
        await sink.close()
    async with sqlite_db.sessions() as s:
        assert len((await s.scalars(select(AuditModelAttempt))).all()) == 10


async def test_a_cancelled_record_writes_its_rows_once(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while the writer thread commits: the caller waits for the write's end,
    so the rows are neither written twice nor kept for a second write."""
    in_thread = threading.Event()
    release = threading.Event()
    write_rows = audit_sink._write_rows

    def held(tx: Any, batch: Any) -> None:
        write_rows(tx, batch)
        if batch:
            in_thread.set()
            release.wait(30)

    sink = SqlAuditSink(sqlite_db.sessions, **QUIET)
    sink.inline_rows = 0  # every write in the writer's thread, where it can be held
    try:
        await sink.record(started("r1"))
        monkeypatch.setattr(audit_sink, "_write_rows", held)
        spend = ModelAttemptEvent(
            run_id="r1",
            at=T0,
            step=1,
            attempt=Attempt(model="a:1", latency_ms=1),
            usage=Usage(input_tokens=1, output_tokens=1, cost_micros=5),
        )
        recording = asyncio.create_task(sink.record(spend))
        await asyncio.to_thread(in_thread.wait, 30)
        recording.cancel()
        # Another run's row arrives while the first write is held: it waits for its own.
        later = asyncio.create_task(
            sink.record(ModelRequestEvent(run_id="r1", at=T0, step=2, message_count=2))
        )
        await asyncio.sleep(0)
        assert not recording.done()  # still waiting for the thread, cancelled or not
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await recording
        await later
        await sink.record(finished("r1", steps=1, cost=5))
    finally:
        release.set()
        await sink.close()
    async with sqlite_db.sessions() as s:
        attempts = (await s.scalars(select(AuditModelAttempt))).all()
        run = await s.get(AuditRun, "r1")
    assert [a.cost_micros for a in attempts] == [5]  # once
    assert run is not None and run.status == "ok"


async def test_a_failed_write_reaches_its_callers_and_keeps_the_rows(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_rows = audit_sink._write_rows
    failures = [RuntimeError("disk on fire")]

    def flaky(tx: Any, batch: Any) -> None:
        if failures and batch.children:
            raise failures.pop()
        write_rows(tx, batch)

    monkeypatch.setattr(audit_sink, "_write_rows", flaky)
    sink = SqlAuditSink(sqlite_db.sessions, **QUIET)
    try:
        await sink.record(started("r1"))
        spend = ModelAttemptEvent(
            run_id="r1",
            at=T0,
            step=1,
            attempt=Attempt(model="a:1", latency_ms=1),
            usage=Usage(input_tokens=1, output_tokens=1, cost_micros=5),
        )
        with pytest.raises(RuntimeError, match="disk on fire"):
            await sink.record(spend)
        await sink.flush()  # the next write carries the kept rows
    finally:
        await sink.close()
    async with sqlite_db.sessions() as s:
        assert [a.cost_micros for a in (await s.scalars(select(AuditModelAttempt))).all()] == [5]


async def test_a_small_write_commits_on_the_loop_a_big_one_in_the_writer_thread(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[tuple[int, int]] = []  # (thread, rows) of each transaction
    write_rows = audit_sink._write_rows

    def seen(tx: Any, batch: Any) -> None:
        threads.append((threading.get_ident(), batch.size()))
        write_rows(tx, batch)

    monkeypatch.setattr(audit_sink, "_write_rows", seen)
    sink = SqlAuditSink(sqlite_db.sessions, **QUIET)
    sink.inline_rows = 3
    loop_thread = threading.get_ident()
    try:
        await sink.record(started("r1"))
        for step in range(1, 6):
            await sink.record(ModelRequestEvent(run_id="r1", at=T0, step=step, message_count=1))
        await sink.flush()  # five rows: more than inline_rows
    finally:
        await sink.close()
    assert threads[0] == (loop_thread, 1)
    assert threads[1][1] == 5 and threads[1][0] != loop_thread
    async with sqlite_db.sessions() as s:
        assert len((await s.scalars(select(AuditEventRow))).all()) == 5


async def test_a_write_waits_in_the_thread_while_another_process_holds_the_lock(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another connection (another process, the backup) holds SQLite's write lock: the
    write is not tried on the loop's thread, where it would block every run while it
    waits, nor failed; it waits in the writer's thread and commits once the lock is
    free."""
    writer = writer_for(sqlite_db.engine)
    assert writer is not None
    handed_over = asyncio.Event()
    submit = writer.submit

    def watched(fn: Any) -> Any:
        handed_over.set()
        return submit(fn)

    monkeypatch.setattr(writer, "submit", watched)
    sink = SqlAuditSink(sqlite_db.sessions, **QUIET)
    other = sqlite3.connect(str(sqlite_db.sqlite_path), isolation_level=None)
    try:
        await sink.record(started("r1"))
        other.execute("BEGIN IMMEDIATE")
        spend = ModelAttemptEvent(
            run_id="r1",
            at=T0,
            step=1,
            attempt=Attempt(model="a:1", latency_ms=1),
            usage=Usage(input_tokens=1, output_tokens=1, cost_micros=5),
        )
        recording = asyncio.create_task(sink.record(spend))
        await handed_over.wait()  # the loop runs on: this test got here
        assert not recording.done()
        other.execute("COMMIT")
        await recording
    finally:
        other.close()
        await sink.close()
    async with sqlite_db.sessions() as s:
        assert [a.cost_micros for a in (await s.scalars(select(AuditModelAttempt))).all()] == [5]


async def test_a_lone_runs_write_takes_no_turn_of_the_loop_other_runs_share_one(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The turn of the loop a write waits first is for other runs' rows: a lone run's
    durable write returns without one; with other runs open, the write waits that turn
    and carries the rows they record in it."""
    writes: list[int] = []
    write_rows = audit_sink._write_rows

    def counted(tx: Any, batch: Any) -> None:
        writes.append(batch.size())
        write_rows(tx, batch)

    monkeypatch.setattr(audit_sink, "_write_rows", counted)
    sink = SqlAuditSink(sqlite_db.sessions, **QUIET)

    def spend(run_id: str) -> ModelAttemptEvent:
        return ModelAttemptEvent(
            run_id=run_id,
            at=T0,
            step=1,
            attempt=Attempt(model="a:1", latency_ms=1),
            usage=Usage(input_tokens=1, output_tokens=1, cost_micros=5),
        )

    try:
        await sink.record(started("alone"))
        turned: list[str] = []
        asyncio.get_running_loop().call_soon(turned.append, "turn")
        await sink.record(spend("alone"))
        assert turned == []  # durable, and no other task ran meanwhile
        await sink.record(finished("alone", steps=1, cost=5))
        await asyncio.gather(sink.record(started("a")), sink.record(started("b")))
        writes.clear()
        await asyncio.gather(sink.record(spend("a")), sink.record(spend("b")))
        assert writes == [2]  # one transaction for both
    finally:
        await sink.close()
    async with sqlite_db.sessions() as s:
        assert len((await s.scalars(select(AuditModelAttempt))).all()) == 3
