"""What ``/audit``, ``/budget`` and ``/config`` show: embeds built from plain rows.

The rows come from storage (audit runs and their children, budget statuses, admin
actions) through the services, which name what is read of them as protocols
(:class:`~adapters.services.audit.RunRow`), so the Discord edge never imports SQL.
Money is shown with :func:`executor.budget.format_usd`,
times as Discord timestamps (each reader sees their own zone), members as mentions
that never ping (every send here passes ``AllowedMentions.none()``).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any, Protocol

import discord

from adapters.discord.budget_text import discord_time
from adapters.discord.ui import EMBED_DESCRIPTION_LIMIT, embed_pages, send_paginated
from adapters.services.admin import AdminEntry, describe
from adapters.services.audit import RunDetailLike, RunRow
from adapters.services.budgets import GrantRow, MemberBudget, MemberSpendRow
from adapters.services.ports import GuildConfig
from executor.budget import BudgetStatus, format_usd

__all__ = [
    "COLOUR",
    "RunRow",
    "actions_page",
    "budget_embed",
    "config_embed",
    "delivery_text",
    "member_budget_embed",
    "output_file",
    "run_detail_pages",
    "run_line",
    "runs_page",
    "send_embeds",
    "top_embed",
]

COLOUR = discord.Colour.dark_teal()
EMBEDS_PER_MESSAGE = 10
EMBED_TOTAL_LIMIT = 6000
OUTPUT_INLINE = 900  # longer outputs go in an attachment
_NO_PINGS = discord.AllowedMentions.none()


def delivery_text(delivered: bool | None, error: str | None) -> str:
    """Whether the answer reached Discord, for ``/audit show`` and the CLI alike."""
    if delivered is None:
        return "not recorded"
    if delivered:
        return "yes"
    return f"no: {error}" if error else "no"


class StepRow(Protocol):
    step: int
    model: str
    stop_reason: str
    input_tokens: int
    output_tokens: int
    cost_micros: int
    tool_calls: int


class AttemptRow(Protocol):
    step: int
    model: str
    latency_ms: float
    error: str | None
    error_kind: str | None


class ToolRow(Protocol):
    step: int
    name: str
    arguments: str
    result_excerpt: str
    is_error: bool
    duration_ms: float


class EventRow(Protocol):
    step: int
    kind: str
    cost_micros: int
    data: dict[str, Any]


_STATUS_ICON = {
    "ok": "✅",
    "running": "⏳",
    "error": "❌",
    "budget_denied": "💸",
    "budget_exhausted": "💸",
    "killed": "🛑",
    "timeout": "⌛",
    "cancelled": "⏹️",
    "refused": "🚫",
    "interrupted": "⚡",
}


def _member(user_id: str, name: str = "") -> str:
    if user_id.isdigit():
        return f"<@{user_id}>"
    return name or user_id  # console, forgotten, ...


def _duration(run: RunRow) -> str:
    if run.ended_at is None:
        return "running"
    return f"{(run.ended_at - run.started_at).total_seconds():.1f} s"


def _model(name: str | None) -> str:
    return name.split(":", 1)[-1] if name else "—"


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _code(text: str) -> str:
    return text.replace("`", "ˋ")


def run_line(run: RunRow) -> str:
    """One run in ``/audit list``: when, member, persona or skill, status, model,
    cost, duration, short id."""
    what = f"skill **{run.skill}**" if run.skill else f"**{run.persona or run.agent}**"
    icon = _STATUS_ICON.get(run.status, "•")
    return (
        f"{icon} {discord_time(run.started_at, 'f')} · {_member(run.user_id, run.user_name)} · "
        f"{what} · `{run.status}`\n"
        f"-# {_model(run.model)} · {format_usd(run.cost_micros)} · {_duration(run)} · "
        f"`{run.run_id[:12]}` · {run.trigger}"
    )


def runs_page(runs: Sequence[RunRow], *, title: str, filters: str = "") -> discord.Embed:
    embed = discord.Embed(
        title=title,
        description="\n".join(run_line(r) for r in runs) or "No runs.",
        colour=COLOUR,
    )
    if filters:
        embed.set_footer(text=_fit(filters, 200))
    return embed


def _event_text(e: EventRow) -> str:
    d = e.data or {}
    if e.kind == "critic_verdict":
        return f"critic **{d.get('verdict', '?')}** ({d.get('state', '')}): {d.get('reason', '')}"
    if e.kind == "compaction":
        return (
            f"compaction {d.get('tokens_before', '?')} → {d.get('tokens_after', '?')} tokens "
            f"({_model(d.get('model'))}, {format_usd(e.cost_micros)})"
        )
    if e.kind == "approval":
        verdict = "approved" if d.get("approved") else "denied"
        return f"approval of `{d.get('tool', '?')}`: {verdict} {d.get('reason', '')}".rstrip()
    if e.kind == "tool_charge":
        return f"`{d.get('tool', '?')}` charged {format_usd(e.cost_micros)}: {d.get('what', '')}"
    if e.kind == "sources":
        return _sources_text(d)
    return f"{e.kind} {_fit(json.dumps(d, ensure_ascii=False, default=str), 300)}"


def _sources_text(d: dict[str, Any]) -> str:
    """The run's web sources (what it read, what its searches gave) and the links its
    answer gave that were neither."""

    def links(urls: Any, limit: int = 8) -> str:
        items = [str(u) for u in urls or []]
        shown = ", ".join(f"<{u}>" for u in items[:limit])
        return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")

    lines = ["sources"]
    if d.get("fetched"):
        lines.append(f"  read: {links(d['fetched'])}")
    if d.get("searched"):
        lines.append(f"  found by search: {links(d['searched'])}")
    if d.get("unverified"):
        lines.append(f"  ⚠ cited but unverified: {links(d['unverified'])}")
    return "\n".join(lines) if len(lines) > 1 else "sources: none"


def run_detail_pages(
    detail: RunDetailLike,
    *,
    budget_before: int | None = None,
    budget_after: int | None = None,
    limit_micros: int | None = None,
) -> list[discord.Embed]:
    """``/audit show``: the summary, then every step with its model attempts
    (failover visible), tool calls (redacted arguments, duration, error), and the
    compaction, critic and approval events, in order."""
    r: RunRow = detail.run
    head = discord.Embed(
        title=f"Run {r.run_id[:12]} · {r.status}",
        colour=discord.Colour.red() if r.status not in ("ok", "running") else COLOUR,
    )
    where = f"<#{r.channel_id}>" if r.channel_id and r.channel_id.isdigit() else "a DM or console"
    head.add_field(name="Trigger", value=f"{r.trigger} in {where}")
    head.add_field(name="Member", value=_member(r.user_id, r.user_name))
    who = r.persona or r.agent
    # Why getattr: the skill's version is recorded where the audit has the column.
    version = getattr(r, "skill_version", None)
    skill = f" · skill **{r.skill}**" + (f" v{version}" if version else "") if r.skill else ""
    agent = f"persona **{who}**{skill}"
    head.add_field(name="Agent", value=agent)
    head.add_field(name="Tier / model", value=f"`{r.tier}` · {_model(r.model)}")
    head.add_field(
        name="When",
        value=f"{discord_time(r.started_at, 'f')} · {_duration(r)}",
    )
    head.add_field(
        name="Tokens / cost",
        value=(
            f"{r.input_tokens:,} in · {r.output_tokens:,} out · {r.steps} step(s)\n"
            f"{format_usd(r.cost_micros)} (reserved {format_usd(r.estimate_micros)})"
        ),
    )
    if budget_before is not None and budget_after is not None:
        of = f" (limit {format_usd(limit_micros, 2)} now)" if limit_micros is not None else ""
        head.add_field(
            name="Member's 7-day spend",
            value=f"{format_usd(budget_before)} before → {format_usd(budget_after)} after{of}",
            inline=False,
        )
    if r.parent_run_id:
        head.add_field(name="Parent run", value=f"`{r.parent_run_id[:12]}`")
    if r.resumed_from:
        head.add_field(name="Resumes run", value=f"`{r.resumed_from[:12]}`")
    head.add_field(
        name="Answer delivered", value=_fit(delivery_text(r.delivered, r.delivery_error), 300)
    )
    if r.error:
        head.add_field(
            name=f"Error ({r.error_kind or '?'})", value=_fit(r.error, 1000), inline=False
        )
    if r.prompt_excerpt:
        head.add_field(name="Prompt", value=_fit(r.prompt_excerpt, 1000), inline=False)
    if r.output_excerpt:
        shown = _fit(r.output_excerpt, OUTPUT_INLINE)
        more = " (whole output attached)" if len(r.output_excerpt) > OUTPUT_INLINE else ""
        head.add_field(name=f"Output{more}", value=shown, inline=False)
    head.set_footer(text=r.run_id)

    lines: list[str] = []
    steps = {s.step: s for s in detail.steps}
    numbers = sorted(
        {s.step for s in detail.steps}
        | {a.step for a in detail.attempts}
        | {t.step for t in detail.tool_calls}
        | {e.step for e in detail.events}
    )
    for n in numbers:
        s = steps.get(n)
        if s is not None:
            lines.append(
                f"**Step {n}** · {_model(s.model)} · {s.stop_reason} · {s.input_tokens:,} in / "
                f"{s.output_tokens:,} out · {format_usd(s.cost_micros)}"
            )
        else:
            lines.append(f"**Step {n}**")
        for a in (a for a in detail.attempts if a.step == n):
            state = f"❌ {a.error_kind or 'error'}: {_fit(a.error or '', 200)}" if a.error else "ok"
            lines.append(f"- model `{_model(a.model)}` {a.latency_ms:.0f} ms · {state}")
        for t in (t for t in detail.tool_calls if t.step == n):
            state = "❌ error" if t.is_error else "ok"
            lines.append(
                f"- tool `{t.name}`(`{_code(_fit(t.arguments, 300))}`) · {t.duration_ms:.0f} ms · "
                f"{state}"
            )
            if t.result_excerpt:
                lines.append(f"  -# → {_fit(' '.join(t.result_excerpt.split()), 200)}")
        for e in (e for e in detail.events if e.step == n and e.kind != "model_request"):
            lines.append(f"- {_event_text(e)}")
    pages = [head]
    if lines:
        pages += embed_pages("\n".join(lines), title="Steps", colour=COLOUR)
    return pages


def output_file(run: RunRow) -> discord.File | None:
    """The whole output excerpt as ``output.txt`` when it is too long to show inline."""
    if len(run.output_excerpt) <= OUTPUT_INLINE:
        return None
    return discord.File(
        io.BytesIO(run.output_excerpt.encode()),
        filename=f"run-{run.run_id[:12]}-output.txt",
        description="The run's output",
    )


async def send_embeds(
    interaction: discord.Interaction[Any],
    embeds: Sequence[discord.Embed],
    *,
    ephemeral: bool = True,
    files: Sequence[discord.File] = (),
) -> None:
    """All in one message when they fit (10 embeds, 6,000 characters), else pages."""
    total = sum(len(e) for e in embeds)
    if len(embeds) <= EMBEDS_PER_MESSAGE and total <= EMBED_TOTAL_LIMIT:
        fields: dict[str, Any] = {"embeds": list(embeds), "allowed_mentions": _NO_PINGS}
        if files:
            fields["files"] = list(files)
        if interaction.response.is_done():
            await interaction.followup.send(ephemeral=ephemeral, **fields)
        else:
            await interaction.response.send_message(ephemeral=ephemeral, **fields)
        return
    await send_paginated(interaction, list(embeds), ephemeral=ephemeral)
    if files:
        await interaction.followup.send(
            files=list(files), ephemeral=ephemeral, allowed_mentions=_NO_PINGS
        )


# --- budgets ---------------------------------------------------------------------------


def _status_lines(s: BudgetStatus) -> list[str]:
    base = "own limit" if s.overridden else "default"
    lines = [
        f"Spent in the last 7 days: **{format_usd(s.spent_micros)}**",
        f"Reserved by runs now: {format_usd(s.reserved_micros)}",
        f"Limit: **{format_usd(s.limit_micros, 2)}** ({format_usd(s.base_limit_micros, 2)} {base}"
        + (f" + {format_usd(s.granted_micros, 2)} granted)" if s.granted_micros else ")"),
        f"Left: **{format_usd(max(s.available_micros, 0))}**",
    ]
    return lines


def member_budget_embed(view: MemberBudget) -> discord.Embed:
    """``/budget me``."""
    lines = _status_lines(view.status)
    typical = format_usd(view.typical_run_micros)
    if view.affordable_now:
        lines.append(f"That is about **{view.runs_left}** more typical runs ({typical} each).")
    elif view.affordable_at is not None:
        lines.append(
            f"A typical run ({typical}) fits again {discord_time(view.affordable_at)}, "
            f"when older spend rolls out of the window "
            f"({discord_time(view.affordable_at, 'f')})."
        )
    else:
        lines.append(
            f"A typical run ({typical}) does not fit even once older spend rolls out: "
            "ask a server admin for a grant (`/budget grant`)."
        )
    embed = discord.Embed(title="Your coterie budget", description="\n".join(lines), colour=COLOUR)
    embed.set_footer(text=f"{view.used_share:.0%} used · a rolling 7-day window")
    return embed


def budget_embed(
    who: str,
    status: BudgetStatus,
    *,
    grants: Sequence[GrantRow] = (),
    title: str | None = None,
) -> discord.Embed:
    """``/budget show``: a member's budget and their active grants."""
    lines = [who, *_status_lines(status)]
    for g in grants:
        by = f" by {_member(g.granted_by)}" if g.granted_by else ""
        note = f": {g.note}" if g.note else ""
        lines.append(
            f"-# grant {format_usd(g.amount_micros, 2)}{by}, until "
            f"{discord_time(g.expires_at, 'f')}{note}"
        )
    return discord.Embed(
        title=title or "Budget", description=_fit("\n".join(lines), 4000), colour=COLOUR
    )


