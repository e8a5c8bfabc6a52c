"""Admin actions, each validated, applied and recorded with who did it.

Every change an admin makes (``/config``, ``/budget set``, ``/budget grant``, an
export, ``coterie forget``) goes through :class:`AdminService`, which checks the
values, applies them through the stores, and writes one :class:`AdminEntry` to the
:class:`AdminLog` (``admin_actions``: when, guild, actor, action, target member,
the values before and after). Why a table of its own and not an audit *run* with
trigger ``admin``: a run has a model, tokens, a cost and a budget reservation; an
admin action has none of them, and ``/audit actions`` lists them apart.

Guild settings apply at once: the store invalidates its cache on every change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from adapters.services.errors import InvalidSetting
from adapters.services.ports import GuildConfig, GuildSettingsStore
from executor.agent import Caller
from executor.budget import format_usd

__all__ = [
    "ACTIONS",
    "AdminEntry",
    "AdminLog",
    "AdminPage",
    "AdminService",
    "BudgetAdmin",
    "check_timezone",
    "describe",
]

#: The actions recorded, and what they mean.
ACTIONS = {
    "config.set": "guild settings changed",
    "budget.set": "a member's limit set (or returned to the default)",
    "budget.grant": "a one-off grant",
    "audit.export": "the audit trail exported",
    "forget": "a member's data deleted by the operator",
    "member.export": "a member's data exported by the operator",
}

# Settings whose None means "the deployment's" and that /config reset may clear.
CLEARABLE = frozenset(GuildConfig.field_names())


@dataclass(frozen=True, slots=True)
class AdminEntry:
    id: int
    at: datetime
    guild_id: str | None
    actor_id: str
    actor_name: str
    action: str
    target_id: str | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AdminPage:
    entries: list[AdminEntry]
    next_cursor: str | None


class AdminLog(Protocol):
    async def record(
        self,
        *,
        action: str,
        actor_id: str,
        actor_name: str = "",
        guild_id: str | None = None,
        target_id: str | None = None,
        detail: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> AdminEntry: ...

    async def list(
        self,
        *,
        guild_id: str | None = None,
        action: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> AdminPage: ...


class BudgetAdmin(Protocol):
    """What the admin actions need of the ledger (``SqlBudgetLedger``)."""

    async def set_limit(self, user_id: str, limit_micros: int | None) -> None: ...

    async def grant(
        self,
        user_id: str,
        amount_micros: int,
        *,
        granted_by: str = "",
        expires_at: datetime | None = None,
        note: str = "",
    ) -> None: ...


PersonaExists = Callable[[str, str], Awaitable[bool]]


def check_timezone(name: str) -> str:
    """An IANA zone name as ``zoneinfo`` spells it, or :class:`InvalidSetting`."""
    typed = name.strip().replace(" ", "_")
    try:
        return str(ZoneInfo(typed))
    except (ZoneInfoNotFoundError, ValueError):
        pass
    # Why: people type "europe/paris"; zoneinfo's names are case-sensitive on Linux.
    by_lower = {z.lower(): z for z in available_timezones()}
    if typed.lower() in by_lower:
        return by_lower[typed.lower()]
    raise InvalidSetting(
        f"“{name[:60]}” is not a time zone I know; use an IANA name like Europe/Paris or UTC."
    )


def _plain(value: Any) -> Any:
    """A config value as JSON (the admin log's detail)."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


MAX_USD_MICROS = 1_000_000 * 1_000_000  # a million dollars: past this it is a typo


def _check_money(name: str, micros: int | None) -> None:
    if micros is not None and not 0 <= micros <= MAX_USD_MICROS:
        raise InvalidSetting(f"{name} must be between $0 and $1,000,000.")


class AdminService:
    """``tiers``: the deployment's tier names (empty: not checked);
    ``persona_exists(guild_id, name)``: whether a persona may be the default."""

    def __init__(
        self,
        *,
        guild_settings: GuildSettingsStore,
        budget: BudgetAdmin,
        log: AdminLog,
        tiers: Sequence[str] = (),
        persona_exists: PersonaExists | None = None,
    ) -> None:
        self.guild_settings = guild_settings
        self.budget = budget
        self.log = log
        self.tiers = tuple(tiers)
        self.persona_exists = persona_exists

    # --- guild settings ------------------------------------------------------------

    async def _validate(self, guild_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        out = dict(changes)
        unknown = set(out) - set(GuildConfig.field_names())
        if unknown:
            raise InvalidSetting(f"unknown setting(s): {', '.join(sorted(unknown))}")
        if (tz := out.get("timezone")) is not None:
            out["timezone"] = check_timezone(tz)
        if (tier := out.get("default_tier")) is not None:
            tier = str(tier).strip().lower()
            if self.tiers and tier not in self.tiers:
                raise InvalidSetting(
                    f"no tier named “{tier}”; this deployment has {', '.join(self.tiers)}."
                )
            out["default_tier"] = tier
        name = out.get("default_persona")
        if (
            name is not None
            and self.persona_exists
            and not await self.persona_exists(guild_id, name)
        ):
            raise InvalidSetting(f"no persona named “{name}”; try `/persona list`.")
        _check_money("The default budget", out.get("budget_default_micros"))
        for role, limit in out.get("role_budgets") or ():
            _check_money(f"The budget of role {role}", limit)
        soft = out.get("critic_soft_runtime_s")
        if soft is not None and soft <= 0:
            raise InvalidSetting("The critic's soft runtime must be more than 0 seconds.")
        steps = out.get("critic_soft_steps")
        if steps is not None and steps < 1:
            raise InvalidSetting("The critic's soft step limit must be at least 1.")
        hard = out.get("critic_hard_runtime_s")
        if hard is not None:
            current = await self.guild_settings.guild(guild_id)
            soft_now = soft if "critic_soft_runtime_s" in out else current.critic_soft_runtime_s
            if hard <= 0 or (soft_now is not None and hard < soft_now):
                raise InvalidSetting(
                    "The critic's hard limit must be more than 0 seconds and at least its "
                    "soft runtime."
                )
        return out

    async def configure(self, actor: Caller, guild_id: str, **changes: Any) -> GuildConfig:
        """Change some of a guild's settings (None returns one to the deployment's)."""
        if not changes:
            return await self.guild_settings.guild(guild_id)
        checked = await self._validate(guild_id, changes)
        before = await self.guild_settings.guild(guild_id)
        after = await self.guild_settings.update_guild(guild_id, **checked)
        await self.log.record(
            action="config.set",
            actor_id=actor.user_id,
            actor_name=actor.display_name,
            guild_id=guild_id,
            detail={
                "changes": {
                    name: {
                        "from": _plain(getattr(before, name)),
                        "to": _plain(getattr(after, name)),
                    }
                    for name in checked
                }
            },
        )
        return after

    async def answer_in(
        self,
        actor: Caller,
        guild_id: str,
        *,
        add: bool,
        channel_id: str | None = None,
        category_id: str | None = None,
    ) -> GuildConfig:
        """Add a channel or category to where coterie answers (or remove it)."""
        config = await self.guild_settings.guild(guild_id)
        channels, categories = list(config.answer_channels), list(config.answer_categories)
        for ids, new in ((channels, channel_id), (categories, category_id)):
            if new is None:
                continue
            if add and new not in ids:
                ids.append(new)
            elif not add and new in ids:
                ids.remove(new)
        return await self.configure(
            actor, guild_id, answer_channels=tuple(channels), answer_categories=tuple(categories)
        )

    async def answer_everywhere(self, actor: Caller, guild_id: str) -> GuildConfig:
        return await self.configure(actor, guild_id, answer_channels=(), answer_categories=())

    async def set_role_budget(
        self, actor: Caller, guild_id: str, role_id: str, limit_micros: int | None
    ) -> GuildConfig:
        config = await self.guild_settings.guild(guild_id)
        budgets = dict(config.role_budgets)
        if limit_micros is None:
            budgets.pop(role_id, None)
        else:
            budgets[role_id] = limit_micros
        return await self.configure(actor, guild_id, role_budgets=tuple(sorted(budgets.items())))

    # --- budgets ----------------------------------------------------------------------

    async def set_limit(
        self, actor: Caller, user_id: str, limit_micros: int | None, *, guild_id: str | None
    ) -> None:
        """A member's own 7-day limit (None: back to the guild's or deployment's)."""
        _check_money("The limit", limit_micros)
        await self.budget.set_limit(user_id, limit_micros)
        await self.log.record(
            action="budget.set",
            actor_id=actor.user_id,
            actor_name=actor.display_name,
            guild_id=guild_id,
            target_id=user_id,
            detail={"limit_micros": limit_micros},
        )

    async def grant(
        self,
        actor: Caller,
        user_id: str,
        amount_micros: int,
        *,
        reason: str,
        guild_id: str | None,
    ) -> None:
        """A one-off addition to the member's limit, for one window (7 days)."""
        if amount_micros <= 0:
            raise InvalidSetting("A grant must be more than $0.")
        _check_money("A grant", amount_micros)
        reason = " ".join(reason.split())[:200]
        await self.budget.grant(user_id, amount_micros, granted_by=actor.user_id, note=reason)
        await self.log.record(
            action="budget.grant",
            actor_id=actor.user_id,
            actor_name=actor.display_name,
            guild_id=guild_id,
            target_id=user_id,
            detail={"amount_micros": amount_micros, "reason": reason},
        )

    # --- the admin log --------------------------------------------------------------

    async def actions(
        self, guild_id: str | None, *, limit: int = 20, cursor: str | None = None
    ) -> AdminPage:
        """``/audit actions``: the guild's admin actions, newest first, a page at a time."""
        return await self.log.list(guild_id=guild_id, limit=limit, cursor=cursor)

    # --- anything else -------------------------------------------------------------

    async def record(
        self,
        actor: Caller,
        action: str,
        *,
        guild_id: str | None,
        target_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AdminEntry:
        """An admin action that changes nothing here (an export, a forget)."""
        return await self.log.record(
            action=action,
            actor_id=actor.user_id,
            actor_name=actor.display_name,
            guild_id=guild_id,
            target_id=target_id,
            detail=detail,
        )


def describe(entry: AdminEntry) -> str:
    """One line for people: what the action did."""
    d = entry.detail
    if entry.action == "config.set":
        parts = [
            f"{k}: {v.get('from')!s} → {v.get('to')!s}" for k, v in d.get("changes", {}).items()
        ]
        return "; ".join(parts) or "no change"
    if entry.action == "budget.set":
        limit = d.get("limit_micros")
        return "limit back to the default" if limit is None else f"limit {format_usd(limit, 2)}"
    if entry.action == "budget.grant":
        return f"grant {format_usd(int(d.get('amount_micros', 0)), 2)}: {d.get('reason', '')}"
    if entry.action == "audit.export":
        return f"{d.get('runs', '?')} run(s) exported"
    return ", ".join(f"{k}={v}" for k, v in d.items())
