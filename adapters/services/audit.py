"""The audit trail as admins read it (``/audit``), host-neutral.

:class:`AuditService` pages through a guild's runs (:class:`RunFilter`), shows one run
in full with what it did to its member's 7-day spend (:class:`RunView`), exports a
guild's runs as JSON Lines within a size cap (recorded in the admin log), and offers
the recent runs and skills an autocomplete shows. Each read flushes the audit first,
so a run that just ended is there.

What it reads comes through small protocols (:class:`AuditReader`, :class:`AuditFlush`,
:class:`SpendHistory`); ``adapters.storage`` implements them (``AuditQueries``,
``SqlAuditSink``, ``SqlBudgetLedger``) and ``bot.app`` wires them in. The rows are
named here as protocols too (:class:`RunRow`, :class:`RunDetailLike`), so neither the
cogs nor the Discord edge import storage to read them.
"""

from __future__ import annotations

import io
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from adapters.services.errors import ExportTooLarge, RunNotFound
from executor.agent import Caller
from executor.ports import Clock, RealClock

if TYPE_CHECKING:
    from adapters.services.admin import AdminService
    from executor.budget import BudgetStatus

__all__ = [
    "AuditFlush",
    "AuditReader",
    "AuditService",
    "Export",
    "RunDetailLike",
    "RunFilter",
    "RunPageLike",
    "RunRow",
    "RunView",
    "SpendHistory",
]


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Which runs: each field that is set must match (``since`` inclusive, ``until``
    exclusive, by the run's start)."""

    user_id: str | None = None
    guild_id: str | None = None
    persona: str | None = None
    skill: str | None = None
    status: str | None = None
    trigger: str | None = None
    since: datetime | None = None  # started at or after
    until: datetime | None = None  # started before
    parent_run_id: str | None = None


class RunRow(Protocol):
    """An audit run as the admin review reads it (``adapters.storage.tables.AuditRun``)."""

    run_id: str
    trigger: str
    user_id: str
    user_name: str
    guild_id: str | None
    channel_id: str | None
    agent: str
    persona: str | None
    skill: str | None
    parent_run_id: str | None
    resumed_from: str | None  # the interrupted run this one continues
    tier: str
    model: str | None
    status: str
    started_at: datetime
    ended_at: datetime | None
    steps: int
    input_tokens: int
    output_tokens: int
    cost_micros: int
    estimate_micros: int
    prompt_excerpt: str
    output_excerpt: str
    error: str | None
    error_kind: str | None
    note: str | None
    delivered: bool | None
    delivery_error: str | None


class RunDetailLike(Protocol):
    """A run with everything under it (``adapters.storage.audit_queries.RunDetail``)."""

    @property
    def run(self) -> RunRow: ...
    @property
    def steps(self) -> Sequence[Any]: ...
    @property
    def attempts(self) -> Sequence[Any]: ...
    @property
    def tool_calls(self) -> Sequence[Any]: ...
    @property
    def events(self) -> Sequence[Any]: ...


class RunPageLike(Protocol):
    @property
    def runs(self) -> Sequence[RunRow]: ...
    @property
    def next_cursor(self) -> str | None:
        """Pass back to get the next (older) page; None on the last."""
        ...


class AuditReader(Protocol):
    """What the review needs of the audit queries (``AuditQueries``)."""

    async def list_runs(
        self, where: RunFilter | None = ..., *, limit: int = ..., cursor: str | None = ...
    ) -> RunPageLike: ...

    async def resolve_run(self, prefix: str, *, guild_id: str | None = ...) -> str: ...

    async def get_run(self, run_id: str) -> RunDetailLike | None: ...

    def export_lines(self, where: RunFilter | None = ...) -> AsyncGenerator[str, None]: ...

    async def recent_runs(
        self, *, guild_id: str | None = ..., typed: str = ..., limit: int = ...
    ) -> Sequence[RunRow]: ...

    async def recent_skills(
        self, *, guild_id: str | None = ..., typed: str = ..., limit: int = ...
    ) -> list[str]: ...


class AuditFlush(Protocol):
    """The audit sink: write what it holds before a read."""

    async def flush(self) -> None: ...


class SpendHistory(Protocol):
    """What a run's budget line needs of the ledger (``SqlBudgetLedger``)."""

    async def spent_at(self, user_id: str, at: datetime) -> int: ...

    async def status(self, user_id: str, *, context: Caller | None = ...) -> BudgetStatus: ...


@dataclass(frozen=True, slots=True)
class RunView:
    """``/audit show``: the run, and its member's 7-day spend before and after it with
    their limit now (None for a run with no Discord member: the console, the CLI)."""

    detail: RunDetailLike
    spent_before: int | None = None
    spent_after: int | None = None
    limit_micros: int | None = None


@dataclass(frozen=True, slots=True)
class Export:
    """A guild's runs as JSON Lines, one run a line."""

    data: bytes
    runs: int


class AuditService:
    """``/audit``'s reads. ``admin`` records the exports; ``clock`` ends a run still
    running "now" for its budget line."""

    def __init__(
        self,
        *,
        queries: AuditReader,
        sink: AuditFlush,
        budget: SpendHistory,
        admin: AdminService,
        clock: Clock | None = None,
    ) -> None:
        self.queries = queries
        self.sink = sink
        self.budget = budget
        self.admin = admin
        self.clock: Clock = clock if clock is not None else RealClock()

    async def runs(self, where: RunFilter, *, limit: int, cursor: str | None = None) -> RunPageLike:
        """A page of runs, newest first; the first page flushes the audit."""
        if cursor is None:
            await self.sink.flush()
        return await self.queries.list_runs(where, limit=limit, cursor=cursor)

    async def run(self, guild_id: str, prefix: str) -> RunView:
        """The one run here whose id starts with ``prefix``; :class:`RunNotFound`
        (written for the person) when none or several do."""
        await self.sink.flush()
        run_id = await self.queries.resolve_run(prefix, guild_id=guild_id)
        detail = await self.queries.get_run(run_id)
        if detail is None:  # deleted between the two reads
            raise RunNotFound(f"No run `{run_id}`.")
        r = detail.run
        if not r.user_id.isdigit():
            return RunView(detail)
        return RunView(
            detail,
            spent_before=await self.budget.spent_at(r.user_id, r.started_at),
            spent_after=await self.budget.spent_at(r.user_id, r.ended_at or self.clock.now()),
            limit_micros=(await self.budget.status(r.user_id)).limit_micros,
        )

    async def export(
        self,
        actor: Caller,
        guild_id: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        max_bytes: int,
    ) -> Export:
        """The guild's runs as JSON Lines (``coterie audit export``'s format), recorded
        in the admin log; :class:`ExportTooLarge` past ``max_bytes``."""
        await self.sink.flush()
        out = io.BytesIO()
        count = 0
        where = RunFilter(guild_id=guild_id, since=since, until=until)
        async with aclosing(self.queries.export_lines(where)) as lines:
            async for line in lines:
                out.write(line.encode())
                count += 1
                if out.tell() > max_bytes:
                    raise ExportTooLarge(
                        f"That is more than {max_bytes // (1024 * 1024)} MB of runs: give a "
                        "shorter span (`since`/`until`), or export from the host with "
                        f"`coterie audit export --guild {guild_id}`."
                    )
        await self.admin.record(
            actor,
            "audit.export",
            guild_id=guild_id,
            detail={
                "runs": count,
                "since": since.isoformat() if since else None,
                "until": until.isoformat() if until else None,
            },
        )
        return Export(data=out.getvalue(), runs=count)

    # --- what autocompletes offer ---------------------------------------------------

    async def recent_runs(
        self, *, guild_id: str | None = None, typed: str = "", limit: int = 25
    ) -> Sequence[RunRow]:
        """Newest runs (here) whose id starts with ``typed``."""
        return await self.queries.recent_runs(guild_id=guild_id, typed=typed, limit=limit)

    async def recent_skills(
        self, *, guild_id: str | None = None, typed: str = "", limit: int = 25
    ) -> list[str]:
        """Skills that ran (here), most recent first (deleted ones too)."""
        return await self.queries.recent_skills(guild_id=guild_id, typed=typed, limit=limit)
