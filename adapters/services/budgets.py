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
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from adapters.services.ports import GuildSettingsStore
from executor.agent import Caller
from executor.budget import BudgetStatus

__all__ = [
    "DEFAULT_TYPICAL_RUN_MICROS",
    "BudgetLimits",
    "BudgetReader",
    "GuildBudgetLimits",
    "MemberBudget",
    "RecentCosts",
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
