"""The audit trail's rows: what :class:`adapters.storage.audit_sink.SqlAuditSink`
writes for each run event, and the statements it writes them with.

A run's row is inserted when it starts (:func:`start_row`) and closed by one update
when it finishes (:func:`finish_row`, :data:`FINISH`), or marked by what its delivery
reported (:func:`delivered_row`, :data:`DELIVERED`); every other recorded event is one
child row (:func:`child_row`): a step, a model attempt, a tool call, or an
``audit_events`` row with its data as JSON. Tool arguments are stored with secrets
redacted (:func:`executor.redaction.redact`) and capped in size; results, errors and
texts as excerpts. :func:`spends` says which events record money spent or owed (the
sink writes those at once).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, update

from adapters.storage.tables import (
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
    RunDelivered,
    RunEvent,
    RunFinished,
    RunStarted,
    SourcesEvent,
    StepFinished,
    ToolCallFinished,
    ToolChargeEvent,
)
from executor.redaction import excerpt, redact

__all__ = [
    "ATTEMPTS",
    "CHILDREN",
    "DELIVERED",
    "EVENTS",
    "FINISH",
    "INSERT",
    "RUNS",
    "STEPS",
    "TOOLS",
    "child_row",
    "delivered_row",
    "finish_row",
    "placeholder_row",
    "spends",
    "start_row",
]

RUNS = AuditRun.__table__  # type: ignore[attr-defined]
STEPS = AuditStep.__table__  # type: ignore[attr-defined]
ATTEMPTS = AuditModelAttempt.__table__  # type: ignore[attr-defined]
TOOLS = AuditToolCall.__table__  # type: ignore[attr-defined]
EVENTS = AuditEventRow.__table__  # type: ignore[attr-defined]
CHILDREN = (STEPS, ATTEMPTS, TOOLS, EVENTS)
# Built once: the SQLite writer caches each statement's prepared form by identity.
INSERT = {t: insert(t) for t in (RUNS, *CHILDREN)}
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
FINISH = (
    update(RUNS)
    .where(RUNS.c.run_id == bindparam("b_run_id"))
    .values({c: bindparam(c) for c in _FINISHED_COLUMNS})
)
DELIVERED = (
    update(RUNS)
    .where(RUNS.c.run_id == bindparam("b_run_id"))
    .values(delivered=bindparam("delivered"), delivery_error=bindparam("delivery_error"))
)


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def start_row(e: RunStarted, *, owner: str | None, excerpt_chars: int) -> dict[str, Any]:
    """The run's row as it starts (status ``running``; ``owner``: the instance running it)."""
    caller = e.caller
    return {
        "run_id": e.run_id,
        "trigger": e.trigger[:16],
        "user_id": caller.user_id,
        "user_name": caller.display_name[:100],
        "guild_id": caller.guild_id,
        "channel_id": caller.channel_id,
        "agent": e.agent[:100],
        "persona": e.persona,
        "skill": e.skill,
        "skill_version": _int_or_none(e.metadata.get("skill_version")),
        "parent_run_id": e.parent_run_id,
        "resumed_from": e.resumed_from,
        "tier": e.tier[:32],
        "model": None,
        "status": "running",
        "started_at": e.at,
        "ended_at": None,
        "estimate_micros": e.estimate_micros,
        "prompt_excerpt": excerpt(e.prompt_excerpt, excerpt_chars),
        "output_excerpt": "",
        "steps": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_micros": 0,
        "error": None,
        "error_kind": None,
        "note": None,
        "owner": owner,
    }


def placeholder_row(run_id: str, at: datetime, owner: str | None) -> dict[str, Any]:
    """The row of a run the sink never saw start (it was built mid-run)."""
    return {"run_id": run_id, "trigger": "unknown", "user_id": "", "started_at": at, "owner": owner}


def finish_row(e: RunFinished, *, excerpt_chars: int) -> dict[str, Any]:
    """The run row's closing values (:data:`FINISH`'s parameters)."""
    r = e.result
    return {
        "b_run_id": e.run_id,
        "status": r.status.value,
        "ended_at": e.at,
        "steps": r.steps,
        "input_tokens": r.usage.input_tokens,
        "output_tokens": r.usage.output_tokens,
        "cost_micros": r.usage.cost_micros,
        "model": r.model[:128] if r.model else None,
        "output_excerpt": excerpt(r.output, excerpt_chars),
        "error": excerpt(r.error, excerpt_chars) if r.error else None,
        "error_kind": r.error_kind[:64] if r.error_kind else None,
        "note": excerpt(r.note, excerpt_chars) if r.note else None,
    }


