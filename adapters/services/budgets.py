"""Budgets as a guild sees them: whose limit applies where, and a member's own view.

Budgets are one ledger per member across guilds (``executor.budget``); what a guild
decides is the *base limit* of a member who has no override of their own, for runs
started in that guild: the most generous limit among the member's roles that have
one (``/config role-budget``), else the guild's default (``/config set budget``),
else the deployment's (``COTERIE_BUDGET_DEFAULT_USD``). A member's own override
(``/budget set``) wins everywhere; grants add to whichever base applies.

- :class:`GuildBudgetLimits` implements :class:`BudgetLimits` on the guild settings
  (cached reads), for ``SqlBudgetLedger.limits``.
- :func:`member_view` is ``/budget me``: spent, reserved, the limit, and when enough
  spend rolls out of the window to afford a typical run.
- :class:`BudgetService` is what ``/budget`` reads: a member's status where they are
  asked about, their active grants, the top spenders of a guild with their limits,
  and spend per day per persona or skill in the guild's time zone (the chart).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Protocol
from zoneinfo import ZoneInfo

from adapters.services.ports import GuildSettingsStore
from executor.agent import Caller
from executor.budget import BudgetStatus
from executor.ports import Clock, RealClock

__all__ = [
    "DEFAULT_TYPICAL_RUN_MICROS",
    "BudgetLimits",
    "BudgetReader",
    "BudgetService",
    "GrantRow",
    "GuildBudgetLimits",
    "LabelSpendRow",
    "MemberBudget",
    "MemberSheet",
    "MemberSpendRow",
    "RecentCosts",
    "SpendChart",
    "SpendQueries",
    "TopSpenders",
    "member_view",
    "typical_cost",
]

#: What a "typical run" costs when nobody has run anything yet: one cent.
DEFAULT_TYPICAL_RUN_MICROS = 10_000


class BudgetLimits(Protocol):
    async def default_for(self, caller: Caller) -> int:
        """The base limit (micro-dollars) for ``caller`` where they ask, when they
        have no override of their own."""
        ...


class GuildBudgetLimits:
    def __init__(self, settings: GuildSettingsStore, deployment_default_micros: int) -> None:
        self.settings = settings
        self.deployment_default_micros = deployment_default_micros

    async def default_for(self, caller: Caller) -> int:
        if not caller.guild_id:
            return self.deployment_default_micros
        config = await self.settings.guild(caller.guild_id)
        by_role = config.role_budget(caller.roles)
        if by_role is not None:
            return by_role
        if config.budget_default_micros is not None:
            return config.budget_default_micros
        return self.deployment_default_micros


class BudgetReader(Protocol):
    """What the member's view needs of the ledger (``SqlBudgetLedger``)."""

    async def status(self, user_id: str, *, context: Caller | None = None) -> BudgetStatus: ...

    async def affordable_at(
        self, user_id: str, needed_micros: int, *, context: Caller | None = None
    ) -> datetime | None: ...


class RecentCosts(Protocol):
    """What the member's view needs of the audit (``AuditQueries``)."""

    async def recent_costs(
        self, *, user_id: str | None = None, guild_id: str | None = None, limit: int = 20
    ) -> list[int]: ...


def typical_cost(costs: Sequence[int]) -> int | None:
    """The median of the runs' costs that cost anything (None when there are none)."""
    paid = [c for c in costs if c > 0]
    return int(statistics.median(paid)) if paid else None


@dataclass(frozen=True, slots=True)
class MemberBudget:
    status: BudgetStatus
    typical_run_micros: int
    # When enough spend rolls out of the window for one more typical run (None: now,
    # or never by rolling out alone: see ``affordable_now``).
    affordable_at: datetime | None

    @property
    def affordable_now(self) -> bool:
        return self.status.available_micros >= self.typical_run_micros

    @property
    def runs_left(self) -> int:
        if self.typical_run_micros <= 0:
            return 0
        return max(self.status.available_micros, 0) // self.typical_run_micros

    @property
    def used_share(self) -> float:
        limit = self.status.limit_micros
        return (self.status.spent_micros + self.status.reserved_micros) / limit if limit else 1.0


async def member_view(caller: Caller, ledger: BudgetReader, audit: RecentCosts) -> MemberBudget:
    """``/budget me``: the member's budget where they ask, with a typical run's cost
    (the median of their last 20 paid runs, else the guild's, else one cent)."""
    typical = typical_cost(await audit.recent_costs(user_id=caller.user_id))
    if typical is None and caller.guild_id:
        typical = typical_cost(await audit.recent_costs(guild_id=caller.guild_id, limit=50))
    typical = typical or DEFAULT_TYPICAL_RUN_MICROS
    status = await ledger.status(caller.user_id, context=caller)
    when = await ledger.affordable_at(caller.user_id, typical, context=caller)
    return MemberBudget(status=status, typical_run_micros=typical, affordable_at=when)


# --- /budget ----------------------------------------------------------------------------


