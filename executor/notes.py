"""The one plain sentence a run's person reads when the run was not a plain success."""

from __future__ import annotations

from executor.agent import RunResult, RunStatus
from executor.budget import format_usd, out_of_budget_advice
from executor.errors import BudgetDetails

__all__ = ["outcome_note"]


def outcome_note(result: RunResult) -> str | None:
    """One plain sentence for the person who asked, when a run was not a plain success."""
    s = result.status
    if s is RunStatus.OK:
        return None
    if s is RunStatus.BUDGET_DENIED or s is RunStatus.BUDGET_EXHAUSTED:
        budget = result.details.get("budget")
        details = budget if isinstance(budget, BudgetDetails) else None
        if s is RunStatus.BUDGET_DENIED:
            return f"{result.error}. {out_of_budget_advice(details)}"
        spent = (
            f" (spent {format_usd(details.spent_micros)} of your 7-day limit "
            f"{format_usd(details.limit_micros, 2)})"
            if details is not None
            else ""
        )
        return f"Stopped: {result.error}{spent}. {out_of_budget_advice(details)}"
    if s is RunStatus.ERROR and result.error_kind == "all_models_failed":
        tried = ", ".join(
            f"{a.model} ({a.error_kind or 'error'})" for a in result.attempts if a.error
        )
        return (
            f"No model could answer right now; tried {tried}."
            if tried
            else "No model could answer right now."
        )
    if s is RunStatus.ERROR:
        kind = result.error_kind
        if kind == "config":
            return result.error  # an operator's message naming what to set; no secret
        ref = f" (ref {result.error_ref})" if result.error_ref else ""
        if kind == "context_too_long":
            return (
                f"The conversation is too long for the model, even shortened; start a new one{ref}."
            )
        if kind == "busy":
            return f"coterie is busy right now; try again in a moment{ref}."
        if kind is None or kind == "internal":
            return f"Something went wrong on our side; the admins can find it in the log{ref}."
        # A provider's error: its text stays in the audit and the log, never here.
        return f"The model could not answer this request; the admins can find it in the log{ref}."
    if s is RunStatus.STEP_LIMIT:
        return f"Stopped: {result.error}."
    if s is RunStatus.TOKEN_LIMIT:
        return f"Stopped: {result.error}."
    if s is RunStatus.TIMEOUT:
        return f"Stopped: {result.error}."
    if s is RunStatus.KILLED:
        return f"Stopped by the critic: {result.error}."
    if s is RunStatus.CANCELLED:
        return "Cancelled."
    return result.error
