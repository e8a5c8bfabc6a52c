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
        ├── DatabaseBusy          transient (also an executor.errors.HostBusy): members are
        │   │                     told "busy, try again", the log gets this message
        │   ├── DatabaseLocked    another process holds the write lock past the busy timeout
        │   └── DatabaseExhausted no connection free: the server's slots ("too many
        │                         clients") or the pool (COTERIE_DB_POOL_SIZE + _MAX_OVERFLOW)
        ├── SchemaTooNew          the database was upgraded by a newer coterie
        ├── BackupUnsupported     ``db backup`` on PostgreSQL: use pg_dump
        ├── UnsupportedDatabase   ``DATABASE_URL`` names a database coterie does not speak (MySQL)
        └── InstanceLocked        another coterie holds the database (:mod:`adapters.storage.lock`)

``DATABASE_URL`` may be spelled the way most people write it: ``sqlite:///path`` and
``postgresql://`` (or ``postgres://``) get the async driver (:func:`async_url`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import os
import re
import sqlite3
import sys
import weakref
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.engine.url import URL
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import InterfaceError as SAInterfaceError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from executor.errors import ConfigError, HostBusy

if TYPE_CHECKING:
    # Why not at run time: Alembic loads only when a schema must change (see upgrade).
    from alembic.config import Config as AlembicConfig

__all__ = [
    "DEFAULT_URL",
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
    "translate_errors",
    "write_transaction",
]

DEFAULT_URL: Final = "sqlite+aiosqlite:///./data/coterie.db"

#: Connections per process by backend, (pool size, overflow) when settings leave them
#: unset. Why fewer on SQLite: with one writer at a time a long wait for a pooled
#: connection is pointless; the busy timeout is where waiting for the lock belongs.
#: PostgreSQL's default ``max_connections`` is 100: one coterie takes at most 50.
POOL_DEFAULTS: Final[dict[str, tuple[int, int]]] = {"sqlite": (8, 24), "postgresql": (10, 40)}

#: PostgreSQL: the transaction-level advisory lock a schema upgrade holds ("cote", "mig1").
MIGRATION_LOCK_KEY: Final = (0x636F7465, 0x6D696731)

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


class DatabaseBusy(DatabaseError, HostBusy):
    """The database could not take this now; nothing to reconfigure for one occurrence.

    Why still a DatabaseError: at start-up (``coterie run``, ``coterie doctor``) the
    operator reads the same one-line message as for the others. Members read "busy,
    try again" (the bot's renderer and the run loop check :class:`HostBusy` first),
    never this message: it names a server path or host.
    """


class DatabaseLocked(DatabaseBusy):
    pass


class DatabaseExhausted(DatabaseBusy):
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


class UnsupportedDatabase(DatabaseError):
    pass


_SUPPORTED = (
    "use SQLite (DATABASE_URL=sqlite:///./data/coterie.db) or PostgreSQL "
    "(DATABASE_URL=postgresql://user@host/db)"
)


def async_url(url: str | URL) -> URL:
    """``url`` with the async driver coterie uses: ``sqlite:///x`` -> ``sqlite+aiosqlite:///x``,
    ``postgresql://`` and ``postgres://`` -> ``postgresql+asyncpg://``. Anything else is one
    clear :class:`UnsupportedDatabase`."""
    from sqlalchemy.exc import ArgumentError

    if isinstance(url, str):
        text = url.strip()
        if text.startswith("postgres://"):  # Heroku's and libpq's spelling
            text = "postgresql://" + text.removeprefix("postgres://")
        try:
            parsed = make_url(text)
        except ArgumentError:
            raise UnsupportedDatabase(
                f"DATABASE_URL is not a database URL ({_safe_text(text)!r}): {_SUPPORTED}"
            ) from None
    else:
        parsed = url
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "sqlite":
        return parsed if driver == "aiosqlite" else parsed.set(drivername="sqlite+aiosqlite")
    if backend == "postgresql":
        return parsed if driver == "asyncpg" else parsed.set(drivername="postgresql+asyncpg")
    if backend in ("mysql", "mariadb"):
        raise UnsupportedDatabase(
            f"DATABASE_URL names a {backend} database, which coterie does not support: {_SUPPORTED}"
        )
    raise UnsupportedDatabase(
        f"DATABASE_URL names a {backend!r} database, which coterie does not support: {_SUPPORTED}"
    )


