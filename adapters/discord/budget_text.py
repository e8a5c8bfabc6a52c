"""Money lines a member sees on Discord: the budget refusal and the cost footer.

One wording wherever it is shown: the bot's error renderer (a slash command refused by
the budget) and the streamed answer of a refused run both use :func:`budget_refusal`;
answers in a guild with ``/config set cost_footer:True`` end with :func:`cost_footer`.
"""

from __future__ import annotations

from datetime import datetime

from executor.budget import format_usd
from executor.errors import BudgetDetails

__all__ = ["budget_refusal", "cost_footer", "discord_time"]


def discord_time(when: datetime, style: str = "R") -> str:
    """A Discord timestamp (``<t:unix:R>``): each reader sees it in their own zone."""
    return f"<t:{int(when.timestamp())}:{style}>"


def budget_refusal(d: BudgetDetails) -> str:
    """Why the run was refused, when it frees up, and how to ask for more."""
    when = (
        f" Enough frees up {discord_time(d.frees_at)} ({discord_time(d.frees_at, 'f')})."
        if d.frees_at
        else ""
    )
    return (
        f"That would take you past your 7-day budget of {format_usd(d.limit_micros, 2)} "
        f"(spent {format_usd(d.spent_micros, 2)}, this run ~{format_usd(d.estimate_micros)})."
        f"{when} To ask for more, ask a server admin (Manage Server): they can give you a "
        "one-off grant with `/budget grant` or raise your limit with `/budget set`. "
        "`/budget me` shows where you stand."
    )


def cost_footer(cost_micros: int, model: str | None, seconds: float | None) -> str:
    """``$0.0042 · claude-sonnet-4-6 · 3.1 s`` (the model without its provider)."""
    parts = [format_usd(cost_micros)]
    if model:
        parts.append(model.split(":", 1)[-1])
    if seconds is not None:
        parts.append(f"{seconds:.1f} s")
    return " · ".join(parts)
