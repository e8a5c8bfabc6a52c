"""The database's instance lock: one ``coterie run`` per SQLite file; on PostgreSQL,
any number of this version's, but never beside a coterie too old to share.

Two processes that do not know of each other answering from one database give a
message two answers and two charges, and the second one's crash recovery closes the
first one's live runs. So ``coterie run`` takes this lock before anything else touches
the database, holds it for the life of the process, and refuses to start when it
cannot, naming the holder:

* **SQLite**: ``fcntl.flock`` on a lock file beside the database
  (``coterie.db.lock``) that names the holder (pid, host, start time). The OS
  drops the lock when the process exits, crashed or not; the file stays (removing
  it would race a process that has just opened it).
* **PostgreSQL**: ``pg_try_advisory_lock_shared`` on a dedicated connection (not
  from the pool, so it is never recycled), whose ``application_name`` names the holder.
  Shared: every ``coterie run`` of this version holds it at once, and they share the
  work through their registrations (:mod:`adapters.storage.instances`: heartbeats,
  shard leases, runs owned). A coterie from before instances took it *exclusively*, so
  the two refuse each other: that one would settle this one's runs as its own. The
  server drops it when the connection ends. :meth:`InstanceLock.verify` checks the
  connection is still there (a server restart drops it) and takes the lock again.

Crash recovery runs only while this lock is held (:func:`holds_lock`): then every
process on the database registers its runs, and a run with no owner is an orphan.

:func:`lock_holder` reports who holds the lock without taking it or creating
anything (``coterie doctor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sqlalchemy.engine.url import URL

from adapters.storage.db import (
    FILE_MODE,
    DatabaseError,
    async_url,
    make_private_dir,
    sqlite_path,
)

__all__ = [
    "ADVISORY_KEY",
    "Holder",
    "InstanceLock",
    "InstanceLocked",
    "holds_lock",
    "lock_holder",
    "lock_path",
]

#: The advisory lock's two int4 keys: "cote" and "rie1" in ASCII.
ADVISORY_KEY: Final = (0x636F7465, 0x72696531)


class InstanceLocked(DatabaseError):
    """Another coterie holds the database."""

    def __init__(self, message: str, holder: Holder | None = None) -> None:
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds the lock, as far as the lock tells."""

    pid: int | None
    host: str | None = None
    since: str | None = None
    backend_pid: int | None = None  # PostgreSQL: the server process of its connection

    def __str__(self) -> str:
        parts = [f"pid {self.pid}" if self.pid is not None else "an unknown process"]
        if self.host:
            parts.append(f"on {self.host}")
        if self.since:
            parts.append(f"since {self.since}")
        return " ".join(parts)


def lock_path(url: str | URL) -> Path | None:
    """The lock file of a SQLite database (None: in memory, or not SQLite)."""
    parsed = async_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    path = sqlite_path(parsed)
    if path is None:
        return None
    db = path.expanduser().absolute()
    return db.with_name(db.name + ".lock")


def _identity() -> str:
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"pid={os.getpid()} host={socket.gethostname()} since={started}"


def _parse_identity(text: str) -> Holder | None:
    fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
    pid = fields.get("pid")
    if pid is None or not pid.isdigit():
        return None
    return Holder(pid=int(pid), host=fields.get("host"), since=fields.get("since"))


def _refusal(what: str, holder: Holder | None) -> InstanceLocked:
    who = f"another coterie ({holder})" if holder else "another coterie"
    return InstanceLocked(
        f"{who} is running on {what}: only one `coterie run` may use a database; "
        "stop that one first (coterie ask, chat, audit and db commands may run beside it)",
        holder,
    )


def _pg_refusal(what: str, holder: Holder | None) -> InstanceLocked:
    who = f"an older coterie ({holder})" if holder else "an older coterie"
    return InstanceLocked(
        f"{who} holds {what} alone: stop it before starting this version (several "
        "`coterie run` of this version share a PostgreSQL database; that one cannot)",
        holder,
    )


# Why a process-wide map: recovery must know the lock is held by *this* process, and
# stores receive only a session factory. Keyed by the database's identity.
_held: weakref.WeakValueDictionary[str, InstanceLock] = weakref.WeakValueDictionary()


def _key(url: URL) -> str:
    path = lock_path(url)
    if path is not None:
        return f"sqlite:{path}"
    return f"pg:{url.host}:{url.port}:{url.database}"


def holds_lock(url: str | URL) -> bool:
    """Whether this process holds the instance lock of ``url``'s database."""
    parsed = async_url(url)
    if parsed.get_backend_name() == "sqlite" and lock_path(parsed) is None:
        return True  # in memory: nobody else can see it
    lock = _held.get(_key(parsed))
    return lock is not None and lock.held


