"""The durable audit trail: ``executor.ports.AuditSink`` in SQL, and the queries on it.

Writing must not slow a run. ``RunStarted`` is one small transaction (a run is a row
from the moment it starts); everything between it and ``RunFinished`` (steps, model
attempts, tool calls, compaction, critic verdicts, approvals) is buffered and written
in batches with Core ``executemany``; ``RunFinished`` writes the buffer and closes the
run row in one transaction, so a crash never leaves a finished run half-written.
The buffer is also written when it holds ``batch_size`` rows, when its oldest row is
``flush_interval_s`` old (checked on every event), on :meth:`SqlAuditSink.flush` and
on :meth:`SqlAuditSink.close`.

Tool arguments are stored with secrets redacted (keys like ``*key*``, ``*token*``,
``*secret*``, ``*password*``, ``authorization``; values like ``sk-...`` or
``Bearer ...``) and capped in size; results, errors and texts are stored as excerpts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar

from sqlalchemy import and_, bindparam, delete, insert, or_, select, update
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import SQLModel

from adapters.db import IMMEDIATE, translate_errors
from adapters.tables import (
    AuditEventRow,
    AuditModelAttempt,
    AuditRun,
    AuditStep,
    AuditToolCall,
)
from executor.events import (
    ApprovalEvent,
    CompactionEvent,
    CriticVerdictEvent,
    ModelAttemptEvent,
    ModelRequestEvent,
    RunEvent,
    RunFinished,
    RunStarted,
    StepFinished,
    TextDeltaEvent,
    ToolCallFinished,
    ToolCallStarted,
)

__all__ = [
    "AuditQueries",
    "DailySpend",
    "RunDetail",
    "RunFilter",
    "RunPage",
    "SqlAuditSink",
    "excerpt",
    "redact",
]

_runs = AuditRun.__table__  # type: ignore[attr-defined]
_steps = AuditStep.__table__  # type: ignore[attr-defined]
_attempts = AuditModelAttempt.__table__  # type: ignore[attr-defined]
_tools = AuditToolCall.__table__  # type: ignore[attr-defined]
_events = AuditEventRow.__table__  # type: ignore[attr-defined]
_CHILDREN = (_steps, _attempts, _tools, _events)
_FINISHED_COLUMNS = (
    "status",
    "ended_at",
    "steps",
    "input_tokens",
    "output_tokens",
    "cost_micros",
    "model",
    "output_excerpt",
    "error",
    "error_kind",
    "note",
)
# One statement, executed for many runs at once (executemany).
_FINISH = (
    update(_runs)
    .where(_runs.c.run_id == bindparam("b_run_id"))
    .values({c: bindparam(c) for c in _FINISHED_COLUMNS})
)

# --- redaction ---------------------------------------------------------------------

_SECRET_KEY = re.compile(
    r"(key|token|secret|passw|pwd|authorization|auth_header|cookie|credential|session_id)",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(
    r"(?:\bsk-[A-Za-z0-9_\-]{8,}"  # OpenAI / Anthropic style keys
    r"|\bBearer\s+[A-Za-z0-9._~+/=\-]{8,}"
    r"|\bBasic\s+[A-Za-z0-9+/=]{8,}"
    r"|\bxox[abprs]-[A-Za-z0-9\-]{8,}"  # Slack
    r"|\bgh[pousr]_[A-Za-z0-9]{16,}"  # GitHub
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key id
    r"|\b[MN][A-Za-z\d_\-]{23,25}\.[A-Za-z\d_\-]{6}\.[A-Za-z\d_\-]{27,}"  # Discord bot token
    r")"
)
REDACTED = "[redacted]"


def excerpt(text: str | None, limit: int) -> str:
    """At most ``limit`` characters, secrets scrubbed, saying how much was cut."""
    if not text:
        return ""
    text = _SECRET_VALUE.sub(REDACTED, text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters]"


def _redact(value: Any, string_limit: int) -> Any:
    if isinstance(value, dict):
        return {
            str(k): REDACTED if _SECRET_KEY.search(str(k)) else _redact(v, string_limit)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_redact(v, string_limit) for v in value]
    if isinstance(value, str):
        return excerpt(value, string_limit)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return excerpt(str(value), string_limit)


def redact(arguments: dict[str, Any], *, limit: int = 4000) -> str:
    """Tool arguments as JSON with secrets redacted, at most about ``limit`` characters."""
    text = json.dumps(_redact(arguments, max(limit // 4, 64)), ensure_ascii=False, default=str)
    if len(text) > limit:
        text = f"{text[:limit]}… [{len(text) - limit} more characters]"
    return text


# --- the sink ----------------------------------------------------------------------


def _engine_of(sessions: async_sessionmaker[AsyncSession]) -> AsyncEngine:
    bind = sessions.kw.get("bind")
    if not isinstance(bind, AsyncEngine):
        raise TypeError("the session factory must be bound to an AsyncEngine")
    return bind


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
    ) -> None:
        self._sessions = sessions
        engine = _engine_of(sessions)
        self._url: URL = engine.url
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.excerpt_chars = excerpt_chars
        self.argument_chars = argument_chars
        self._buffer: dict[Any, list[dict[str, Any]]] = {t: [] for t in _CHILDREN}
        self._pending = 0
        self._oldest: float | None = None
        # Runs this sink has a row for; a small memory of finished ones for late events.
        self._known: OrderedDict[str, None] = OrderedDict()
        # Why: SQLite has one writer; queue ours here rather than in its busy handler.
        self._write_lock = asyncio.Lock()
        self._closed = False
        self._engine = engine
        self._starts: list[dict[str, Any]] = []
        self._finishes: list[dict[str, Any]] = []
        self._generation = 0  # the batch now filling
        self._durable = -1  # every batch up to this one is committed

    # --- AuditSink ------------------------------------------------------------------

    async def record(self, event: RunEvent) -> None:
        if isinstance(event, RunStarted):
            await self._start(event)
            return
        if isinstance(event, RunFinished):
            await self._finish(event)
            return
        if isinstance(event, TextDeltaEvent | ToolCallStarted):
            # Deltas are noise; a started call is recorded whole when it finishes.
            return
        if event.run_id not in self._known:
            await self._placeholder(event.run_id, event.at)
        table, row = self._row(event)
        self._buffer[table].append(row)
        self._pending += 1
        now = time.monotonic()
        if self._oldest is None:
            self._oldest = now
        if self._pending >= self.batch_size or now - self._oldest >= self.flush_interval_s:
            await self._commit()

    async def flush(self) -> None:
        """Write every buffered row now."""
        await self._commit()

    async def close(self) -> None:
        """Write what is buffered. The sink may not be used afterwards."""
        await self.flush()
        self._closed = True

    # --- internals ----------------------------------------------------------------

    def _take(self) -> dict[Any, list[dict[str, Any]]]:
        batch = {t: rows for t, rows in self._buffer.items() if rows}
        self._buffer = {t: [] for t in _CHILDREN}
        self._pending = 0
        self._oldest = None
        return batch

    async def _commit(self) -> None:
        """Make everything recorded so far durable: a group commit.

        Runs that start or finish while another write is under way are written
        together in the next transaction, so N concurrent runs cost about one
        transaction, not N (SQLite has one writer; PostgreSQL saves round trips).
        """
        mine = self._generation
        async with self._write_lock:
            if self._durable >= mine:
                return  # a writer before us took our rows with theirs
            starts, self._starts = self._starts, []
            finishes, self._finishes = self._finishes, []
            batch = self._take()
            taken = self._generation
            self._generation += 1
            try:
                async with self._transaction() as conn:
                    if starts:
                        await conn.execute(insert(_runs), starts)
                    await self._write(conn, batch)
                    if finishes:
                        await conn.execute(_FINISH, finishes)
            except BaseException:
                # Keep the rows for the next try, ahead of newer ones.
                self._starts[:0] = starts
                self._finishes[:0] = finishes
                for table, rows in batch.items():
                    self._buffer[table][:0] = rows
                    self._pending += len(rows)
                if self._pending and self._oldest is None:
                    self._oldest = time.monotonic()
                raise
            self._durable = taken

    @staticmethod
    async def _write(conn: Any, batch: dict[Any, list[dict[str, Any]]]) -> None:
        for table in _CHILDREN:  # children only reference runs
            rows = batch.get(table)
            if rows:
                await conn.execute(insert(table), rows)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction (BEGIN IMMEDIATE on SQLite), errors translated."""
        with translate_errors(self._url):
            async with self._engine.connect() as conn:
                conn = await conn.execution_options(**IMMEDIATE)
                async with conn.begin():
                    yield conn

    def _remember(self, run_id: str) -> None:
        self._known[run_id] = None
        self._known.move_to_end(run_id)
        while len(self._known) > 50_000:
            self._known.popitem(last=False)

    async def _start(self, e: RunStarted) -> None:
        if self._closed:
            raise RuntimeError("the audit sink is closed")
        caller = e.caller
        self._starts.append(
            {
                "run_id": e.run_id,
                "trigger": e.trigger[:16],
                "user_id": caller.user_id,
                "user_name": caller.display_name[:100],
                "guild_id": caller.guild_id,
                "channel_id": caller.channel_id,
                "agent": e.agent[:100],
                "persona": e.persona,
                "skill": e.skill,
                "parent_run_id": e.parent_run_id,
                "tier": e.tier[:32],
                "model": None,
                "status": "running",
                "started_at": e.at,
                "ended_at": None,
                "estimate_micros": e.estimate_micros,
                "prompt_excerpt": excerpt(e.prompt_excerpt, self.excerpt_chars),
                "output_excerpt": "",
                "steps": 0,
                "input_tokens": 0,
                "output_tokens": 0,
                "cost_micros": 0,
                "error": None,
                "error_kind": None,
                "note": None,
            }
        )
        self._remember(e.run_id)
        await self._commit()

    async def _placeholder(self, run_id: str, at: datetime) -> None:
        """A run this sink never saw start (it was built mid-run): give it a row."""
        async with self._write_lock, self._transaction() as conn:
            exists = await conn.scalar(select(_runs.c.run_id).where(_runs.c.run_id == run_id))
            if exists is None:
                await conn.execute(
                    insert(_runs),
                    [{"run_id": run_id, "trigger": "unknown", "user_id": "", "started_at": at}],
                )
        self._remember(run_id)

    async def _finish(self, e: RunFinished) -> None:
        if e.run_id not in self._known:
            await self._placeholder(e.run_id, e.at)
        r = e.result
        self._finishes.append(
            {
                "b_run_id": e.run_id,
                "status": r.status.value,
                "ended_at": e.at,
                "steps": r.steps,
                "input_tokens": r.usage.input_tokens,
                "output_tokens": r.usage.output_tokens,
                "cost_micros": r.usage.cost_micros,
                "model": r.model[:128] if r.model else None,
                "output_excerpt": excerpt(r.output, self.excerpt_chars),
                "error": excerpt(r.error, self.excerpt_chars) if r.error else None,
                "error_kind": r.error_kind[:64] if r.error_kind else None,
                "note": excerpt(r.note, self.excerpt_chars) if r.note else None,
            }
        )
        # Why one transaction: the run's last rows and its closing land together.
        await self._commit()

    def _row(self, event: RunEvent) -> tuple[Any, dict[str, Any]]:
        base: dict[str, Any] = {"run_id": event.run_id, "at": event.at}
        if isinstance(event, StepFinished):
            u = event.usage
            return _steps, base | {
                "step": event.step,
                "model": event.model[:128],
                "stop_reason": event.stop_reason[:32],
                "input_tokens": u.input_tokens,
                "output_tokens": u.output_tokens,
                "cost_micros": u.cost_micros,
                "tool_calls": event.tool_calls,
                "text_excerpt": excerpt(event.text_excerpt, self.excerpt_chars),
            }
        if isinstance(event, ModelAttemptEvent):
            a = event.attempt
            return _attempts, base | {
                "step": event.step,
                "model": a.model[:128],
                "latency_ms": a.latency_ms,
                "error": excerpt(a.error, self.excerpt_chars) if a.error else None,
                "error_kind": a.error_kind[:64] if a.error_kind else None,
            }
        if isinstance(event, ToolCallFinished):
            return _tools, base | {
                "step": event.step,
                "call_id": event.call_id[:128],
                "name": event.name[:128],
                "arguments": redact(event.arguments, limit=self.argument_chars),
                "result_excerpt": excerpt(event.result, self.excerpt_chars),
                "is_error": event.is_error,
                "duration_ms": event.duration_ms,
            }
        kind, step, cost, data = _event_data(event)
        return _events, base | {"kind": kind, "step": step, "cost_micros": cost, "data": data}


