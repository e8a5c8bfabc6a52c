"""The database: one async engine per process, SQLite by default, PostgreSQL by URL.

``Database.open(url)`` builds the engine once; stores receive ``db.sessions`` (an
``async_sessionmaker``) and never build their own. On SQLite every connection runs
in WAL mode with ``synchronous=NORMAL``, a busy timeout and foreign keys on, and
transactions are begun by us (``BEGIN`` or, for writes that must be atomic,
``BEGIN IMMEDIATE`` via :data:`IMMEDIATE`), not by the ``sqlite3`` module.

Errors an operator can fix are raised as one clear message::

    ConfigError (executor.errors)
    └── DatabaseError
        ├── DatabaseUnavailable   the path cannot be created/opened, the server is unreachable
        ├── DatabaseReadOnly      the file or its directory is read-only
        ├── DatabaseLocked        another process holds the write lock past the busy timeout
        ├── SchemaTooNew          the database was upgraded by a newer coterie
        └── BackupUnsupported     ``db backup`` on PostgreSQL: use pg_dump
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import sqlite3
import weakref
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import ResolutionError
from alembic.util import CommandError
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.engine.url import URL
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import InterfaceError as SAInterfaceError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from executor.errors import ConfigError

__all__ = [
    "DEFAULT_URL",
    "IMMEDIATE",
    "BackupUnsupported",
    "Database",
    "DatabaseError",
    "DatabaseLocked",
    "DatabaseReadOnly",
    "DatabaseUnavailable",
    "SchemaTooNew",
    "SchemaVersion",
    "alembic_config",
    "engine_of",
    "migrations_dir",
    "translate_errors",
    "write_transaction",
]

DEFAULT_URL: Final = "sqlite+aiosqlite:///./data/coterie.db"

#: Execution options for a session/connection whose transaction must take the write
#: lock at once (``BEGIN IMMEDIATE`` on SQLite; ignored elsewhere, where row locks do it).
IMMEDIATE: Final[dict[str, Any]] = {"coterie_sqlite_begin": "IMMEDIATE"}


# --- errors ------------------------------------------------------------------------


class DatabaseError(ConfigError):
    """A database problem the operator can fix; the message names it."""


class DatabaseUnavailable(DatabaseError):
    pass


class DatabaseReadOnly(DatabaseError):
    pass


class DatabaseLocked(DatabaseError):
    pass


class SchemaTooNew(DatabaseError):
    def __init__(self, revision: str, known_head: str | None) -> None:
        self.revision = revision
        self.known_head = known_head
        super().__init__(
            f"the database schema is at revision {revision!r}, which this coterie does not "
            f"know (its newest is {known_head!r}): it was upgraded by a newer coterie. "
            "Upgrade coterie, or restore a backup taken before that upgrade."
        )


class BackupUnsupported(DatabaseError):
    pass


def _describe(url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return f"SQLite database {url.database or ':memory:'!s}"
    return f"database {url.render_as_string(hide_password=True)}"


def _translate(exc: BaseException, url: URL) -> DatabaseError | None:
    """Map a driver error to one of ours, or None when it is not an operator problem."""
    text = str(getattr(exc, "orig", None) or exc).lower()
    where = _describe(url)
    if "database is locked" in text or "database table is locked" in text:
        return DatabaseLocked(
            f"{where} is locked: another process has held the write lock for longer than the "
            "busy timeout (is a second coterie, or a sqlite3 shell inside a transaction, running?)"
        )
    if "readonly" in text or "read-only" in text or "read only" in text:
        return DatabaseReadOnly(
            f"{where} is read-only: give this user write access to the file and its directory "
            "(SQLite writes a -wal and a -shm file beside it)"
        )
    if "unable to open database file" in text:
        return DatabaseUnavailable(
            f"cannot open {where}: check that the path exists and that its directory is writable"
        )
    if url.get_backend_name() != "sqlite" and isinstance(
        exc, (OperationalError, SAInterfaceError, OSError, ConnectionError)
    ):
        return DatabaseUnavailable(f"cannot connect to {where}: {exc}")
    return None


@contextlib.contextmanager
def translate_errors(url: URL) -> Iterator[None]:
    """Turn a locked, read-only or unreachable database into one clear error."""
    try:
        yield
    except DatabaseError:
        raise
    except (DBAPIError, sqlite3.Error, OSError) as exc:
        ours = _translate(exc, url)
        if ours is None:
            raise
        raise ours from exc


# --- the database ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    current: str | None  # None: an empty database
    head: str | None  # the newest revision this code knows

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def _sqlite_path(url: URL) -> Path | None:
    db = url.database
    if not db or db == ":memory:" or db.startswith("file:") or url.query.get("mode") == "memory":
        return None
    return Path(db)


def _prepare_sqlite_path(url: URL) -> None:
    path = _sqlite_path(url)
    if path is None:
        return
    parent = path.expanduser().absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = "a file is in the way" if isinstance(exc, FileExistsError) else exc.strerror
        raise DatabaseUnavailable(
            f"cannot create the directory {parent} for SQLite database {path}: {reason or exc}"
        ) from exc
    if not parent.is_dir():
        raise DatabaseUnavailable(
            f"cannot create SQLite database {path}: {parent} is not a directory"
        )
    if path.exists() and not path.is_file():
        raise DatabaseUnavailable(f"cannot use {path} as a SQLite database: it is not a file")
    if (path.exists() and not os.access(path, os.W_OK)) or not os.access(parent, os.W_OK):
        raise DatabaseReadOnly(
            f"SQLite database {path} is read-only: give this user write access to the file "
            "and its directory (SQLite writes a -wal and a -shm file beside it)"
        )


def _install_sqlite_hooks(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Why: the sqlite3 module would BEGIN (deferred) behind our back; we begin ourselves
        # so that atomic writes can say BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("coterie_sqlite_begin", "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())


class Database:
    """The process's engine and session factory. Build once (``bot/app.py``), close at exit."""

    def __init__(self, engine: AsyncEngine, url: URL) -> None:
        self.engine = engine
        self.url = url
        self.sessions: async_sessionmaker[AsyncSession] = async_sessionmaker(
            engine, expire_on_commit=False
        )

    @classmethod
    def open(
        cls, url: str | URL = DEFAULT_URL, *, busy_timeout_ms: int = 5_000, echo: bool = False
    ) -> Database:
        """Build the engine (no connection yet). Creates a SQLite file's directory."""
        parsed = make_url(url) if isinstance(url, str) else url
        kwargs: dict[str, Any] = {"echo": echo}
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            _prepare_sqlite_path(parsed)
            if _sqlite_path(parsed) is not None:
                # Why: with one writer at a time a long wait for a pooled connection is
                # pointless; the busy timeout is where waiting for the lock belongs.
                kwargs["pool_size"] = 8
                kwargs["max_overflow"] = 24
        elif backend == "postgresql":
            kwargs["pool_pre_ping"] = True
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 40
        engine = create_async_engine(parsed, **kwargs)
        if backend == "sqlite":
            _install_sqlite_hooks(engine, busy_timeout_ms)
        return cls(engine, parsed)

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def sqlite_path(self) -> Path | None:
        return _sqlite_path(self.url) if self.is_sqlite else None

    def describe(self) -> str:
        return _describe(self.url)

    @contextlib.asynccontextmanager
    async def _translated(self) -> AsyncIterator[None]:
        with translate_errors(self.url):
            yield

    # --- schema --------------------------------------------------------------------

    async def current(self) -> SchemaVersion:
        """The database's revision and the newest one this code knows."""
        async with self._translated(), self.engine.connect() as conn:
            current = await conn.run_sync(_current_revision)
        return SchemaVersion(current=current, head=_head_revision())

    async def upgrade(self, revision: str = "head") -> SchemaVersion:
        """Bring the schema to ``revision`` (Alembic), refusing a newer schema than ours.

        Checks first that the database is writable and not locked, so start-up fails
        with one clear message rather than on the first run.
        """
        await self.check()
        async with self._translated(), self.engine.connect() as conn:
            conn = await conn.execution_options(**IMMEDIATE)
            await conn.run_sync(_upgrade, revision)
            await conn.commit()
        return await self.current()

    async def check(self) -> None:
        """Connect and take the write lock once: a read-only or locked database fails here."""
        from sqlalchemy import text

        async with self._translated(), self.engine.connect() as conn:
            conn = await conn.execution_options(**IMMEDIATE)
            if self.is_sqlite:
                # Why: BEGIN IMMEDIATE succeeds on a read-only file; only a write fails.
                version = (await conn.execute(text("PRAGMA user_version"))).scalar_one()
                await conn.execute(text(f"PRAGMA user_version = {int(version)}"))
            else:
                await conn.execute(text("SELECT 1"))
            await conn.rollback()

    # --- backup --------------------------------------------------------------------

    async def backup(self, destination: str | Path) -> Path:
        """A consistent copy of a live SQLite database (the online backup API)."""
        if not self.is_sqlite or self.sqlite_path is None:
            safe = self.url.set(password="***" if self.url.password else None)
            raise BackupUnsupported(
                "coterie db backup copies SQLite files only; for PostgreSQL run pg_dump, e.g. "
                f"`pg_dump --format=custom --file=coterie.dump {_pg_dsn(safe)}` "
                "(a consistent snapshot while the bot runs), and pg_restore to restore it"
            )
        source = self.sqlite_path
        async with self._translated():
            return await asyncio.to_thread(_sqlite_backup, source, Path(destination))

    async def close(self) -> None:
        await self.engine.dispose()


