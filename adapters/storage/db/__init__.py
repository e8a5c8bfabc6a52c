"""The database: one async engine per process, SQLite by default, PostgreSQL by URL.

``Database.open(url)`` builds the engine once; stores receive ``db.sessions`` (an
``async_sessionmaker``) and never build their own. The package's parts, each one job:

* :mod:`~adapters.storage.db.errors`: what an operator can fix, as one message each
  (the ``DatabaseError`` tree), and :func:`translate_errors` at the driver's boundary;
* :mod:`~adapters.storage.db.engine`: ``DATABASE_URL`` spellings (:func:`async_url`),
  the SQLite file and its private modes, the engine and its pragmas (WAL,
  ``synchronous=NORMAL``, a busy timeout, foreign keys; transactions begun by us);
* :mod:`~adapters.storage.db.locks`: the process's SQLite write lock, one per engine;
* :mod:`~adapters.storage.db.sessions`: the engine behind a session factory
  (:func:`engine_of`) and one write transaction (:func:`write_transaction`);
* :mod:`~adapters.storage.db.schema`: the Alembic schema (check, upgrade, revisions)
  and SQLite backups.

Every public name is importable from here, as it was when this was one module.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sqlalchemy.engine.url import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from adapters.storage.db import schema as _schema
from adapters.storage.db.engine import (
    DEFAULT_URL,
    DIR_MODE,
    FILE_MODE,
    IMMEDIATE,
    POOL_DEFAULTS,
    async_url,
    create_private_file,
    make_private_dir,
    open_engine,
    sqlite_path,
)
from adapters.storage.db.errors import (
    BackupUnsupported,
    DatabaseBusy,
    DatabaseError,
    DatabaseExhausted,
    DatabaseLocked,
    DatabaseReadOnly,
    DatabaseUnavailable,
    SchemaTooNew,
    UnsupportedDatabase,
    describe,
    translate_errors,
)
from adapters.storage.db.locks import write_lock
from adapters.storage.db.schema import (
    MIGRATION_LOCK_KEY,
    SchemaVersion,
    alembic_config,
    known_revision,
    migrations_dir,
)
from adapters.storage.db.sessions import engine_of, write_transaction

__all__ = [
    "DEFAULT_URL",
    "DIR_MODE",
    "FILE_MODE",
    "IMMEDIATE",
    "MIGRATION_LOCK_KEY",
    "POOL_DEFAULTS",
    "BackupUnsupported",
    "Database",
    "DatabaseBusy",
    "DatabaseError",
    "DatabaseExhausted",
    "DatabaseLocked",
    "DatabaseReadOnly",
    "DatabaseUnavailable",
    "SchemaTooNew",
    "SchemaVersion",
    "UnsupportedDatabase",
    "alembic_config",
    "async_url",
    "create_private_file",
    "engine_of",
    "known_revision",
    "make_private_dir",
    "migrations_dir",
    "sqlite_path",
    "translate_errors",
    "write_lock",
    "write_transaction",
]


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
        cls,
        url: str | URL = DEFAULT_URL,
        *,
        busy_timeout_ms: int = 5_000,
        echo: bool = False,
        pool_size: int | None = None,
        max_overflow: int | None = None,
        pool_timeout_s: float = 30.0,
        create: bool = True,
    ) -> Database:
        """Build the engine (no connection yet). Creates a SQLite file and its directory,
        readable by their owner only (0600, 0700); with ``create=False`` (the read-only
        commands) a SQLite file that does not exist is :class:`DatabaseUnavailable`.
        ``url`` may be spelled ``sqlite:///`` or ``postgresql://`` (see :func:`async_url`).

        ``pool_size`` + ``max_overflow`` is the most connections this process opens
        (None: :data:`POOL_DEFAULTS` for the backend); a request that finds none free
        within ``pool_timeout_s`` fails as :class:`DatabaseExhausted`.
        """
        engine, parsed = open_engine(
            url,
            busy_timeout_ms=busy_timeout_ms,
            echo=echo,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout_s=pool_timeout_s,
            create=create,
        )
        return cls(engine, parsed)

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def sqlite_path(self) -> Path | None:
        return sqlite_path(self.url) if self.is_sqlite else None

    def describe(self) -> str:
        return describe(self.url)

    # --- schema (adapters.storage.db.schema) -----------------------------------------

    async def current(self) -> SchemaVersion:
        """The database's revision and the newest one this code knows."""
        return await _schema.current(self.engine)

    async def upgrade(self, revision: str = "head") -> SchemaVersion:
        """Bring the schema to ``revision`` (Alembic), refusing a newer schema than ours;
        a database that is read-only or locked fails first, with one clear message."""
        return await _schema.upgrade(self.engine, revision)

    async def server_version(self) -> str:
        """Connect once and say what answered ("SQLite 3.40.1", "PostgreSQL 15.4")."""
        return await _schema.server_version(self.engine)

    async def check(self) -> None:
        """Connect and take the write lock once: a read-only or locked database fails here."""
        await _schema.check(self.engine)

    async def backup(self, destination: str | Path) -> Path:
        """A consistent copy of a live SQLite database (the online backup API)."""
        return await _schema.backup(self.url, destination)

    async def close(self) -> None:
        writers = sys.modules.get("adapters.storage.sqlite_writer")
        if writers is not None:  # Why only if loaded: nothing to close otherwise
            await writers.close_writer(self.engine)
        await self.engine.dispose()