def _event_data(event: RunEvent) -> tuple[str, int, int, dict[str, Any]]:
    if isinstance(event, ModelRequestEvent):
        return "model_request", event.step, 0, {"message_count": event.message_count}
    if isinstance(event, CompactionEvent):
        u = event.usage
        return (
            "compaction",
            0,
            u.cost_micros,
            {
                "tokens_before": event.tokens_before,
                "tokens_after": event.tokens_after,
                "model": event.model,
                "messages_summarised": event.messages_summarised,
                "input_tokens": u.input_tokens,
                "output_tokens": u.output_tokens,
            },
        )
    if isinstance(event, CriticVerdictEvent):
        return (
            "critic_verdict",
            event.step,
            0,
            {"verdict": event.verdict, "reason": excerpt(event.reason, 2000), "state": event.state},
        )
    if isinstance(event, ApprovalEvent):
        return (
            "approval",
            0,
            0,
            {
                "tool": event.tool,
                "call_id": event.call_id,
                "approved": event.approved,
                "reason": excerpt(event.reason, 2000),
            },
        )
    return type(event).__name__.lower(), 0, 0, {}


# --- queries -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunFilter:
    user_id: str | None = None
    guild_id: str | None = None
    persona: str | None = None
    skill: str | None = None
    status: str | None = None
    trigger: str | None = None
    since: datetime | None = None  # started at or after
    until: datetime | None = None  # started before
    parent_run_id: str | None = None

    def clauses(self) -> list[ColumnElement[bool]]:
        c = _runs.c
        out: list[ColumnElement[bool]] = []
        for column, value in (
            (c.user_id, self.user_id),
            (c.guild_id, self.guild_id),
            (c.persona, self.persona),
            (c.skill, self.skill),
            (c.status, self.status),
            (c.trigger, self.trigger),
            (c.parent_run_id, self.parent_run_id),
        ):
            if value is not None:
                out.append(column == value)
        if self.since is not None:
            out.append(c.started_at >= self.since)
        if self.until is not None:
            out.append(c.started_at < self.until)
        return out