class InstanceLock:
    """The lock, held from :meth:`acquire` until :meth:`release` (or the process ends)."""

    def __init__(self, url: URL) -> None:
        self.url = url
        self._fd: int | None = None
        self._conn: Any = None  # asyncpg.Connection
        self.held = False

    @classmethod
    async def acquire(cls, url: str | URL) -> InstanceLock:
        """Take the lock or raise :class:`InstanceLocked` naming the holder."""
        lock = cls(async_url(url))
        if lock.url.get_backend_name() == "sqlite":
            path = lock_path(lock.url)
            if path is not None:
                await asyncio.to_thread(lock._flock, path)
        else:
            await lock._advisory()
        lock.held = True
        current = _held.get(_key(lock.url))
        if current is None or not current.held:
            _held[_key(lock.url)] = lock
        return lock

    # --- SQLite ------------------------------------------------------------------

    def _flock(self, path: Path) -> None:
        import fcntl

        try:
            make_private_dir(path.parent)  # the data directory, when `coterie run` comes first
            fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            raise DatabaseError(
                f"cannot create the lock file {path}: {exc.strerror or exc}; give this user "
                "write access to the database's directory"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _parse_identity(_read(fd))
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _refusal(f"SQLite database {path.with_suffix('')}", holder) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, (_identity() + "\n").encode(), 0)
        with contextlib.suppress(OSError):
            os.fsync(fd)
        self._fd = fd

    # --- PostgreSQL ----------------------------------------------------------------

    def _dsn(self) -> str:
        return self.url.set(drivername="postgresql").render_as_string(hide_password=False)

    async def _connect(self, *, application_name: str) -> Any:
        import asyncpg

        from adapters.storage.db import translate_errors

        with translate_errors(self.url):
            return await asyncpg.connect(
                self._dsn(), timeout=10, server_settings={"application_name": application_name}
            )

    async def _advisory(self) -> None:
        conn = await self._connect(application_name=f"coterie {_identity()}"[:63])
        try:
            got = await conn.fetchval("SELECT pg_try_advisory_lock_shared($1, $2)", *ADVISORY_KEY)
            if not got:
                holder = await _pg_holder(conn, exclusive=True)
                raise _pg_refusal(
                    f"database {self.url.render_as_string(hide_password=True)}", holder
                )
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    async def verify(self) -> bool:
        """PostgreSQL: whether the lock's connection is alive; if it dropped (a server
        restart), take the lock again. Raises :class:`InstanceLocked` when another
        process took it meanwhile. SQLite: always True (the OS holds it)."""
        if self._conn is None:
            return self.held
        try:
            await self._conn.fetchval("SELECT 1")
            return True
        except Exception:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
        self.held = False
        await self._advisory()
        self.held = True
        return False

    async def release(self) -> None:
        self.held = False
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing drops the flock
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.execute("SELECT pg_advisory_unlock_shared($1, $2)", *ADVISORY_KEY)
            with contextlib.suppress(Exception):
                await conn.close()

    async def __aenter__(self) -> InstanceLock:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 512, 0).decode("utf-8", "replace")
    except OSError:
        return ""


async def _pg_holder(conn: Any, *, exclusive: bool = False) -> Holder | None:
    """A process holding the lock (``exclusive``: only one that holds it alone)."""
    row = await conn.fetchrow(
        """
        SELECT a.pid, a.application_name, a.client_addr::text AS addr
        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1 AND l.objid = $2
          AND l.objsubid = 2 AND l.database = (
            SELECT oid FROM pg_database WHERE datname = current_database())
          AND ($3 = false OR l.mode = 'ExclusiveLock')
        ORDER BY a.backend_start
        LIMIT 1
        """,
        *ADVISORY_KEY,
        exclusive,
    )
    if row is None:
        return None
    parsed = _parse_identity(row["application_name"] or "")
    if parsed is None:
        return Holder(pid=None, host=row["addr"], backend_pid=row["pid"])
    return Holder(
        pid=parsed.pid, host=parsed.host or row["addr"], since=parsed.since, backend_pid=row["pid"]
    )


async def lock_holder(url: str | URL) -> Holder | None:
    """Who holds the lock of ``url``'s database, or None. Takes nothing for longer than
    a probe and creates nothing (``coterie doctor``)."""
    parsed = async_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = lock_path(parsed)
        if path is None or not path.exists():
            return None
        return await asyncio.to_thread(_probe_file, path)
    probe = InstanceLock(parsed)
    conn = await probe._connect(application_name="coterie doctor")
    try:
        held = await _pg_holder(conn)
        if held is not None:
            return held
        # Why also try: pg_locks needs no privilege, but be sure nobody holds it.
        if await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *ADVISORY_KEY):
            await conn.execute("SELECT pg_advisory_unlock($1, $2)", *ADVISORY_KEY)
            return None
        return Holder(pid=None)
    finally:
        await conn.close()


def _probe_file(path: Path) -> Holder | None:
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _parse_identity(_read(fd)) or Holder(pid=None)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