# --- transactions ------------------------------------------------------------------

# Why a weak map and not a Database attribute: stores receive only a session factory.
# One lock per engine, so the audit sink, the budget ledger and every other writer
# queue here, in the process, instead of in SQLite's busy handler (which sleeps and
# retries); BEGIN IMMEDIATE still guards against other processes.
_write_locks: weakref.WeakKeyDictionary[Engine, asyncio.Lock] = weakref.WeakKeyDictionary()


def engine_of(sessions: async_sessionmaker[AsyncSession]) -> AsyncEngine:
    """The engine a store's session factory is bound to."""
    bind = sessions.kw.get("bind")
    if not isinstance(bind, AsyncEngine):
        raise TypeError("the session factory must be bound to an AsyncEngine")
    return bind


def _write_lock(engine: AsyncEngine) -> contextlib.AbstractAsyncContextManager[Any]:
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()  # PostgreSQL: row locks, many writers
    lock = _write_locks.get(engine.sync_engine)
    if lock is None:
        lock = _write_locks[engine.sync_engine] = asyncio.Lock()
    return lock


@contextlib.asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One write transaction: the process's SQLite write lock, then ``BEGIN IMMEDIATE``
    (row locks on PostgreSQL), errors translated; committed when the block ends."""
    with translate_errors(engine.url):
        async with _write_lock(engine), engine.connect() as conn:
            conn = await conn.execution_options(**IMMEDIATE)
            async with conn.begin():
                yield conn


# --- alembic -----------------------------------------------------------------------


def migrations_dir() -> Path:
    """Where Alembic's scripts live, found from the installed package (any cwd works)."""
    # Why find_spec and not import: nothing imports migrations/ (it imports every table).
    spec = importlib.util.find_spec("migrations")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the migrations package is missing from this installation of coterie")
    return Path(next(iter(spec.submodule_search_locations)))


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["connection"] = connection
    return cfg


def _current_revision(conn: Connection) -> str | None:
    heads = MigrationContext.configure(conn).get_current_heads()
    return heads[0] if heads else None


def _head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _upgrade(conn: Connection, revision: str) -> None:
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
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseUnavailable(f"cannot create the directory {dest.parent}: {exc}") from exc
    src = sqlite3.connect(f"file:{source.expanduser().absolute()}?mode=ro", uri=True, timeout=30)
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
    return dest