@dataclass(frozen=True, slots=True)
class RunPage:
    runs: list[AuditRun]
    next_cursor: str | None  # pass back to get the next (older) page


@dataclass(slots=True)
class RunDetail:
    run: AuditRun
    steps: list[AuditStep] = field(default_factory=list)
    attempts: list[AuditModelAttempt] = field(default_factory=list)
    tool_calls: list[AuditToolCall] = field(default_factory=list)
    events: list[AuditEventRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def plain(row: Any, drop: Sequence[str] = ()) -> dict[str, Any]:
            d = row.model_dump()
            for key in drop:
                d.pop(key, None)
            return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in d.items()}

        out = plain(self.run)
        child = ("run_id",)
        out["steps"] = [plain(s, child) for s in self.steps]
        out["attempts"] = [plain(a, child) for a in self.attempts]
        out["tool_calls"] = [plain(t, child) for t in self.tool_calls]
        out["events"] = [plain(e, child) for e in self.events]
        return out


@dataclass(frozen=True, slots=True)
class DailySpend:
    day: date  # UTC, by the run's start
    user_id: str
    runs: int
    cost_micros: int
    input_tokens: int
    output_tokens: int


def _encode_cursor(run: AuditRun) -> str:
    raw = f"{run.started_at.isoformat()}|{run.run_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, run_id = raw.split("|", 1)
        return datetime.fromisoformat(at), run_id
    except ValueError as exc:
        raise ValueError(f"not a cursor from this audit trail: {cursor!r}") from exc