def top_embed(
    rows: Sequence[MemberSpendRow], statuses: dict[str, BudgetStatus], *, days: int
) -> discord.Embed:
    """``/budget top``: members by spend here over ``days``, with their limit now."""
    lines = []
    for i, row in enumerate(rows, 1):
        s = statuses.get(row.user_id)
        limit = f" · limit {format_usd(s.limit_micros, 2)}" if s is not None else ""
        lines.append(
            f"{i}. {_member(row.user_id, row.user_name)} · **{format_usd(row.cost_micros)}** "
            f"in {row.runs} run(s){limit}"
        )
    return discord.Embed(
        title=f"Top spenders, last {days} day{'s' if days != 1 else ''}",
        description="\n".join(lines) or "Nobody spent anything.",
        colour=COLOUR,
    )


# --- config and admin actions ------------------------------------------------------


def config_embed(
    config: GuildConfig, *, deployment: dict[str, str], guild_name: str = ""
) -> discord.Embed:
    """``/config show``: each setting, and the deployment's value where the guild has none.

    ``deployment``: the deployment's defaults for display (allow_dms, default_tier,
    budget, critic_soft_runtime_s, critic_soft_steps, critic_hard_runtime_s).
    """

    def or_default(value: Any, name: str, shown: str | None = None) -> str:
        if value is None:
            return f"*deployment: {deployment.get(name, '—')}*"
        return shown if shown is not None else str(value)

    c = config
    if c.answers_everywhere:
        where = "every channel"
    else:
        where = " ".join(
            [*(f"<#{ch}>" for ch in c.answer_channels), *(f"<#{g}>" for g in c.answer_categories)]
        )
    roles = (
        ", ".join(f"<@&{role}> {format_usd(limit, 2)}" for role, limit in c.role_budgets) or "none"
    )
    embed = discord.Embed(title=f"coterie settings {guild_name}".strip(), colour=COLOUR)
    embed.add_field(name="Answers in", value=_fit(where, 1024), inline=False)
    embed.add_field(
        name="DMs",
        value=or_default(c.allow_dms, "allow_dms", "on" if c.allow_dms else "off"),
    )
    embed.add_field(
        name="Admin channel",
        value=f"<#{c.admin_channel_id}>" if c.admin_channel_id else "*none: logged only*",
    )
    embed.add_field(name="Default persona", value=c.default_persona or "*deployment's*")
    embed.add_field(name="Default tier", value=or_default(c.default_tier, "default_tier"))
    embed.add_field(name="Time zone", value=c.timezone or "*UTC*")
    embed.add_field(name="Cost footer", value="on" if c.cost_footer else "off")
    embed.add_field(
        name="Default 7-day budget",
        value=or_default(
            c.budget_default_micros,
            "budget",
            format_usd(c.budget_default_micros, 2) if c.budget_default_micros is not None else "",
        ),
    )
    embed.add_field(name="Role budgets", value=_fit(roles, 1024))
    memory = "on" if c.memory_on else "off"
    if c.memory_on:
        memory += ", shared by the personas" if c.memory_shared else ", per persona"
        memory += ", each save confirmed" if c.memory_confirm else ""
    embed.add_field(name="Memory", value=memory)
    embed.add_field(
        name="Critic",
        value=(
            f"soft {or_default(c.critic_soft_runtime_s, 'critic_soft_runtime_s')} s, "
            f"{or_default(c.critic_soft_steps, 'critic_soft_steps')} steps; hard "
            f"{or_default(c.critic_hard_runtime_s, 'critic_hard_runtime_s')} s"
        ),
        inline=False,
    )
    embed.set_footer(text="/config set to change · /config reset to return one to the default")
    return embed


def actions_page(entries: Sequence[AdminEntry]) -> discord.Embed:
    lines = [
        f"{discord_time(e.at, 'f')} · {_member(e.actor_id, e.actor_name)} · `{e.action}`"
        + (f" · {_member(e.target_id)}" if e.target_id else "")
        + f"\n-# {_fit(describe(e), 300)}"
        for e in entries
    ]
    text = "\n".join(lines) or "No admin actions yet."
    return discord.Embed(
        title="Admin actions", description=_fit(text, EMBED_DESCRIPTION_LIMIT), colour=COLOUR
    )