def delivered_row(e: RunDelivered) -> dict[str, Any]:
    """What the run's delivery reported (:data:`DELIVERED`'s parameters)."""
    return {
        "b_run_id": e.run_id,
        "delivered": e.delivered,
        "delivery_error": excerpt(e.error, 250) if e.error else None,
    }


def child_row(
    event: RunEvent, *, excerpt_chars: int, argument_chars: int
) -> tuple[Any, dict[str, Any]]:
    """The table and row of an event recorded between a run's start and finish."""
    base: dict[str, Any] = {"run_id": event.run_id, "at": event.at}
    if isinstance(event, StepFinished):
        u = event.usage
        return STEPS, base | {
            "step": event.step,
            "model": event.model[:128],
            "stop_reason": event.stop_reason[:32],
            "input_tokens": u.input_tokens,
            "output_tokens": u.output_tokens,
            "cost_micros": u.cost_micros,
            "tool_calls": event.tool_calls,
            "text_excerpt": excerpt(event.text_excerpt, excerpt_chars),
        }
    if isinstance(event, ModelAttemptEvent):
        a = event.attempt
        spent = event.usage
        return ATTEMPTS, base | {
            "step": event.step,
            "model": a.model[:128],
            "latency_ms": a.latency_ms,
            "error": excerpt(a.error, excerpt_chars) if a.error else None,
            "error_kind": a.error_kind[:64] if a.error_kind else None,
            "input_tokens": spent.input_tokens if spent is not None else 0,
            "output_tokens": spent.output_tokens if spent is not None else 0,
            "cost_micros": spent.cost_micros if spent is not None else 0,
        }
    if isinstance(event, ToolCallFinished):
        return TOOLS, base | {
            "step": event.step,
            "call_id": event.call_id[:128],
            "name": event.name[:128],
            "arguments": redact(event.arguments, limit=argument_chars),
            "result_excerpt": excerpt(event.result, excerpt_chars),
            "is_error": event.is_error,
            "duration_ms": event.duration_ms,
        }
    kind, step, cost, data = _event_data(event)
    return EVENTS, base | {"kind": kind, "step": step, "cost_micros": cost, "data": data}


def spends(event: RunEvent) -> bool:
    """Whether the event records money spent or owed (an attempt that answered or was
    stopped, a failed one that ends its request, a request that would be charged were it
    never answered, a compaction or a judgement that cost something): written at once,
    not buffered."""
    if isinstance(event, ModelAttemptEvent):
        u = event.usage
        return event.attempt.error is not None or (
            u is not None and (u.cost_micros > 0 or u.input_tokens + u.output_tokens > 0)
        )
    if isinstance(event, ModelRequestEvent):
        return event.unanswered_micros > 0
    if isinstance(event, ToolChargeEvent):
        return event.cost_micros > 0
    return isinstance(event, CompactionEvent | CriticVerdictEvent) and event.usage.cost_micros > 0


def _event_data(event: RunEvent) -> tuple[str, int, int, dict[str, Any]]:
    if isinstance(event, ModelRequestEvent):
        # Why in the data, not the cost column: it is owed only if no answer came.
        return (
            "model_request",
            event.step,
            0,
            {
                "message_count": event.message_count,
                "input_tokens": event.input_tokens,
                "unanswered_micros": event.unanswered_micros,
                "attempts_before": event.attempts_before,
            },
        )
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
        u = event.usage
        return (
            "critic_verdict",
            event.step,
            u.cost_micros,
            {
                "verdict": event.verdict,
                "reason": excerpt(event.reason, 2000),
                "state": event.state,
                "input_tokens": u.input_tokens,
                "output_tokens": u.output_tokens,
            },
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
    if isinstance(event, ToolChargeEvent):
        return (
            "tool_charge",
            event.step,
            event.cost_micros,
            {"tool": event.name, "call_id": event.call_id, "what": excerpt(event.what, 200)},
        )
    if isinstance(event, SourcesEvent):
        return (
            "sources",
            event.step,
            0,
            {
                "fetched": [excerpt(u, 500) for u in event.fetched[:50]],
                "searched": [excerpt(u, 500) for u in event.searched[:50]],
                "unverified": [excerpt(u, 500) for u in event.unverified[:50]],
            },
        )
    return type(event).__name__.lower(), 0, 0, {}