M = TypeVar("M", bound=SQLModel)


async def _children(session: AsyncSession, model: type[M], table: Any, run_id: str) -> list[M]:
    stmt = select(model).where(table.c.run_id == run_id).order_by(table.c.id)
    return list(await session.scalars(stmt))


class AuditQueries:
    """Reading the audit trail (what ``/audit`` and ``coterie audit`` show)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._url: URL = _engine_of(sessions).url

    async def list_runs(
        self, where: RunFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> RunPage:
        """Runs newest first, ``limit`` a page; ``cursor`` continues a previous page."""
        limit = max(1, min(limit, 1000))
        clauses = (where or RunFilter()).clauses()
        if cursor:
            at, run_id = _decode_cursor(cursor)
            c = _runs.c
            clauses.append(or_(c.started_at < at, and_(c.started_at == at, c.run_id < run_id)))
        stmt = (
            select(AuditRun)
            .where(*clauses)
            .order_by(AuditRun.started_at.desc(), AuditRun.run_id.desc())  # type: ignore[attr-defined]
            .limit(limit + 1)
        )
        with translate_errors(self._url):
            async with self._sessions() as session:
                runs = list(await session.scalars(stmt))
        more = len(runs) > limit
        runs = runs[:limit]
        return RunPage(runs=runs, next_cursor=_encode_cursor(runs[-1]) if more else None)

    async def iter_runs(self, where: RunFilter | None = None) -> AsyncIterator[RunDetail]:
        """Every matching run with everything under it, newest first (for export)."""
        cursor: str | None = None
        while True:
            page = await self.list_runs(where, limit=200, cursor=cursor)
            for run in page.runs:
                detail = await self.get_run(run.run_id)
                if detail is not None:
                    yield detail
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def get_run(self, run_id: str) -> RunDetail | None:
        """One run with its steps, model attempts, tool calls and events, in order."""
        with translate_errors(self._url):
            async with self._sessions() as session:
                run = await session.get(AuditRun, run_id)
                if run is None:
                    return None
                return RunDetail(
                    run=run,
                    steps=await _children(session, AuditStep, _steps, run_id),
                    attempts=await _children(session, AuditModelAttempt, _attempts, run_id),
                    tool_calls=await _children(session, AuditToolCall, _tools, run_id),
                    events=await _children(session, AuditEventRow, _events, run_id),
                )

    async def spend_per_day(
        self,
        *,
        since: datetime,
        until: datetime | None = None,
        user_id: str | None = None,
        guild_id: str | None = None,
    ) -> list[DailySpend]:
        """Spend per member per UTC day (by run start), oldest day first."""
        where = RunFilter(user_id=user_id, guild_id=guild_id, since=since, until=until)
        c = _runs.c
        stmt = select(
            c.user_id, c.started_at, c.cost_micros, c.input_tokens, c.output_tokens
        ).where(*where.clauses())
        # Why in Python: "the UTC day of a timestamp" differs per SQL dialect, and one
        # member's month of runs is small.
        totals: dict[tuple[date, str], list[int]] = {}
        with translate_errors(self._url):
            async with self._sessions() as session:
                for user, started, cost, tin, tout in await session.execute(stmt):
                    t = totals.setdefault((started.date(), user), [0, 0, 0, 0])
                    t[0] += 1
                    t[1] += cost
                    t[2] += tin
                    t[3] += tout
        return [
            DailySpend(
                day=d, user_id=u, runs=t[0], cost_micros=t[1], input_tokens=t[2], output_tokens=t[3]
            )
            for (d, u), t in sorted(totals.items())
        ]

    async def delete_user_data(self, user_id: str) -> int:
        """Delete every run a member started, with everything under it; returns how many.

        Kept: runs other people started (even in the same channel, or as children of
        this member's runs, whose parent id then points nowhere), and the budget
        ledger's charges (see ``SqlBudgetLedger.delete_user_data``).
        """
        mine = select(_runs.c.run_id).where(_runs.c.user_id == user_id)
        with translate_errors(self._url):
            async with self._sessions() as session, session.begin():
                await session.connection(execution_options=IMMEDIATE)
                for table in _CHILDREN:
                    await session.execute(delete(table).where(table.c.run_id.in_(mine)))
                result = await session.execute(delete(_runs).where(_runs.c.user_id == user_id))
                return int(result.rowcount)  # type: ignore[attr-defined]
