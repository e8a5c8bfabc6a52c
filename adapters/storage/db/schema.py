"""The schema (Alembic) and backups.

``coterie run`` upgrades on start: :func:`upgrade` first reads the stored revision
with plain SQL and the newest one off the migration files, and loads Alembic only
when they differ (a quarter of a second on every start otherwise). On PostgreSQL
an upgrade holds an advisory lock, so processes starting together migrate once. A
schema newer than this code knows is :class:`SchemaTooNew`. :func:`backup` copies a
live SQLite file with the online backup API; PostgreSQL has ``pg_dump``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import re
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from sqlalchemy.engine import Connection
from sqlalchemy.engine.url import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.storage.db.engine import IMMEDIATE, create_private_file, make_private_dir, sqlite_path
from adapters.storage.db.errors import (
    BackupUnsupported,
    DatabaseError,
    DatabaseUnavailable,
    SchemaTooNew,
    translate_errors,
)
from executor.errors import ConfigError

if TYPE_CHECKING:
    # Why not at run time: Alembic loads only when a schema must change (see upgrade).
    from alembic.config import Config as AlembicConfig

__all__ = [
    "MIGRATION_LOCK_KEY",
    "SchemaVersion",
    "alembic_config",
    "backup",
    "check",
    "current",
    "head_revision",
    "known_revision",
    "migrations_dir",
    "plain_head",
    "server_version",
    "upgrade",
]

#: PostgreSQL: the transaction-level advisory lock a schema upgrade holds ("cote", "mig1").
MIGRATION_LOCK_KEY: Final = (0x636F7465, 0x6D696731)


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    current: str | None  # None: an empty database
    head: str | None  # the newest revision this code knows

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


@contextlib.asynccontextmanager
async def _translated(url: URL) -> AsyncIterator[None]:
    with translate_errors(url):
        yield


async def current(engine: AsyncEngine) -> SchemaVersion:
    """The database's revision and the newest one this code knows."""
    async with _translated(engine.url), engine.connect() as conn:
        revision = await conn.run_sync(_current_revision)
    return SchemaVersion(current=revision, head=head_revision())


async def upgrade(engine: AsyncEngine, revision: str = "head") -> SchemaVersion:
    """Bring the schema to ``revision`` (Alembic), refusing a newer schema than ours.

    Checks first that the database is writable and not locked, so start-up fails
    with one clear message rather than on the first run.
    """
    from sqlalchemy import text

    await check(engine)
    if revision == "head":
        # Why look first, and without Alembic: importing it and loading the scripts
        # costs a quarter of a second on every start of run, ask and chat.
        head = plain_head()
        if head is not None and await _stored_revision(engine) == head:
            return SchemaVersion(current=head, head=head)
    async with _translated(engine.url), engine.connect() as conn:
        conn = await conn.execution_options(**IMMEDIATE)
        if engine.dialect.name != "sqlite":
            # Why: several processes may start at once on one PostgreSQL; the first
            # migrates, the others wait here and then find the schema current
            # (Alembic reads the revision after the lock). Released at commit.
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:a, :b)"),
                {"a": MIGRATION_LOCK_KEY[0], "b": MIGRATION_LOCK_KEY[1]},
            )
        await conn.run_sync(_upgrade, revision)
        await conn.commit()
    return await current(engine)


async def _stored_revision(engine: AsyncEngine) -> str | None:
    """The revision in ``alembic_version``, read with plain SQL (None: none yet)."""
    from sqlalchemy import inspect, text

    async with _translated(engine.url), engine.connect() as conn:
        if not await conn.run_sync(lambda c: inspect(c).has_table("alembic_version")):
            return None
        rows = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
    return str(rows[0][0]) if len(rows) == 1 else None


async def server_version(engine: AsyncEngine) -> str:
    """Connect once and say what answered ("SQLite 3.40.1", "PostgreSQL 15.4")."""
    from sqlalchemy import text

    async with _translated(engine.url), engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return "SQLite " + str(
                (await conn.execute(text("SELECT sqlite_version()"))).scalar_one()
            )
        return "PostgreSQL " + str((await conn.execute(text("SHOW server_version"))).scalar_one())


async def check(engine: AsyncEngine) -> None:
    """Connect and take the write lock once: a read-only or locked database fails here."""
    from sqlalchemy import text

    async with _translated(engine.url), engine.connect() as conn:
        conn = await conn.execution_options(**IMMEDIATE)
        if engine.dialect.name == "sqlite":
            # Why: BEGIN IMMEDIATE succeeds on a read-only file; only a write fails.
            version = (await conn.execute(text("PRAGMA user_version"))).scalar_one()
            await conn.execute(text(f"PRAGMA user_version = {int(version)}"))
        else:
            await conn.execute(text("SELECT 1"))
        await conn.rollback()


