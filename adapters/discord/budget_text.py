"""Money lines a member sees on Discord: the budget refusal and the cost footer.

One wording wherever it is shown: the bot's error renderer (a slash command refused by
the budget) and the streamed answer of a refused run both use :func:`budget_refusal`
(a run stopped part-way by its budget, :func:`budget_exhausted`);
answers in a guild with ``/config set cost_footer:True`` end with :func:`cost_footer`.
"""

from __future__ import annotations

from datetime import datetime

from executor.budget import format_usd
from executor.errors import BudgetDetails

__all__ = ["budget_exhausted", "budget_refusal", "cost_footer", "discord_time"]


def discord_time(when: datetime, style: str = "R") -> str:
    """A Discord timestamp (``<t:unix:R>``): each reader sees it in their own zone."""
    return f"<t:{int(when.timestamp())}:{style}>"


_ASK_FOR_MORE = (
    " To ask for more, ask a server admin (Manage Server): they can give you a "
    "one-off grant with `/budget grant` or raise your limit with `/budget set`. "
    "`/budget me` shows where you stand."
)


def _frees(d: BudgetDetails) -> str:
    if not d.frees_at:
        return ""
    return f" Enough frees up {discord_time(d.frees_at)} ({discord_time(d.frees_at, 'f')})."


def budget_refusal(d: BudgetDetails) -> str:
    """Why the run was refused, when it frees up, and how to ask for more."""
    return (
        f"That would take you past your 7-day budget of {format_usd(d.limit_micros, 2)} "
        f"(spent {format_usd(d.spent_micros, 2)}, this run ~{format_usd(d.estimate_micros)})."
        f"{_frees(d)}{_ASK_FOR_MORE}"
    )


def budget_exhausted(reason: str, d: BudgetDetails) -> str:
    """Why a run stopped part-way for its budget (the answer so far stays above it),
    when it frees up, and how to ask for more."""
    return (
        f"Stopped: {reason}; your 7-day budget is {format_usd(d.limit_micros, 2)} "
        f"(spent {format_usd(d.spent_micros, 2)})."
        f"{_frees(d)}{_ASK_FOR_MORE}"
    )


def cost_footer(cost_micros: int, model: str | None, seconds: float | None) -> str:
    """``$0.0042 · claude-sonnet-4-6 · 3.1 s`` (the model without its provider)."""
    parts = [format_usd(cost_micros)]
    if model:
        parts.append(model.split(":", 1)[-1])
    if seconds is not None:
        parts.append(f"{seconds:.1f} s")
    return " · ".join(parts)
