"""Reading the audit trail: what ``/audit``, ``/budget`` and ``coterie audit`` show.

:class:`AuditQueries` lists runs newest first with a cursor (:class:`RunFilter`),
finds a run by a unique id prefix, reads one run with everything under it
(:class:`RunDetail`), iterates for export (:meth:`AuditQueries.export_lines`: the one
JSON Lines format of ``/audit export`` and ``coterie audit export``), sums spend per
member per day (:class:`DailySpend`), per day per persona or skill in a time zone
(the spend chart), per member (``/budget top``), offers autocomplete choices, and
forgets a member.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from typing import Any, TypeVar

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import SQLModel

from adapters.services.audit import RunFilter
from adapters.services.errors import RunNotFound
from adapters.storage.db import engine_of, translate_errors, write_transaction
from adapters.storage.export import jsonable_rows
from adapters.storage.tables import (
    AuditEventRow,
    AuditModelAttempt,
    AuditRun,
    AuditStep,
    AuditToolCall,
)

__all__ = [
    "FORGOTTEN",
    "AuditQueries",
    "DailySpend",
    "LabelSpend",
    "MemberSpend",
    "RunDetail",
    "RunFilter",
    "RunPage",
]

#: The user id of a run whose member asked to be forgotten.
FORGOTTEN = "forgotten"

_runs = AuditRun.__table__  # type: ignore[attr-defined]
_steps = AuditStep.__table__  # type: ignore[attr-defined]
_attempts = AuditModelAttempt.__table__  # type: ignore[attr-defined]
_tools = AuditToolCall.__table__  # type: ignore[attr-defined]
_events = AuditEventRow.__table__  # type: ignore[attr-defined]
_CHILDREN = (_steps, _attempts, _tools, _events)


def _clauses(where: RunFilter) -> list[ColumnElement[bool]]:
    """The filter as SQL conditions on the runs table."""
    c = _runs.c
    out: list[ColumnElement[bool]] = []
    for column, value in (
        (c.user_id, where.user_id),
        (c.guild_id, where.guild_id),
        (c.persona, where.persona),
        (c.skill, where.skill),
        (c.status, where.status),
        (c.trigger, where.trigger),
        (c.parent_run_id, where.parent_run_id),
    ):
        if value is not None:
            out.append(column == value)
    if where.since is not None:
        out.append(c.started_at >= where.since)
    if where.until is not None:
        out.append(c.started_at < where.until)
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


@dataclass(frozen=True, slots=True)
class LabelSpend:
    day: date  # in the asked time zone, by the run's start
    label: str  # the skill, else the persona, else the agent
    cost_micros: int
    runs: int


@dataclass(frozen=True, slots=True)
class MemberSpend:
    user_id: str
    user_name: str
    runs: int
    cost_micros: int


_PREFIX = re.compile(r"[0-9A-Za-z_-]{1,64}")
MIN_PREFIX = 4


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

    data_name = "audit runs"

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._url: URL = engine_of(sessions).url

    async def list_runs(
        self, where: RunFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> RunPage:
        """Runs newest first, ``limit`` a page; ``cursor`` continues a previous page."""
        limit = max(1, min(limit, 1000))
        clauses = _clauses(where or RunFilter())
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

    async def resolve_run(self, prefix: str, *, guild_id: str | None = None) -> str:
        """The one run whose id starts with ``prefix`` (within ``guild_id`` when given).

        Raises :class:`RunNotFound` (written for the person) when none or several match.
        """
        prefix = prefix.strip()
        if not _PREFIX.fullmatch(prefix):
            raise RunNotFound(f"“{prefix[:70]}” is not a run id.")
        clauses: list[ColumnElement[bool]] = [_runs.c.run_id.startswith(prefix, autoescape=True)]
        if guild_id is not None:
            clauses.append(_runs.c.guild_id == guild_id)
        stmt = select(_runs.c.run_id).where(*clauses).order_by(_runs.c.run_id).limit(2)
        with translate_errors(self._url):
            async with self._sessions() as session:
                found = list(await session.scalars(stmt))
        if not found:
            raise RunNotFound(f"No run starts with `{prefix}`; `/audit list` shows recent ones.")
        if len(found) > 1 and found[0] != prefix:
            raise RunNotFound(
                f"More than one run starts with `{prefix}`; type more of its id "
                f"(at least {MIN_PREFIX} characters usually do)."
            )
        return str(found[0])

    async def recent_runs(
        self, *, guild_id: str | None = None, typed: str = "", limit: int = 25
    ) -> list[AuditRun]:
        """Newest runs whose id starts with ``typed`` (autocomplete on run ids)."""
        clauses: list[ColumnElement[bool]] = []
        if guild_id is not None:
            clauses.append(_runs.c.guild_id == guild_id)
        typed = typed.strip()
        if typed:
            if not _PREFIX.fullmatch(typed):
                return []
            clauses.append(_runs.c.run_id.startswith(typed, autoescape=True))
        page = (
            select(AuditRun)
            .where(*clauses)
            .order_by(AuditRun.started_at.desc())  # type: ignore[attr-defined]
            .limit(limit)
        )
        with translate_errors(self._url):
            async with self._sessions() as session:
                return list(await session.scalars(page))

    async def recent_skills(
        self, *, guild_id: str | None = None, typed: str = "", limit: int = 25
    ) -> list[str]:
        """Names of skills that ran (here), most recent first (autocomplete on skills:
        the audit knows deleted skills too)."""
        c = _runs.c
        clauses: list[ColumnElement[bool]] = [c.skill.is_not(None)]
        if guild_id is not None:
            clauses.append(c.guild_id == guild_id)
        if typed.strip():
            clauses.append(c.skill.contains(typed.strip(), autoescape=True))
        stmt = (
            select(c.skill, func.max(c.started_at).label("last"))
            .where(*clauses)
            .group_by(c.skill)
            .order_by(func.max(c.started_at).desc())
            .limit(limit)
        )
        with translate_errors(self._url):
            async with self._sessions() as session:
                return [str(r[0]) for r in await session.execute(stmt)]

    async def recent_costs(
        self, *, user_id: str | None = None, guild_id: str | None = None, limit: int = 20
    ) -> list[int]:
        """The costs of the newest finished runs (a member's, or a guild's)."""
        c = _runs.c
        clauses: list[ColumnElement[bool]] = [c.status != "running"]
        if user_id is not None:
            clauses.append(c.user_id == user_id)
        if guild_id is not None:
            clauses.append(c.guild_id == guild_id)
        stmt = select(c.cost_micros).where(*clauses).order_by(c.started_at.desc()).limit(limit)
        with translate_errors(self._url):
            async with self._sessions() as session:
                return [int(v) for v in await session.scalars(stmt)]

    async def spend_by_label(
        self,
        *,
        since: datetime,
        until: datetime | None = None,
        user_id: str | None = None,
        guild_id: str | None = None,
        tz: tzinfo | None = None,
    ) -> list[LabelSpend]:
        """Spend per day (in ``tz``, UTC by default) per skill or persona, oldest first."""
        where = RunFilter(user_id=user_id, guild_id=guild_id, since=since, until=until)
        c = _runs.c
        stmt = select(c.started_at, c.skill, c.persona, c.agent, c.cost_micros).where(
            *_clauses(where)
        )
        totals: dict[tuple[date, str], list[int]] = {}
        with translate_errors(self._url):
            async with self._sessions() as session:
                for started, skill, persona, agent, cost in await session.execute(stmt):
                    day = (started.astimezone(tz) if tz is not None else started).date()
                    label = skill or persona or agent or "?"
                    t = totals.setdefault((day, label), [0, 0])
                    t[0] += int(cost)
                    t[1] += 1
        return [
            LabelSpend(day=d, label=label, cost_micros=t[0], runs=t[1])
            for (d, label), t in sorted(totals.items())
        ]

    async def top_spenders(
        self, *, since: datetime, guild_id: str | None = None, limit: int = 10
    ) -> list[MemberSpend]:
        """Members by what their runs cost since ``since`` (here), biggest first."""
        c = _runs.c
        clauses: list[ColumnElement[bool]] = [c.started_at >= since]
        if guild_id is not None:
            clauses.append(c.guild_id == guild_id)
        total = func.sum(c.cost_micros)
        stmt = (
            select(c.user_id, func.max(c.user_name), func.count(), total)
            .where(*clauses)
            .group_by(c.user_id)
            .order_by(total.desc(), c.user_id)
            .limit(limit)
        )
        with translate_errors(self._url):
            async with self._sessions() as session:
                return [
                    MemberSpend(
                        user_id=str(u), user_name=str(n or ""), runs=int(k), cost_micros=int(t)
                    )
                    for u, n, k, t in await session.execute(stmt)
                ]

    async def export_lines(self, where: RunFilter | None = None) -> AsyncGenerator[str, None]:
        """The export format: one JSON object per run (``RunDetail.to_dict``) per line."""
        async for detail in self.iter_runs(where):
            yield json.dumps(detail.to_dict(), ensure_ascii=False) + "\n"

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
        ).where(*_clauses(where))
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

    async def answered(self, run_ids: Sequence[str]) -> set[str]:
        """Of these runs, those that ended ``ok`` with their answer delivered (the
        ``RunDelivered`` the delivery reported): a scheduled slot whose run is one of them
        is done, whatever its row says (a crash came between the post and the slot's
        close)."""
        ids = [r for r in run_ids if r]
        if not ids:
            return set()
        stmt = select(_runs.c.run_id).where(
            _runs.c.run_id.in_(ids), _runs.c.status == "ok", _runs.c.delivered.is_(True)
        )
        with translate_errors(self._url):
            async with self._sessions() as session:
                return set((await session.scalars(stmt)).all())

    async def export_user_data(self, user_id: str) -> list[dict[str, Any]]:
        """Every run the member started, oldest first, as the audit has it, each with
        its steps (the text excerpts) and tool calls (arguments and result excerpts).
        The model attempts and events of those runs are technical (timings, errors)."""
        mine = select(_runs.c.run_id).where(_runs.c.user_id == user_id)
        async with self._sessions() as session:
            runs = jsonable_rows(
                await session.execute(
                    select(_runs)
                    .where(_runs.c.user_id == user_id)
                    .order_by(_runs.c.started_at, _runs.c.run_id)
                )
            )
            children: dict[str, dict[str, list[dict[str, Any]]]] = {}
            for key, table in (("steps", _steps), ("tool_calls", _tools)):
                rows = await session.execute(
                    select(table).where(table.c.run_id.in_(mine)).order_by(table.c.id)
                )
                for row in jsonable_rows(rows):
                    run_id = row.pop("run_id")
                    row.pop("id", None)
                    children.setdefault(run_id, {}).setdefault(key, []).append(row)
        for run in runs:
            found = children.get(run["run_id"], {})
            run["steps"] = found.get("steps", [])
            run["tool_calls"] = found.get("tool_calls", [])
        return runs

    async def delete_user_data(self, user_id: str) -> int:
        """Anonymise every run a member started; returns how many.

        The rows stay, for accounting (what ran, when, on which model, at what cost),
        but lose who and what: the member's id becomes :data:`FORGOTTEN`, their name,
        the prompt, the output, the notes, every step's text, every tool call's
        arguments and result, and every event's data are cleared. Runs other people
        started (even in the same channel, or as children of this member's) are kept.
        """
        mine = select(_runs.c.run_id).where(_runs.c.user_id == user_id)
        async with write_transaction(engine_of(self._sessions)) as conn:
            await conn.execute(
                update(_steps).where(_steps.c.run_id.in_(mine)).values(text_excerpt="")
            )
            await conn.execute(
                update(_tools)
                .where(_tools.c.run_id.in_(mine))
                .values(arguments="", result_excerpt="")
            )
            await conn.execute(update(_events).where(_events.c.run_id.in_(mine)).values(data={}))
            result = await conn.execute(
                update(_runs)
                .where(_runs.c.user_id == user_id)
                .values(
                    user_id=FORGOTTEN,
                    user_name="",
                    prompt_excerpt="",
                    output_excerpt="",
                    error=None,
                    note=None,
                )
            )
            return int(result.rowcount)