async def backup(url: URL, destination: str | Path) -> Path:
    """A consistent copy of a live SQLite database (the online backup API)."""
    source = sqlite_path(url) if url.get_backend_name() == "sqlite" else None
    if source is None:
        safe = url.set(password="***" if url.password else None)
        raise BackupUnsupported(
            "coterie db backup copies SQLite files only; for PostgreSQL run pg_dump, e.g. "
            f"`pg_dump --format=custom --file=coterie.dump {_pg_dsn(safe)}` "
            "(a consistent snapshot while the bot runs), and pg_restore to restore it"
        )
    async with _translated(url):
        return await asyncio.to_thread(_sqlite_backup, source, Path(destination))


# --- alembic -----------------------------------------------------------------------


def migrations_dir() -> Path:
    """Where Alembic's scripts live, found from the installed package (any cwd works)."""
    # Why find_spec and not import: nothing imports migrations/ (it imports every table).
    spec = importlib.util.find_spec("migrations")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the migrations package is missing from this installation of coterie")
    return Path(next(iter(spec.submodule_search_locations)))


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    # Why stdout here: alembic binds its default stdout when first imported, which may
    # be a stream someone has closed since (a test capture).
    cfg = AlembicConfig(stdout=sys.stdout)
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["connection"] = connection
    return cfg


def _current_revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    heads = MigrationContext.configure(conn).get_current_heads()
    return heads[0] if heads else None


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


_REVISION = re.compile(r"^revision(?:\s*:[^=\n]+)?\s*=\s*[\"']([^\"']+)[\"']", re.MULTILINE)
_DOWN_REVISION = re.compile(
    r"^down_revision(?:\s*:[^=\n]+)?\s*=\s*(None|[\"']([^\"']+)[\"'])\s*$", re.MULTILINE
)


def plain_head() -> str | None:
    """The newest revision, read off the migration files without importing Alembic;
    None when they do not say it plainly (a merge, a branch, an unusual file): then
    Alembic decides."""
    revisions: set[str] = set()
    downs: set[str] = set()
    try:
        files = list((migrations_dir() / "versions").glob("*.py"))
        for path in files:
            text = path.read_text(encoding="utf-8")
            rev, down = _REVISION.search(text), _DOWN_REVISION.search(text)
            if rev is None or down is None:
                return None
            revisions.add(rev.group(1))
            if down.group(2):
                downs.add(down.group(2))
    except (OSError, ConfigError):
        return None
    heads = revisions - downs
    return next(iter(heads)) if len(heads) == 1 and len(revisions) == len(files) else None


def known_revision(revision: str) -> bool:
    """Whether this coterie's migrations know ``revision`` (False: a newer coterie's)."""
    from alembic.script import ScriptDirectory
    from alembic.script.revision import ResolutionError
    from alembic.util import CommandError

    script = ScriptDirectory.from_config(alembic_config())
    try:
        return script.get_revision(revision) is not None
    except (ResolutionError, CommandError):
        return False


def _upgrade(conn: Connection, revision: str) -> None:
    from alembic import command
    from alembic.script import ScriptDirectory
    from alembic.script.revision import ResolutionError
    from alembic.util import CommandError

    cfg = alembic_config(conn)
    script = ScriptDirectory.from_config(cfg)
    current = _current_revision(conn)
    if current is not None:
        try:
            known = script.get_revision(current) is not None
        except (ResolutionError, CommandError):
            known = False
        if not known:
            raise SchemaTooNew(current, script.get_current_head())
    command.upgrade(cfg, revision)


def _pg_dsn(url: URL) -> str:
    plain = url.set(drivername="postgresql")
    return f"'{plain.render_as_string(hide_password=False)}'"


def _sqlite_backup(source: Path, destination: Path) -> Path:
    dest = destination.expanduser().absolute()
    if dest.exists():
        raise DatabaseError(f"will not overwrite {dest}: choose a new backup path")
    try:
        make_private_dir(dest.parent)
        # Why create it first: the copy is as private as the database (sqlite3 makes 0644),
        # and O_EXCL refuses a file that appeared since the check above.
        if not create_private_file(dest):
            raise DatabaseError(f"will not overwrite {dest}: choose a new backup path")
    except OSError as exc:
        raise DatabaseUnavailable(f"cannot create {dest}: {exc.strerror or exc}") from exc
    try:
        src = sqlite3.connect(
            f"file:{source.expanduser().absolute()}?mode=ro", uri=True, timeout=30
        )
        try:
            dst = sqlite3.connect(dest)
            try:
                # Why: one step (pages=-1) copies under one read transaction: a consistent
                # snapshot even while the bot writes (WAL readers never block the writer).
                src.backup(dst, pages=-1)
            finally:
                dst.close()
        finally:
            src.close()
    except BaseException:
        dest.unlink(missing_ok=True)  # no empty or half copy that looks like a backup
        raise
    return dest
