"""A SQLite connection in a thread of its own, where a whole transaction is one call
(and one on the caller's thread for small transactions that need not wait).

Through the async engine every statement of a transaction is a hop to aiosqlite's
thread and back (``BEGIN``, each insert, ``COMMIT``) with greenlet switches and an
execution context around each: about 1.5 ms of CPU for a two-insert transaction on
the 2-core VM, where SQLite's own work is a tenth of that. :class:`SqliteWriter`
hands the transaction to its thread as one function, and there runs each statement
as one DBAPI ``executemany``:

* the SQL is the engine dialect's compilation of the statement (cached per statement
  and set of keys), and each value goes through the dialect's bind processor for its
  column (dates, JSON, booleans): the rows stored are the ones the engine would store;
* a column a row leaves out gets its Python-side default (a constant, or a function
  of no arguments) as SQLAlchemy would give it;
* the connection has the engine's pragmas, and ``BEGIN IMMEDIATE`` takes SQLite's
  write lock as the engine's writers do.

A job may also read (:meth:`WriteTx.rows`, the dialect's result processors applied)
and run one statement (:meth:`WriteTx.run`): the budget ledger's reservation (read the
member's sums, check, insert) is one job, one hop to this thread and back.

A small transaction may instead run at once on the caller's thread
(:meth:`SqliteWriter.run_here`, the audit sink's): a round trip to the thread costs two
thread wake-ups and the GIL handed over for every statement, more than SQLite takes
to commit a few rows in WAL mode (measured on the 2-core VM: ~0.1-0.25 ms a round trip
for an empty job, ~0.02 ms for an empty ``BEGIN IMMEDIATE``/``COMMIT`` in place). That
connection never waits in the busy handler (a lock held elsewhere sends the job to the
thread, where waiting blocks nobody) and never checkpoints: the thread runs a passive
checkpoint for the pages it wrote, so the fsyncs stay off the caller's thread.

For a SQLite *file* only (an in-memory database is private to one connection); one
writer per engine (:func:`writer_for`), shared by the stores that write through it
and closed with the database (:func:`close_writer`). Callers queue on the process's
write lock first (the one :func:`adapters.storage.db.write_transaction` takes), so
that this connection never waits in SQLite's busy handler behind the engine's writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import queue
import sqlite3
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.engine.url import URL
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import ClauseElement, Executable

from adapters.storage.db.engine import busy_timeout_of, sqlite_path, sqlite_pragmas
from adapters.storage.db.errors import translate_errors

__all__ = ["SqliteWriter", "WriteJob", "WriteTx", "close_writer", "writer_for"]

T = TypeVar("T")
log = logging.getLogger(__name__)
# The passive checkpoint after about this many pages written by run_here: SQLite's own
# wal_autocheckpoint default, which the writer's thread's connection keeps.
_CHECKPOINT_PAGES = 1000
_CHECKPOINT = object()  # a job for the writer's thread: checkpoint
Row = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class _Prepared:
    sql: str
    # Per placeholder, in order: the row's key, its bind processor, and (for a column
    # the row may leave out) how to make its default.
    params: tuple[tuple[str, Callable[[Any], Any] | None, Callable[[], Any] | None], ...]
    # Per result column, its result processor (dates come back as text from sqlite3).
    results: tuple[Callable[[Any], Any] | None, ...] = ()
    # When the row has every placeholder's key (the usual case): the values in order in
    # one call, then the bind processors by position.
    getter: Callable[[Row], Any] | None = None
    processed: tuple[tuple[int, Callable[[Any], Any]], ...] = ()

    def row(self, raw: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(
            value if process is None or value is None else process(value)
            for process, value in zip(self.results, raw, strict=False)
        )

    def values(self, row: Row) -> Sequence[Any]:
        if self.getter is not None:
            got = self.getter(row)
            if not self.processed:
                return cast(tuple[Any, ...], got)
            fast = list(got)
            for i, bind in self.processed:
                # Why None too: SQLAlchemy processes it as well (JSON stores None as 'null').
                fast[i] = bind(fast[i])
            return fast
        out = []
        for key, process, default in self.params:
            if key in row:
                value = row[key]
            elif default is not None:
                value = default()
            else:
                raise KeyError(f"no value for {key!r} in a row for: {self.sql[:60]}")
            # Why None too: SQLAlchemy processes it as well (JSON stores None as 'null').
            out.append(process(value) if process is not None else value)
        return tuple(out)


class WriteTx:
    """The statements of one transaction, given to the function :meth:`SqliteWriter.submit`
    runs (in the writer's thread)."""

    def __init__(self, writer: SqliteWriter, conn: sqlite3.Connection) -> None:
        self._writer = writer
        self._conn = conn
        # About how many pages the transaction wrote: a table's page and an index's
        # for each statement, and a page more every few rows (measured on the audit
        # tables: 4-8 pages a commit).
        self.pages = 0

    def execute(self, statement: ClauseElement, rows: Sequence[Row]) -> None:
        """``statement`` (an insert or update built once and reused: prepared forms are
        cached by identity) for every row: one ``executemany`` per set of keys."""
        by_keys: dict[tuple[str, ...], list[Row]] = {}
        for row in rows:
            by_keys.setdefault(tuple(row), []).append(row)
        for keys, group in by_keys.items():
            prepared = self._writer._prepare(statement, keys)
            self._conn.executemany(prepared.sql, [prepared.values(r) for r in group])
            self.pages += 3 + len(group) // 4

    def rows(self, statement: Executable, params: Row) -> list[tuple[Any, ...]]:
        """The rows ``statement`` (a select, or a write with RETURNING) gives for
        ``params`` (its bind parameters by name), as the engine would return them."""
        prepared = self._writer._prepare(cast(ClauseElement, statement), tuple(params))
        cursor = self._conn.execute(prepared.sql, prepared.values(params))
        return [prepared.row(r) for r in cursor.fetchall()]

    def run(self, statement: Executable, params: Row) -> int:
        """Run one write for ``params``; the rows it touched."""
        prepared = self._writer._prepare(cast(ClauseElement, statement), tuple(params))
        self.pages += 3
        return self._conn.execute(prepared.sql, prepared.values(params)).rowcount


class WriteJob:
    """One submitted transaction. ``future`` is its outcome for the awaiting caller;
    the transaction runs to its end whatever happens to that caller, and
    :meth:`settled` waits for the end through cancellations."""

    __slots__ = ("_watchers", "fn", "future", "loop", "outcome")

    def __init__(self, fn: Callable[[WriteTx], Any], loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.outcome: tuple[bool, Any] | None = None  # (committed, result or exception)
        self._watchers: list[asyncio.Future[None]] = []

    def _resolve(self, ok: bool, value: Any) -> None:  # on the loop
        self.outcome = (ok, value)
        if not self.future.done():
            if ok:
                self.future.set_result(value)
            else:
                self.future.set_exception(value)
        for watcher in self._watchers:
            if not watcher.done():
                watcher.set_result(None)

    async def settled(self) -> tuple[bool, Any]:
        """Wait for the transaction's end, even if cancelled meanwhile (the caller
        re-raises the cancellation once it knows what was written)."""
        while self.outcome is None:
            watcher: asyncio.Future[None] = self.loop.create_future()
            self._watchers.append(watcher)
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        return self.outcome


class SqliteWriter:
    """Runs ``fn(tx)`` in one transaction in the writer's thread (:meth:`submit`)."""

    def __init__(self, path: Path, *, dialect: Dialect, url: URL, busy_timeout_ms: int) -> None:
        self.path = path
        self._dialect = dialect
        self._url = url  # for error messages
        self._busy_timeout_ms = busy_timeout_ms
        # Why a thread and a queue of our own rather than an executor: a commit is
        # 0.1 ms of work, and an executor's futures and callbacks cost about as much.
        self._jobs: queue.SimpleQueue[WriteJob | object | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Opened in the writer's thread and used only there (sqlite3's rule).
        self._conn: sqlite3.Connection | None = None
        self._prepared: dict[tuple[int, tuple[str, ...]], tuple[ClauseElement, _Prepared]] = {}
        self._closed = False
        # The connection of :meth:`run_here`, on the caller's thread; one caller at a time.
        self._here: sqlite3.Connection | None = None
        self._here_lock = threading.Lock()
        self._unchecked = 0  # pages (roughly) committed here since the last checkpoint

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, fn: Callable[[WriteTx], Any]) -> WriteJob:
        """Queue ``fn`` for a transaction in the writer's thread: committed when it
        returns, rolled back when it raises. Await ``job.future`` for the outcome."""
        if self._closed:
            raise RuntimeError("the SQLite writer is closed")
        job = WriteJob(fn, asyncio.get_running_loop())
        self._put(job)
        return job

    def run_here(self, fn: Callable[[WriteTx], T]) -> tuple[bool, T | None]:
        """Run ``fn`` in one transaction now, on the calling thread, if SQLite's write
        lock is free at once: ``(True, its result)``; ``(False, None)`` when it is not
        (another process writes, a submitted job is still running) or another thread is
        in here: nothing was written, :meth:`submit` it instead. Raises, rolled back,
        what ``fn`` raised.

        For small transactions only: the caller's thread (the event loop) is busy
        for as long as it takes. This connection never waits in SQLite's busy handler
        and never checkpoints; after about ``_CHECKPOINT_PAGES`` pages written here, the
        writer's thread runs a passive checkpoint.
        """
        if self._closed or not self._here_lock.acquire(blocking=False):
            return False, None
        try:
            with translate_errors(self._url):
                conn = self._here_connection()
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    if _busy(exc):
                        return False, None
                    raise
                tx = WriteTx(self, conn)
                try:
                    result = fn(tx)
                    conn.execute("COMMIT")
                except BaseException as exc:
                    _rollback(conn, self._drop_here)
                    if isinstance(exc, sqlite3.OperationalError) and _busy(exc):
                        return False, None
                    raise
        finally:
            self._here_lock.release()
        self._unchecked += tx.pages
        if self._unchecked >= _CHECKPOINT_PAGES:
            self._unchecked = 0
            self._put(_CHECKPOINT)
        return True, result

    async def close(self) -> None:
        """Close the connections and end the thread once the queued jobs are done.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._here_lock:
            self._drop_here()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._jobs.put(None)
        await asyncio.to_thread(thread.join)

    def _put(self, job: WriteJob | object) -> None:
        if self._thread is None:
            # Why a daemon: an app that never closes the writer must still exit; a
            # transaction cut short by the exit is rolled back by SQLite.
            self._thread = threading.Thread(
                target=self._serve, name="coterie-sqlite-writer", daemon=True
            )
            self._thread.start()
        self._jobs.put(job)

    def _here_connection(self) -> sqlite3.Connection:
        if self._here is None:
            # Why check_same_thread off: the event loop's thread may change between
            # loops (tests); _here_lock keeps one thread at a time in here.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                for pragma in [*sqlite_pragmas(0), "PRAGMA wal_autocheckpoint = 0"]:
                    conn.execute(pragma)
            except BaseException:
                conn.close()
                raise
            self._here = conn
        return self._here

    def _drop_here(self) -> None:
        conn, self._here = self._here, None
        if conn is not None:
            conn.close()

    # --- in the writer's thread -------------------------------------------------------

    def _serve(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                if not isinstance(job, WriteJob):  # _CHECKPOINT
                    self._checkpoint()
                    continue
                try:
                    outcome: tuple[bool, Any] = (True, self._run(job.fn))
                except BaseException as exc:
                    outcome = (False, exc)
                # A closed loop (RuntimeError) has nobody waiting any more.
                with contextlib.suppress(RuntimeError):
                    job.loop.call_soon_threadsafe(job._resolve, *outcome)
        finally:
            self._drop()

    def _run(self, fn: Callable[[WriteTx], T]) -> T:
        with translate_errors(self._url):
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(WriteTx(self, conn))
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn, self._drop)
                raise
            return result

    def _checkpoint(self) -> None:
        """A passive checkpoint for what :meth:`run_here` wrote (it does not wait for
        readers or writers; what it cannot copy now, a later one will)."""
        try:
            self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            log.warning("passive checkpoint of %s failed; will retry", self.path, exc_info=True)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # The same settings as the async engine's connections.
            conn = sqlite3.connect(self.path, isolation_level=None)
            try:
                for pragma in sqlite_pragmas(self._busy_timeout_ms):
                    conn.execute(pragma)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _prepare(self, statement: ClauseElement, keys: tuple[str, ...]) -> _Prepared:
        cache_key = (id(statement), keys)
        hit = self._prepared.get(cache_key)
        if hit is not None and hit[0] is statement:
            return hit[1]
        dialect = self._dialect
        compiled: Any = statement.compile(dialect=dialect, column_keys=list(keys))
        defaults: dict[str, Callable[[], Any]] = {}
        for column in [*compiled.insert_prefetch, *compiled.update_prefetch]:
            defaults[column.key] = _default_maker(column)
        params = []
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            make = defaults.get(name)
            if make is None and name not in keys and not bind.required:
                # A value written into the statement (a literal, ``coalesce(x, 0)``'s 0).
                make = _constant(bind.effective_value)
            params.append((name, process, make))
        results = tuple(
            entry[3].dialect_impl(dialect).result_processor(dialect, None)
            for entry in getattr(compiled, "_result_columns", ())
        )
        names = [name for name, _, _ in params]
        getter = None
        if set(names) <= set(keys):
            if len(names) == 1:
                only = names[0]
                getter = lambda row: (row[only],)  # noqa: E731  (itemgetter of one: no tuple)
            elif names:
                getter = operator.itemgetter(*names)
        prepared = _Prepared(
            sql=str(compiled),
            params=tuple(params),
            results=results,
            getter=getter,
            processed=tuple((i, p) for i, (_, p, _) in enumerate(params) if p is not None),
        )
        self._prepared[cache_key] = (statement, prepared)
        return prepared


def _busy(exc: sqlite3.OperationalError) -> bool:
    """SQLite said SQLITE_BUSY (another connection holds the write lock)."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY


def _rollback(conn: sqlite3.Connection, drop: Callable[[], None]) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        # Why drop it: a connection that cannot roll back is in an unknown state; the
        # next write opens a fresh one.
        drop()


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


def _default_maker(column: Any) -> Callable[[], Any]:
    """A column's Python-side default (insert or update) as a function of nothing."""
    default = column.default if column.default is not None else column.onupdate
    if default is None or not (default.is_scalar or default.is_callable):
        raise ValueError(f"column {column.key!r} has a default the SQLite writer cannot make")
    if default.is_scalar:
        value = default.arg
        return lambda: value
    # SQLAlchemy wraps a function of no arguments as one taking the execution context.
    make = default.arg
    return lambda: make(None)


# --- one writer per engine ----------------------------------------------------------

# Why a weak map: stores receive only a session factory; the engine is what they share.
_writers: weakref.WeakKeyDictionary[Engine, SqliteWriter] = weakref.WeakKeyDictionary()


def writer_for(engine: AsyncEngine) -> SqliteWriter | None:
    """The engine's writer (made on first use), or None when the engine is not on a
    SQLite file (PostgreSQL, an in-memory SQLite database)."""
    if engine.dialect.name != "sqlite":
        return None
    writer = _writers.get(engine.sync_engine)
    if writer is None or writer.closed:
        path = sqlite_path(engine.url)
        if path is None:
            return None
        writer = _writers[engine.sync_engine] = SqliteWriter(
            path,
            dialect=engine.dialect,
            url=engine.url,
            busy_timeout_ms=busy_timeout_of(engine),
        )
    return writer


async def close_writer(engine: AsyncEngine) -> None:
    """Close the engine's writer, if it has one (the database closes)."""
    writer = _writers.pop(engine.sync_engine, None)
    if writer is not None:
        await writer.close()
