"""Databases for storage tests: a migrated SQLite file per test, and PostgreSQL.

PostgreSQL runs where ``COTERIE_TEST_POSTGRES_URL`` is set. Set but unreachable is a
failure, never a skip (CI sets it and must not pass silently); unset, the PostgreSQL
cases skip with the reason.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url

from adapters.storage.db import Database

T = TypeVar("T")
PG_ENV = "COTERIE_TEST_POSTGRES_URL"
BACKENDS = ["sqlite", "postgresql"]


def run_async(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on its own loop, in a thread.

    Why a thread: session fixtures may be set up from inside a test's running loop.
    """
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(fn())).result()


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


async def _migrate(url: str) -> None:
    db = Database.open(url)
    try:
        await db.upgrade()
    finally:
        await db.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file; each test gets a copy (migrating per test is slow)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    run_async(lambda: _migrate(sqlite_url(path)))
    return path


@pytest.fixture
async def sqlite_db(sqlite_template: Path, tmp_path: Path) -> AsyncIterator[Database]:
    path = tmp_path / "coterie.db"
    shutil.copyfile(sqlite_template, path)
    db = Database.open(sqlite_url(path))
    try:
        yield db
    finally:
        await db.close()


async def _pg_admin(url: str, *statements: str) -> None:
    import asyncpg

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"{PG_ENV} is not set: the PostgreSQL cases need a server")
    name = f"coterie_test_{uuid.uuid4().hex[:12]}"
    try:
        run_async(lambda: _pg_admin(base, f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.fail(f"{PG_ENV} is set but PostgreSQL is unreachable: {exc!r}", pytrace=False)
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        run_async(lambda: _migrate(url))
        yield url
    finally:
        run_async(lambda: _pg_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


_TABLES = (
    "audit_events, audit_tool_calls, audit_model_attempts, audit_steps, audit_runs, "
    "budget_ledger, budget_reservations, budget_grants, budget_members, "
    "guild_settings, channel_settings, thread_bindings, personas, "
    "schedules, skill_versions, skills, memory_notes, memory_opt_out, mcp_tool_pins, "
    "instances, leases, run_checkpoints, approvals"
)


@pytest.fixture
async def pg_db(pg_url: str) -> AsyncIterator[Database]:
    db = Database.open(pg_url)
    try:
        async with db.engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {_TABLES} RESTART IDENTITY CASCADE"))
        yield db
    finally:
        await db.close()


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest) -> Database:
    """The same test on SQLite and PostgreSQL.

    Why a sync fixture: an async fixture cannot request another by getfixturevalue.
    """
    result: Database = request.getfixturevalue(
        f"{'sqlite' if request.param == 'sqlite' else 'pg'}_db"
    )
    return result


async def writes_after_another_writer(db: Database, write: Callable[[], Awaitable[object]]) -> None:
    """Run ``write`` while another connection to the SQLite file holds the write lock (a
    run's audit rows, say): it must ask for the lock (``BEGIN IMMEDIATE``, which waits
    within the busy timeout) before it reads, then go on once the other writer commits.
    A deferred transaction that reads and then writes gets "database is locked" at once
    instead, without waiting: that is what this catches (the write raises here)."""
    asked = asyncio.Event()

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement == "BEGIN IMMEDIATE":
            asked.set()

    holder = sqlite3.connect(str(db.url.database), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        writing = asyncio.ensure_future(write())
        asking = asyncio.ensure_future(asked.wait())
        await asyncio.wait({writing, asking}, return_when=asyncio.FIRST_COMPLETED)
        asking.cancel()
        if not asked.is_set():
            await writing  # raises "database is locked" when that is what happened
            raise AssertionError("wrote without asking for the write lock first")
        holder.execute("COMMIT")  # the other writer is done: this one goes on
        await writing
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
        holder.close()
