"""The database's errors: what an operator can fix, as one clear message each.

::

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

:func:`translate_errors` turns a driver's error into one of these at the boundary.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import sys
from collections.abc import Iterator

from sqlalchemy.engine.url import URL
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import InterfaceError as SAInterfaceError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from executor.errors import ConfigError, HostBusy

__all__ = [
    "BackupUnsupported",
    "DatabaseBusy",
    "DatabaseError",
    "DatabaseExhausted",
    "DatabaseLocked",
    "DatabaseReadOnly",
    "DatabaseUnavailable",
    "SchemaTooNew",
    "UnsupportedDatabase",
    "describe",
    "safe_text",
    "translate_errors",
]


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


def safe_text(url: str) -> str:
    """A URL-ish string with any password hidden (``user:***@host``)."""
    return re.sub(r"(//[^/:@]*:)[^@/]*@", r"\1***@", url)


def describe(url: URL) -> str:
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
    where = describe(url)
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
