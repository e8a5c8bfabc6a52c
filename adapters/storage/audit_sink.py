"""The durable audit trail: ``executor.ports.AuditSink`` in SQL.

Writing must not slow a run. ``RunStarted`` is one small transaction (a run is a row
from the moment it starts); everything between it and ``RunFinished`` (steps, model
attempts, tool calls, compaction, critic verdicts, approvals) is buffered and written
in batches with Core ``executemany``; ``RunFinished`` writes the buffer and closes the
run row in one transaction, so a crash never leaves a finished run half-written.

What a crash may lose is bounded, because crash recovery charges what is written:

* spend is written at once: an attempt that answered or was stopped in flight (its
  usage and cost are on its row), a compaction or a critic's judgement with a cost,
  and a model request that would be charged were it never answered (its input's cost
  is in its row's data), with every row buffered before it, are committed before
  ``record`` returns; so is a failed attempt (it ends its request: crash recovery
  then knows the request was answered, if by an error);
* before a model request (``ModelRequestEvent``) that follows tool calls, the buffer is
  committed, so the tool calls a run ran are durable before it asks for more;
* anything else is durable within ``flush_interval_s``: a timer task (started on the
  first event, on the running loop; stopped by :meth:`SqlAuditSink.close`) writes the
  buffer when it is not empty, so a long stream or a long tool call still flushes.

The buffer is also written when it holds ``batch_size`` rows, on
:meth:`SqlAuditSink.flush` and on :meth:`SqlAuditSink.close`. Every write is a group
commit: runs that record while a write is under way, or in the turn of the loop a
write waits first when other runs are open, share the next transaction, one Core
``executemany`` per table (a lone run's write does not wait that turn). On a SQLite
file the transaction is one call to the database's writer
(:class:`adapters.storage.sqlite_writer.SqliteWriter`), not a hop to aiosqlite's thread
per statement: a write of at most ``inline_rows`` rows commits at once on the loop's
thread when SQLite's write lock is free (:meth:`~adapters.storage.sqlite_writer.SqliteWriter.run_here`:
a few rows in WAL mode commit in less time than a round trip to a thread takes);
a bigger one, or one that would wait for the lock (another process writing), runs in
the writer's thread. A ``record`` cancelled while its write is in that thread waits
for the write's end, so its rows are never both committed and kept for the next try.

The rows each event becomes (tool arguments with secrets redacted, texts as
excerpts) are built in :mod:`adapters.storage.audit_rows`; the queries on the trail
are in :mod:`adapters.storage.audit_queries`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters.storage.audit_rows import (
    CHILDREN,
    DELIVERED,
    FINISH,
    INSERT,
    RUNS,
    TOOLS,
    child_row,
    delivered_row,
    finish_row,
    placeholder_row,
    spends,
    start_row,
)
from adapters.storage.db import engine_of, sqlite_path, write_lock, write_transaction
from adapters.storage.sqlite_writer import SqliteWriter, WriteJob, WriteTx, writer_for
from executor.events import (
    ModelRequestEvent,
    RunDelivered,
    RunEvent,
    RunFinished,
    RunStarted,
    TextDeltaEvent,
    ToolCallStarted,
)

__all__ = ["SqlAuditSink"]

log = logging.getLogger(__name__)

# --- the sink ----------------------------------------------------------------------


class SqlAuditSink:
    """``executor.ports.AuditSink`` writing to the audit tables."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        batch_size: int = 2_000,
        flush_interval_s: float = 1.0,
        excerpt_chars: int = 2_000,
        argument_chars: int = 4_000,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        inline_rows: int = 64,
    ) -> None:
        self._sessions = sessions
        engine = engine_of(sessions)
        self._url: URL = engine.url
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.excerpt_chars = excerpt_chars
        self.argument_chars = argument_chars
        # A SQLite write of at most this many rows commits on the loop's thread when it
        # can at once (0: always in the writer's thread). Why 64: about a millisecond.
        self.inline_rows = inline_rows
        self._buffer: dict[Any, list[dict[str, Any]]] = {t: [] for t in CHILDREN}
        self._pending = 0
        self._oldest: float | None = None
        # Runs this sink has a row for; a small memory of finished ones for late events.
        self._known: OrderedDict[str, None] = OrderedDict()
        # Runs started and not yet finished: whether a write may wait for others' rows.
        self._open: set[str] = set()
        # Held by each write of the sink's (and a placeholder's): one at a time.
        self._write_lock = asyncio.Lock()
        self._closed = False
        self._engine = engine
        self._starts: list[dict[str, Any]] = []
        self._finishes: list[dict[str, Any]] = []
        self._deliveries: list[dict[str, Any]] = []
        self._generation = 0  # the batch now filling
        self._durable = -1  # every batch up to this one is committed
        # The group commit: callers wait for their batch; one task at a time writes.
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._flushing = False  # a caller or the task below is writing
        self._woke = 0  # callers the last write settled besides its writer
        self._flusher: asyncio.Task[None] | None = None
        self._writing: WriteJob | None = None  # the thread's transaction under way
        # The flush timer: started on the first event, stopped by close().
        self._sleep = sleep or asyncio.sleep
        self._timer: asyncio.Task[None] | None = None
        # SQLite file: the database's writer (None: through the engine).
        self._sqlite_file = sqlite_path(self._url) if engine.dialect.name == "sqlite" else None
        self._writer: SqliteWriter | None = None
        # The process's write lock (SQLite) or nothing (PostgreSQL): one per engine.
        self._engine_lock = write_lock(engine)
        # The instance running the runs this sink starts (``audit_runs.owner``): crash
        # recovery closes a run only once its owner is gone. None: no instance.
        self.owner: str | None = None

    # --- AuditSink ------------------------------------------------------------------

    async def record(self, event: RunEvent) -> None:
        if isinstance(event, RunStarted):
            await self._start(event)
            return
        if isinstance(event, RunFinished):
            await self._finish(event)
            return
        if isinstance(event, RunDelivered):
            await self._delivered(event)
            return
        if isinstance(event, TextDeltaEvent | ToolCallStarted):
            # Deltas are noise; a started call is recorded whole when it finishes.
            return
        if event.run_id not in self._known:
            await self._placeholder(event.run_id, event.at)
        table, row = child_row(
            event, excerpt_chars=self.excerpt_chars, argument_chars=self.argument_chars
        )
        self._buffer[table].append(row)
        self._pending += 1
        now = time.monotonic()
        if self._oldest is None:
            self._oldest = now
        self._arm()
        if (
            spends(event)
            or (
                isinstance(event, ModelRequestEvent)
                # Before a model request: the tool calls that ran are durable first.
                and bool(self._buffer[TOOLS])
            )
            or self._pending >= self.batch_size
            or now - self._oldest >= self.flush_interval_s
        ):
            await self._commit()

    async def flush(self) -> None:
        """Write every buffered row now."""
        await self._commit()

    async def close(self) -> None:
        """Stop the flush timer and write what is buffered. The sink may not be used
        afterwards."""
        timer, self._timer = self._timer, None
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        try:
            await self.flush()
        finally:
            self._closed = True

    # --- the flush timer ------------------------------------------------------------

    def _arm(self) -> None:
        """Start the timer on the running loop, once (again if a loop ended it)."""
        if self._closed or (self._timer is not None and not self._timer.done()):
            return
        self._timer = asyncio.get_running_loop().create_task(
            self._tick(), name="coterie-audit-flush"
        )

    async def _tick(self) -> None:
        while not self._closed:
            await self._sleep(self.flush_interval_s)
            if not (self._pending or self._starts or self._finishes or self._deliveries):
                continue
            try:
                await self._commit()
            except Exception:
                # Why not raise: nobody awaits this task; the rows are kept for the next
                # write (the next tick, an event, or close), which reports its own error.
                log.warning("the audit sink could not write its buffer; will retry", exc_info=True)

    # --- internals ----------------------------------------------------------------

    def _take(self) -> dict[Any, list[dict[str, Any]]]:
        # In CHILDREN's order: children only reference runs, which come first.
        batch = {t: rows for t, rows in self._buffer.items() if rows}
        self._buffer = {t: [] for t in CHILDREN}
        self._pending = 0
        self._oldest = None
        return batch

    async def _commit(self, *, gather: bool = False) -> None:
        """Make everything recorded so far durable: a group commit.

        One caller at a time writes everything recorded, in one transaction; callers
        arriving meanwhile wait for the next one, written by a task for all of them.
        So N concurrent runs cost about one transaction, not N (SQLite has one writer;
        PostgreSQL saves round trips). A caller cancelled while it waits leaves its
        rows to that write; one cancelled while it writes sees the write end first.
        """
        mine = self._generation
        if self._durable >= mine:
            return
        if self._flushing:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append((mine, done))
            await done
            return
        self._flushing = True
        try:
            if gather or self._woke or len(self._open) > 1:
                # Why one turn of the loop first: runs woken together (by the previous
                # write) or started together record their rows before this transaction
                # takes them. A lone run skips it: nobody else would.
                await asyncio.sleep(0)
            await self._write_batch()
        finally:
            if any(not f.done() for _, f in self._waiters):
                self._flusher = asyncio.get_running_loop().create_task(
                    self._serve_waiters(), name="coterie-audit-write"
                )
            else:
                self._flushing = False

    async def _serve_waiters(self) -> None:
        """Write for the callers that wait, until none does (their errors are theirs)."""
        try:
            while any(not f.done() for _, f in self._waiters):
                with contextlib.suppress(Exception):
                    await self._write_batch()
        except asyncio.CancelledError:
            # The loop is going away: nobody will write for those still waiting.
            for _, future in self._waiters:
                future.cancel()
            raise
        finally:
            self._flushing = False

    async def _write_batch(self) -> None:
        """Write everything recorded in one transaction and settle the callers that
        waited for it; raise what the write raised."""
        error: BaseException | None = None
        cancelled: asyncio.CancelledError | None = None
        async with self._write_lock:
            batch, taken = self._take_all()
            if batch:
                try:
                    await self._write(batch)
                except asyncio.CancelledError as exc:
                    cancelled, error = exc, exc
                    if self._writing is not None:
                        # Why wait on: the thread commits or not whatever we do; only its
                        # outcome says whether these rows are written or must be kept.
                        committed, _ = await self._writing.settled()
                        error = None if committed else exc
                except BaseException as exc:
                    error = exc
                finally:
                    self._writing = None
        if error is None:
            self._durable = taken
        else:
            self._give_back(batch)
        waiting = []
        woke = 0
        for generation, future in self._waiters:
            if future.done():
                continue
            if generation > taken or isinstance(error, asyncio.CancelledError):
                # Why a cancelled write keeps its waiters: the cancellation is its
                # caller's, not theirs; their rows were given back for the next write.
                waiting.append((generation, future))
                continue
            woke += 1
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
        self._waiters = waiting
        self._woke = woke
        if cancelled is not None:
            raise cancelled
        if error is not None:
            raise error

    async def _write(self, batch: _Batch) -> None:
        """One transaction: on a SQLite file (after the process's write lock), in place
        when it is at most ``inline_rows`` rows and SQLite's lock is free at once, else
        one call in the writer thread; elsewhere through the engine."""
        writer = self._writer
        if self._sqlite_file is not None and not self._closed:
            if writer is None or writer.closed:
                writer = self._writer = writer_for(self._engine)
        else:
            writer = None
        if writer is not None:
            async with self._engine_lock:
                size = batch.size()
                if size <= self.inline_rows:
                    done, _ = writer.run_here(batch.write)
                    if done:
                        return
                self._writing = writer.submit(batch.write)
                await self._writing.future
            return
        async with write_transaction(self._engine) as conn:
            for statement, rows in batch.statements():
                await conn.execute(statement, rows)

    def _take_all(self) -> tuple[_Batch, int]:
        """Everything recorded and not yet written, and the batch's number."""
        batch = _Batch(self._starts, self._take(), self._finishes, self._deliveries)
        self._starts, self._finishes, self._deliveries = [], [], []
        taken = self._generation
        self._generation += 1
        return batch, taken

    def _give_back(self, batch: _Batch) -> None:
        """Keep rows a write did not commit for the next try, ahead of newer ones."""
        self._starts[:0] = batch.starts
        self._finishes[:0] = batch.finishes
        self._deliveries[:0] = batch.deliveries
        for table, rows in batch.children.items():
            self._buffer[table][:0] = rows
            self._pending += len(rows)
        if self._pending and self._oldest is None:
            self._oldest = time.monotonic()

    def _remember(self, run_id: str) -> None:
        self._known[run_id] = None
        self._known.move_to_end(run_id)
        while len(self._known) > 50_000:
            self._known.popitem(last=False)
        if len(self._open) >= 50_000:
            # Runs that never finish (a process cut short) must not grow it forever; an
            # underestimate only costs a write the chance to wait for other runs' rows.
            self._open.clear()
        self._open.add(run_id)

    async def _start(self, e: RunStarted) -> None:
        if self._closed:
            raise RuntimeError("the audit sink is closed")
        self._starts.append(start_row(e, owner=self.owner, excerpt_chars=self.excerpt_chars))
        self._remember(e.run_id)
        # Why gather: other runs may be starting too, and the runs open are what tells a
        # write whether to wait a turn of the loop for their rows.
        await self._commit(gather=True)

    async def _placeholder(self, run_id: str, at: datetime) -> None:
        """A run this sink never saw start (it was built mid-run): give it a row."""
        async with self._write_lock, write_transaction(self._engine) as conn:
            exists = await conn.scalar(select(RUNS.c.run_id).where(RUNS.c.run_id == run_id))
            if exists is None:
                await conn.execute(insert(RUNS), [placeholder_row(run_id, at, self.owner)])
        self._remember(run_id)

    async def _finish(self, e: RunFinished) -> None:
        if e.run_id not in self._known:
            await self._placeholder(e.run_id, e.at)
        self._open.discard(e.run_id)
        self._finishes.append(finish_row(e, excerpt_chars=self.excerpt_chars))
        # Why one transaction: the run's last rows and its closing land together.
        await self._commit()

    async def _delivered(self, e: RunDelivered) -> None:
        if e.run_id not in self._known:
            await self._placeholder(e.run_id, e.at)
        self._deliveries.append(delivered_row(e))
        # Why at once: as for RunFinished, the caller may read the row when the run returns.
        await self._commit()


