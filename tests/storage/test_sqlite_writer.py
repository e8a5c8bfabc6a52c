"""The SQLite writer's transaction on the caller's thread (:meth:`SqliteWriter.run_here`,
issue 19): it never waits for SQLite's write lock, writes nothing when it does not
commit, and leaves the checkpoints (and their fsyncs) to the writer's thread."""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, insert, select

import adapters.storage.sqlite_writer as sqlite_writer
from adapters.storage.db import Database
from adapters.storage.sqlite_writer import SqliteWriter, WriteTx, writer_for
from adapters.storage.tables import AuditRun

_RUNS: Any = AuditRun.__table__  # type: ignore[attr-defined]
_INSERT = insert(_RUNS)


def _run(run_id: str, excerpt: str = "") -> dict[str, Any]:
    return {
        "run_id": run_id,
        "trigger": "chat",
        "user_id": "u1",
        "started_at": datetime(2026, 12, 6, tzinfo=UTC),
        "prompt_excerpt": excerpt,
    }


async def _runs(db: Database) -> int:
    async with db.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(AuditRun)) or 0)


def _writer(db: Database) -> SqliteWriter:
    writer = writer_for(db.engine)
    assert writer is not None
    return writer


async def test_it_commits_on_the_callers_thread_and_says_so(sqlite_db: Database) -> None:
    done, result = _writer(sqlite_db).run_here(lambda tx: tx.execute(_INSERT, [_run("r1")]))
    assert (done, result) == (True, None)
    assert await _runs(sqlite_db) == 1


async def test_with_the_lock_held_elsewhere_it_writes_nothing_and_says_so(
    sqlite_db: Database,
) -> None:
    other = sqlite3.connect(str(sqlite_db.sqlite_path), isolation_level=None)
    called: list[WriteTx] = []
    try:
        other.execute("BEGIN IMMEDIATE")
        done, result = _writer(sqlite_db).run_here(called.append)
        other.execute("COMMIT")
    finally:
        other.close()
    assert (done, result, called) == (False, None, [])
    # Free again: it writes.
    assert _writer(sqlite_db).run_here(lambda tx: tx.execute(_INSERT, [_run("r1")]))[0]
    assert await _runs(sqlite_db) == 1


async def test_what_raises_is_rolled_back(sqlite_db: Database) -> None:
    def half(tx: WriteTx) -> None:
        tx.execute(_INSERT, [_run("r1")])
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        _writer(sqlite_db).run_here(half)
    assert await _runs(sqlite_db) == 0
    assert _writer(sqlite_db).run_here(lambda tx: tx.execute(_INSERT, [_run("r2")]))[0]
    assert await _runs(sqlite_db) == 1


@pytest.mark.parametrize("threshold", [10**9, 1], ids=["not yet", "due"])
async def test_the_writer_thread_checkpoints_what_it_wrote(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch, threshold: int
) -> None:
    """In WAL mode only a checkpoint writes the database file itself: its size tells
    whether the writer's thread ran one for the pages written on the caller's thread."""
    monkeypatch.setattr(sqlite_writer, "_CHECKPOINT_PAGES", threshold)
    writer = _writer(sqlite_db)
    path = sqlite_db.sqlite_path
    assert path is not None
    await writer.submit(lambda tx: None).future  # the thread is up
    before = os.path.getsize(path)
    rows = [_run(f"r{i}", "x" * 1_500) for i in range(40)]  # ~60 KB of new pages
    assert writer.run_here(lambda tx: tx.execute(_INSERT, rows))[0]
    await writer.submit(lambda tx: None).future  # queued after any checkpoint
    grew = os.path.getsize(path) > before
    assert grew is (threshold == 1)
    assert await _runs(sqlite_db) == 40
