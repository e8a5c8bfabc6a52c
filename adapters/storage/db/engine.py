"""The engine: ``DATABASE_URL`` spellings, the SQLite file and its modes, the pragmas.

On SQLite every connection runs in WAL mode with ``synchronous=NORMAL``, a busy
timeout and foreign keys on (:data:`SQLITE_PRAGMAS`), and transactions are begun by
us (``BEGIN`` or, for writes that must be atomic, ``BEGIN IMMEDIATE`` via
:data:`IMMEDIATE`), not by the ``sqlite3`` module. ``DATABASE_URL`` may be spelled
the way most people write it: ``sqlite:///path`` and ``postgresql://`` (or
``postgres://``) get the async driver (:func:`async_url`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import weakref
from pathlib import Path
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.engine.url import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from adapters.storage.db.errors import (
    DatabaseReadOnly,
    DatabaseUnavailable,
    UnsupportedDatabase,
    safe_text,
)

__all__ = [
    "DEFAULT_URL",
    "DIR_MODE",
    "FILE_MODE",
    "IMMEDIATE",
    "POOL_DEFAULTS",
    "async_url",
    "busy_timeout_of",
    "create_private_file",
    "make_private_dir",
    "open_engine",
    "sqlite_path",
    "sqlite_pragmas",
]

DEFAULT_URL: Final = "sqlite+aiosqlite:///./data/coterie.db"

#: Connections per process by backend, (pool size, overflow) when settings leave them
#: unset. Why fewer on SQLite: with one writer at a time a long wait for a pooled
#: connection is pointless; the busy timeout is where waiting for the lock belongs.
#: PostgreSQL's default ``max_connections`` is 100: one coterie takes at most 50.
POOL_DEFAULTS: Final[dict[str, tuple[int, int]]] = {"sqlite": (8, 24), "postgresql": (10, 40)}

#: Execution options for a session/connection whose transaction must take the write
#: lock at once (``BEGIN IMMEDIATE`` on SQLite; ignored elsewhere, where row locks do it).
IMMEDIATE: Final[dict[str, Any]] = {"coterie_sqlite_begin": "IMMEDIATE"}

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
                f"DATABASE_URL is not a database URL ({safe_text(text)!r}): {_SUPPORTED}"
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


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite URL; None for an in-memory database (or not SQLite)."""
    db = url.database
    if not db or db == ":memory:" or db.startswith("file:") or url.query.get("mode") == "memory":
        return None
    return Path(db)


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
    path = sqlite_path(url)
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


def sqlite_pragmas(busy_timeout_ms: int) -> list[str]:
    """What every SQLite connection of coterie's runs first (the engine's, and the audit
    sink's writer thread's)."""
    return [
        f"PRAGMA busy_timeout = {int(busy_timeout_ms)}",
        "PRAGMA foreign_keys = ON",
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = NORMAL",
    ]


# Each SQLite engine's busy timeout, for the connections made beside it (the writer).
_busy_timeouts: weakref.WeakKeyDictionary[Engine, int] = weakref.WeakKeyDictionary()


def busy_timeout_of(engine: AsyncEngine) -> int:
    """The busy timeout (ms) the engine's SQLite connections were given."""
    return _busy_timeouts.get(engine.sync_engine, 5_000)


def _install_sqlite_hooks(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    pragmas = sqlite_pragmas(busy_timeout_ms)
    _busy_timeouts[engine.sync_engine] = busy_timeout_ms

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Why: the sqlite3 module would BEGIN (deferred) behind our back; we begin ourselves
        # so that atomic writes can say BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            for pragma in pragmas:
                cursor.execute(pragma)
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("coterie_sqlite_begin", "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())


def open_engine(
    url: str | URL = DEFAULT_URL,
    *,
    busy_timeout_ms: int = 5_000,
    echo: bool = False,
    pool_size: int | None = None,
    max_overflow: int | None = None,
    pool_timeout_s: float = 30.0,
    create: bool = True,
) -> tuple[AsyncEngine, URL]:
    """The engine and its URL (no connection yet): see :meth:`Database.open`."""
    parsed = async_url(url)
    kwargs: dict[str, Any] = {"echo": echo}
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        _prepare_sqlite_path(parsed, create=create)
    elif backend == "postgresql":
        kwargs["pool_pre_ping"] = True
    if backend in POOL_DEFAULTS and (backend != "sqlite" or sqlite_path(parsed) is not None):
        default_size, default_overflow = POOL_DEFAULTS[backend]
        kwargs["pool_size"] = default_size if pool_size is None else pool_size
        kwargs["max_overflow"] = default_overflow if max_overflow is None else max_overflow
        kwargs["pool_timeout"] = pool_timeout_s
    engine = create_async_engine(parsed, **kwargs)
    if backend == "sqlite":
        _install_sqlite_hooks(engine, busy_timeout_ms)
    return engine, parsed
