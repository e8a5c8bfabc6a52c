"""Transient database faults are their own kind (issue 12): a lock held past the busy
timeout and a server or pool out of connections are ``DatabaseBusy`` (members read
"busy, try again"; the detail goes to the log), and the pool is sized from settings."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from adapters.storage.db import (
    POOL_DEFAULTS,
    Database,
    DatabaseBusy,
    DatabaseError,
    DatabaseExhausted,
    DatabaseLocked,
    translate_errors,
)
from bot.app import build_app
from bot.client import render_error
from bot.settings import Settings
from executor.errors import ConfigError, HostBusy
from tests.storage.dbs import _pg_admin, run_async, sqlite_url

PG = make_url("postgresql+asyncpg://coterie@db.internal:5432/coterie")


def test_transient_faults_are_their_own_kind() -> None:
    for kind in (DatabaseLocked, DatabaseExhausted):
        assert issubclass(kind, DatabaseBusy)
        assert issubclass(kind, HostBusy)  # what the run loop and the renderer look for
        assert issubclass(kind, DatabaseError)  # start-up still reports it in one line
    assert issubclass(DatabaseBusy, ConfigError)


@pytest.mark.parametrize(
    "server_says",
    [
        "sorry, too many clients already",
        "remaining connection slots are reserved for non-replication superuser connections",
        'too many connections for role "coterie"',
    ],
)
def test_postgresql_out_of_connections_is_translated(server_says: str) -> None:
    raw = DBAPIError("connect", {}, Exception(server_says))
    with pytest.raises(DatabaseExhausted) as info, translate_errors(PG):
        raise raw
    text = str(info.value)
    assert "connection slots are used up" in text
    assert "COTERIE_DB_POOL_SIZE" in text and "max_connections" in text
    assert info.value.__cause__ is raw


def test_a_lock_is_busy_and_members_never_read_its_path() -> None:
    with pytest.raises(DatabaseLocked) as info, translate_errors(make_url("sqlite:////srv/c.db")):
        raise OperationalError("BEGIN IMMEDIATE", {}, Exception("database is locked"))
    assert "/srv/c.db" in str(info.value)  # the log's copy names the file
    text, ref = render_error(info.value)
    assert ref is not None and f"(ref {ref})" in text
    assert text.startswith("coterie is busy right now; try again in a moment")
    assert "/srv" not in text and "configured" not in text


def test_any_other_database_fault_is_logged_not_shown() -> None:
    from adapters.storage.db import DatabaseUnavailable

    text, ref = render_error(DatabaseUnavailable("cannot connect to database db.internal:5432"))
    assert ref is not None and "db.internal" not in text
    assert "the admins can find it in the log" in text


async def test_a_pool_with_no_connection_free_is_busy(tmp_path: Path) -> None:
    db = Database.open(
        sqlite_url(tmp_path / "c.db"), pool_size=1, max_overflow=0, pool_timeout_s=0.05
    )
    try:
        async with db.engine.connect():  # the one connection, held
            with pytest.raises(DatabaseExhausted, match="COTERIE_DB_POOL_SIZE"):
                await db.check()
        await db.check()  # free again
    finally:
        await db.close()


async def test_the_pool_is_sized_from_settings(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"
    default = Database.open(url)
    try:
        pool = default.engine.pool
        assert (pool.size(), pool._max_overflow) == POOL_DEFAULTS["sqlite"]  # type: ignore[attr-defined]
    finally:
        await default.close()
    settings = Settings(_env_file=None, database_url=url, db_pool_size=3, db_max_overflow=2)
    app = await build_app(settings)
    try:
        pool = app.db.engine.pool
        assert (pool.size(), pool._max_overflow) == (3, 2)  # type: ignore[attr-defined]
    finally:
        await app.close()


def test_the_pool_settings_read_their_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COTERIE_DB_POOL_SIZE", raising=False)
    monkeypatch.delenv("COTERIE_DB_MAX_OVERFLOW", raising=False)
    unset = Settings(_env_file=None)
    assert (unset.db_pool_size, unset.db_max_overflow) == (None, None)  # the backend's
    monkeypatch.setenv("COTERIE_DB_POOL_SIZE", "4")
    monkeypatch.setenv("COTERIE_DB_MAX_OVERFLOW", "0")
    s = Settings(_env_file=None)
    assert (s.db_pool_size, s.db_max_overflow) == (4, 0)


async def test_a_postgresql_role_out_of_connections_is_busy(pg_url: str) -> None:
    role = f"coterie_tiny_{uuid.uuid4().hex[:8]}"
    base = make_url(pg_url)
    run_async(lambda: _pg_admin(pg_url, f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 1'))
    db = Database.open(base.set(username=role), pool_size=2, max_overflow=0)
    try:
        async with db.engine.connect():  # the role's one connection
            with pytest.raises(DatabaseExhausted, match="connection slots are used up"):
                await db.check()
    finally:
        await db.close()
        run_async(
            lambda: _pg_admin(
                pg_url,
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'",
                f'DROP ROLE IF EXISTS "{role}"',
            )
        )
