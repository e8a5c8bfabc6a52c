"""The database: pragmas, migrations that match the models, clear errors, backup."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text

from adapters.storage.db import (
    BackupUnsupported,
    Database,
    DatabaseLocked,
    DatabaseReadOnly,
    DatabaseUnavailable,
    SchemaTooNew,
    alembic_config,
)
from tests.storage.dbs import sqlite_url


async def test_sqlite_pragmas(sqlite_db: Database) -> None:
    async with sqlite_db.engine.connect() as conn:
        values = [
            (await conn.execute(text(f"PRAGMA {p}"))).scalar_one()
            for p in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        ]
    assert values == ["wal", 1, 1, 5000]  # synchronous 1 = NORMAL


async def test_the_directory_is_created_and_upgrade_is_idempotent(tmp_path: Path) -> None:
    db = Database.open(sqlite_url(tmp_path / "a" / "b" / "coterie.db"))
    try:
        assert (await db.current()).current is None
        first = await db.upgrade()
        assert first.up_to_date and first.current is not None
        assert await db.upgrade() == first
    finally:
        await db.close()


async def test_models_and_migrations_never_drift(db: Database) -> None:
    # `alembic check` against both backends: autogenerate finds nothing to do.
    async with db.engine.connect() as conn:
        await conn.run_sync(lambda c: command.check(alembic_config(c)))


def test_a_path_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DatabaseUnavailable, match=r"cannot create the directory .*file"):
        Database.open(sqlite_url(blocker / "coterie.db"))


async def test_a_read_only_database(sqlite_db: Database) -> None:
    path = sqlite_db.sqlite_path
    await sqlite_db.close()
    ro = Database.open(f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true")
    try:
        with pytest.raises(DatabaseReadOnly, match="read-only"):
            await ro.upgrade()
    finally:
        await ro.close()


async def test_a_read_only_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Running as root ignores file modes, so pretend the OS said no.
    monkeypatch.setattr("adapters.storage.db.engine.os.access", lambda *a, **k: False)
    with pytest.raises(DatabaseReadOnly, match="read-only"):
        Database.open(sqlite_url(tmp_path / "coterie.db"))


async def test_a_newer_schema_than_the_code(sqlite_db: Database) -> None:
    async with sqlite_db.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    with pytest.raises(SchemaTooNew, match=r"'f00dfeed'.*newer coterie"):
        await sqlite_db.upgrade()


async def test_a_locked_database(sqlite_db: Database) -> None:
    path = sqlite_db.sqlite_path
    assert path is not None
    await sqlite_db.close()
    db = Database.open(sqlite_url(path), busy_timeout_ms=50)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(DatabaseLocked, match="is locked"):
            await db.upgrade()
    finally:
        holder.close()
        await db.close()


async def test_backup_while_writing_is_consistent(sqlite_db: Database, tmp_path: Path) -> None:
    from adapters.storage.tables import GuildSettings

    stop = asyncio.Event()

    async def writer() -> int:
        n = 0
        while not stop.is_set():
            async with sqlite_db.sessions() as s, s.begin():
                s.add(GuildSettings(guild_id=str(n)))
            n += 1
            await asyncio.sleep(0)
        return n

    task = asyncio.create_task(writer())
    dest = await sqlite_db.backup(tmp_path / "backups" / "copy.db")
    stop.set()
    await task
    copy = sqlite3.connect(dest)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert copy.execute("SELECT version_num FROM alembic_version").fetchone() is not None
    finally:
        copy.close()
    with pytest.raises(Exception, match="will not overwrite"):
        await sqlite_db.backup(dest)


async def test_backup_on_postgresql_gives_pg_dump_advice(pg_db: Database) -> None:
    with pytest.raises(BackupUnsupported, match="pg_dump"):
        await pg_db.backup("x")


async def test_an_unreachable_postgresql_is_one_clear_error() -> None:
    db = Database.open("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    try:
        with pytest.raises(DatabaseUnavailable, match="cannot connect"):
            await db.current()
    finally:
        await db.close()