@dataclass(slots=True)
class _Batch:
    """One transaction's rows: runs started, their children, runs finished, and what
    their deliveries reported (in that order: children reference runs)."""

    starts: list[dict[str, Any]]
    children: dict[Any, list[dict[str, Any]]]
    finishes: list[dict[str, Any]]
    deliveries: list[dict[str, Any]]

    def __bool__(self) -> bool:
        return bool(self.starts or self.children or self.finishes or self.deliveries)

    def write(self, tx: WriteTx) -> None:
        _write_rows(tx, self)

    def size(self) -> int:
        """How many rows."""
        children = sum(len(rows) for rows in self.children.values())
        return len(self.starts) + children + len(self.finishes) + len(self.deliveries)

    def statements(self) -> list[tuple[Any, list[dict[str, Any]]]]:
        """Each statement with its rows (an executemany each), in order."""
        out: list[tuple[Any, list[dict[str, Any]]]] = []
        if self.starts:
            out.append((INSERT[RUNS], self.starts))
        out += [(INSERT[table], rows) for table, rows in self.children.items()]
        if self.finishes:
            out.append((FINISH, self.finishes))
        if self.deliveries:
            out.append((DELIVERED, self.deliveries))
        return out


def _write_rows(tx: WriteTx, batch: _Batch) -> None:
    """One transaction's statements, through the SQLite writer."""
    for statement, rows in batch.statements():
        tx.execute(statement, rows)