class GrantRow(Protocol):
    """A grant that has not expired (``SqlBudgetLedger.active_grants``)."""

    @property
    def amount_micros(self) -> int: ...
    @property
    def granted_by(self) -> str: ...
    @property
    def expires_at(self) -> datetime: ...
    @property
    def note(self) -> str: ...


class MemberSpendRow(Protocol):
    """One member's spend over a span (``AuditQueries.top_spenders``)."""

    @property
    def user_id(self) -> str: ...
    @property
    def user_name(self) -> str: ...
    @property
    def runs(self) -> int: ...
    @property
    def cost_micros(self) -> int: ...


class LabelSpendRow(Protocol):
    """One day's spend of one persona or skill (``AuditQueries.spend_by_label``)."""

    @property
    def day(self) -> date: ...
    @property
    def label(self) -> str: ...
    @property
    def cost_micros(self) -> int: ...
    @property
    def runs(self) -> int: ...


class Ledger(BudgetReader, Protocol):
    """What ``/budget`` needs of the ledger (``SqlBudgetLedger``)."""

    async def active_grants(self, user_id: str) -> Sequence[GrantRow]: ...


class SpendQueries(RecentCosts, Protocol):
    """What ``/budget`` needs of the audit (``AuditQueries``)."""

    async def top_spenders(
        self, *, since: datetime, guild_id: str | None = ..., limit: int = ...
    ) -> Sequence[MemberSpendRow]: ...

    async def spend_by_label(
        self,
        *,
        since: datetime,
        until: datetime | None = ...,
        user_id: str | None = ...,
        guild_id: str | None = ...,
        tz: tzinfo | None = ...,
    ) -> Sequence[LabelSpendRow]: ...


@dataclass(frozen=True, slots=True)
class MemberSheet:
    """``/budget show``: a member's budget where they were asked about, and the grants
    that make part of it."""

    status: BudgetStatus
    grants: Sequence[GrantRow]


@dataclass(frozen=True, slots=True)
class TopSpenders:
    """``/budget top``: members by spend here over ``days``, each with their limit here
    (a member who is not a Discord user, the console, has none)."""

    rows: Sequence[MemberSpendRow]
    statuses: dict[str, BudgetStatus]
    days: int


@dataclass(frozen=True, slots=True)
class SpendChart:
    """Spend per day per persona or skill over ``days`` days up to ``last_day``, the
    days in the guild's time zone (``zone`` None: UTC)."""

    rows: Sequence[LabelSpendRow]
    last_day: date
    days: int
    zone: ZoneInfo | None


class BudgetService:
    """``/budget``'s reads (the levers, limits and grants, are :class:`AdminService`'s).

    ``ledger``: the budget ledger; ``spend``: the audit's sums; ``guild_settings``: a
    guild's time zone for its days; ``clock``: what "today" is.
    """

    def __init__(
        self,
        *,
        ledger: Ledger,
        spend: SpendQueries,
        guild_settings: GuildSettingsStore,
        clock: Clock | None = None,
    ) -> None:
        self.ledger = ledger
        self.spend = spend
        self.guild_settings = guild_settings
        self.clock: Clock = clock if clock is not None else RealClock()

    async def mine(self, caller: Caller) -> MemberBudget:
        """``/budget me``: the caller's budget where they ask (see :func:`member_view`)."""
        return await member_view(caller, self.ledger, self.spend)

    async def status(self, member: Caller) -> BudgetStatus:
        """The member's budget as it applies where ``member`` places them (their guild
        and roles pick the base limit)."""
        return await self.ledger.status(member.user_id, context=member)

    async def sheet(self, member: Caller) -> MemberSheet:
        return MemberSheet(
            status=await self.status(member),
            grants=await self.ledger.active_grants(member.user_id),
        )

    async def top(self, guild_id: str, *, days: int, limit: int = 15) -> TopSpenders:
        since = self.clock.now() - timedelta(days=days)
        rows = await self.spend.top_spenders(since=since, guild_id=guild_id, limit=limit)
        # The limit where they are asked about: here (their roles are not known from a list).
        statuses = {
            r.user_id: await self.status(Caller(user_id=r.user_id, guild_id=guild_id))
            for r in rows
            if r.user_id.isdigit()
        }
        return TopSpenders(rows=rows, statuses=statuses, days=days)

    async def chart(self, *, guild_id: str | None, user_id: str | None, days: int) -> SpendChart:
        """Spend per day of ``user_id`` (everywhere: one budget across guilds), or of
        the whole guild when ``user_id`` is None; days in the guild's time zone."""
        zone: ZoneInfo | None = None
        if guild_id is not None:
            config = await self.guild_settings.guild(guild_id)
            zone = ZoneInfo(config.timezone) if config.timezone else None
        today = self.clock.now().astimezone(zone or UTC).date()
        first = datetime.combine(today - timedelta(days=days - 1), datetime.min.time(), zone or UTC)
        rows = await self.spend.spend_by_label(
            since=first,
            user_id=user_id,
            guild_id=guild_id if user_id is None else None,
            tz=zone,
        )
        return SpendChart(rows=rows, last_day=today, days=days, zone=zone)