def _safe_text(url: str) -> str:
    """A URL-ish string with any password hidden (``user:***@host``)."""
    return re.sub(r"(//[^/:@]*:)[^@/]*@", r"\1***@", url)


def _describe(url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return f"SQLite database {url.database or ':memory:'!s}"
    return f"database {url.render_as_string(hide_password=True)}"


_EXHAUSTED = re.compile(
    r"too many clients|too many connections|remaining connection slots are reserved"
    r"|connection slots are reserved"
)


def _translate(exc: BaseException, url: URL) -> DatabaseError | None:
    """Map a driver error to one of ours, or None when it is not an operator problem."""
    text = str(getattr(exc, "orig", None) or exc).lower()
    where = _describe(url)
    if isinstance(exc, PoolTimeout):
        return DatabaseExhausted(
            f"no connection to {where} was free in time: every pooled connection is in use "
            f"({exc}); raise COTERIE_DB_POOL_SIZE / COTERIE_DB_MAX_OVERFLOW if this recurs"
        )
    if _EXHAUSTED.search(text):
        return DatabaseExhausted(
            f"{where} refused a connection: its connection slots are used up ({text.strip()}). "
            "Raise the server's max_connections, or lower COTERIE_DB_POOL_SIZE and "
            "COTERIE_DB_MAX_OVERFLOW (this process opens at most their sum)"
        )
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
    if url.get_backend_name() != "sqlite":
        pg = _translate_postgres(text, url)
        if pg is not None:
            return pg
    if url.get_backend_name() != "sqlite" and isinstance(
        exc, (OperationalError, SAInterfaceError, OSError, ConnectionError)
    ):
        return DatabaseUnavailable(f"cannot connect to {where}: {exc}")
    return None


def _translate_postgres(text: str, url: URL) -> DatabaseError | None:
    """The PostgreSQL server's refusals an operator fixes, each with the fix."""
    host = f"{url.host or 'localhost'}:{url.port or 5432}"
    user = url.username or "postgres"
    if m := re.search(r'database "([^"]+)" does not exist', text):
        return DatabaseUnavailable(
            f'PostgreSQL database "{m[1]}" does not exist on {host}: create it '
            f"(createdb -h {url.host or 'localhost'} -U {user} {m[1]}) or fix DATABASE_URL"
        )
    if m := re.search(r'role "([^"]+)" does not exist', text):
        return DatabaseUnavailable(
            f'PostgreSQL role "{m[1]}" does not exist on {host}: create it '
            f"(createuser -h {url.host or 'localhost'} {m[1]}) or fix the user in DATABASE_URL"
        )
    if "password authentication failed" in text or "no password supplied" in text:
        return DatabaseUnavailable(
            f"PostgreSQL on {host} refused the password for user {user}: fix DATABASE_URL"
        )
    if "no pg_hba.conf entry" in text:
        return DatabaseUnavailable(
            f"PostgreSQL on {host} does not let user {user} connect from here (pg_hba.conf)"
        )
    return None


def _driver_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (DBAPIError, PoolTimeout, sqlite3.Error, OSError)
    # Why asyncpg's own: the instance lock connects with asyncpg directly (no pool), and
    # its refusals ("database ... does not exist") are not wrapped by SQLAlchemy there.
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is not None:
        errors += (asyncpg.PostgresError, asyncpg.InterfaceError)
    return errors


@contextlib.contextmanager
def translate_errors(url: URL) -> Iterator[None]:
    """Turn a locked, read-only or unreachable database into one clear error."""
    try:
        yield
    except DatabaseError:
        raise
    except Exception as exc:
        if not isinstance(exc, _driver_errors()):
            raise
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


#: Who may read what coterie creates: its owner only. The database holds members'
#: messages, notes and spend; a host's other users have no business reading them.
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600


def make_private_dir(directory: Path) -> None:
    """Create ``directory`` and any missing parents, each readable by the owner only
    (``mkdir -p -m 0700``: Python's ``mkdir(parents=True)`` gives parents the umask's mode).
    An existing directory keeps its mode: the operator chose it."""
    missing: list[Path] = []
    current = directory
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            path.mkdir(mode=DIR_MODE)
    if not directory.is_dir():
        raise FileExistsError(errno.EEXIST, "a file is in the way", str(directory))


def create_private_file(path: Path) -> bool:
    """Create ``path`` empty, readable by the owner only, unless it exists; True if created.
    Why before SQLite opens it: SQLite creates a database 0644, and gives its -wal and
    -shm files the database file's mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _prepare_sqlite_path(url: URL, *, create: bool = True) -> None:
    path = _sqlite_path(url)
    if path is None:
        return
    absolute = path.expanduser().absolute()
    parent = absolute.parent
    if not create:
        if not absolute.is_file():
            raise DatabaseUnavailable(
                f"there is no SQLite database at {absolute}: check DATABASE_URL "
                "(coterie run or coterie db upgrade creates it)"
            )
        return
    try:
        make_private_dir(parent)
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
    try:
        create_private_file(absolute)
    except OSError as exc:
        raise DatabaseUnavailable(f"cannot create SQLite database {path}: {exc.strerror}") from exc


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
        parsed = async_url(url)
        kwargs: dict[str, Any] = {"echo": echo}
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            _prepare_sqlite_path(parsed, create=create)
        elif backend == "postgresql":
            kwargs["pool_pre_ping"] = True
        if backend in POOL_DEFAULTS and (backend != "sqlite" or _sqlite_path(parsed) is not None):
            default_size, default_overflow = POOL_DEFAULTS[backend]
            kwargs["pool_size"] = default_size if pool_size is None else pool_size
            kwargs["max_overflow"] = default_overflow if max_overflow is None else max_overflow
            kwargs["pool_timeout"] = pool_timeout_s
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
        from sqlalchemy import text

        await self.check()
        if revision == "head":
            # Why look first, and without Alembic: importing it and loading the scripts
            # costs a quarter of a second on every start of run, ask and chat.
            head = _plain_head()
            if head is not None and await self._stored_revision() == head:
                return SchemaVersion(current=head, head=head)
        async with self._translated(), self.engine.connect() as conn:
            conn = await conn.execution_options(**IMMEDIATE)
            if not self.is_sqlite:
                # Why: several processes may start at once on one PostgreSQL; the first
                # migrates, the others wait here and then find the schema current
                # (Alembic reads the revision after the lock). Released at commit.
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:a, :b)"),
                    {"a": MIGRATION_LOCK_KEY[0], "b": MIGRATION_LOCK_KEY[1]},
                )
            await conn.run_sync(_upgrade, revision)
            await conn.commit()
        return await self.current()

    async def _stored_revision(self) -> str | None:
        """The revision in ``alembic_version``, read with plain SQL (None: none yet)."""
        from sqlalchemy import inspect, text

        async with self._translated(), self.engine.connect() as conn:
            if not await conn.run_sync(lambda c: inspect(c).has_table("alembic_version")):
                return None
            rows = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        return str(rows[0][0]) if len(rows) == 1 else None

    async def server_version(self) -> str:
        """Connect once and say what answered ("SQLite 3.40.1", "PostgreSQL 15.4")."""
        from sqlalchemy import text

        async with self._translated(), self.engine.connect() as conn:
            if self.is_sqlite:
                return "SQLite " + str(
                    (await conn.execute(text("SELECT sqlite_version()"))).scalar_one()
                )
            return "PostgreSQL " + str(
                (await conn.execute(text("SHOW server_version"))).scalar_one()
            )

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


def _head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


_REVISION = re.compile(r"^revision(?:\s*:[^=\n]+)?\s*=\s*[\"']([^\"']+)[\"']", re.MULTILINE)
_DOWN_REVISION = re.compile(
    r"^down_revision(?:\s*:[^=\n]+)?\s*=\s*(None|[\"']([^\"']+)[\"'])\s*$", re.MULTILINE
)


def _plain_head() -> str | None:
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
