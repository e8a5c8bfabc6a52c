"""Events a run emits, in order, to its audit sink, its critic and its observers.

Every event carries the run id and the clock time. ``TextDeltaEvent`` is emitted
to observers only (it is noise for an audit trail); everything else reaches the
audit sink too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from executor.messages import Usage

if TYPE_CHECKING:
    from executor.agent import Caller, RunResult
    from executor.models.base import Attempt

__all__ = [
    "ApprovalEvent",
    "CompactionEvent",
    "CriticVerdictEvent",
    "ModelAttemptEvent",
    "ModelRequestEvent",
    "RunDelivered",
    "RunEvent",
    "RunFinished",
    "RunStarted",
    "SourcesEvent",
    "StepFinished",
    "TextDeltaEvent",
    "ToolCallFinished",
    "ToolCallStarted",
    "ToolChargeEvent",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Event:
    run_id: str
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted(_Event):
    agent: str
    tier: str
    trigger: str
    caller: Caller
    parent_run_id: str | None = None
    persona: str | None = None
    skill: str | None = None
    prompt_excerpt: str = ""
    estimate_micros: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    resumed_from: str | None = None  # the interrupted run this one continues


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRequestEvent(_Event):
    """A request about to be sent to the model.

    ``input_tokens`` is the request's input as :mod:`executor.tokens` counts it, and
    ``unanswered_micros`` what it costs at the run's price with no output: what the
    run is charged if the request's usage never arrives (the run is stopped, or the
    process dies, with the request in flight; the provider has billed the input).
    ``attempts_before`` is how many model attempts the run had recorded before it, so
    crash recovery can tell a request that never ended (no attempt after it). After a
    failover the same request is recorded again for the next candidate, after the
    failed candidate's attempt, before that one is asked.
    """

    step: int
    message_count: int
    input_tokens: int = 0
    unanswered_micros: int = 0
    attempts_before: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelAttemptEvent(_Event):
    """One candidate's try at one step's request (failover records several).

    ``usage`` is the answering attempt's: what a finished response cost is on its
    attempt, before the step ends, so a crash between the two still charges it. A
    failed attempt has one only when it was charged: stopped in flight, or ``billed``
    (a candidate that failed over mid-stream, recorded as it failed over).
    """

    step: int
    attempt: Attempt
    usage: Usage | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TextDeltaEvent(_Event):
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallStarted(_Event):
    step: int
    call_id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallFinished(_Event):
    step: int
    call_id: str
    name: str
    arguments: dict[str, Any]
    result: str
    is_error: bool
    duration_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolChargeEvent(_Event):
    """A tool call's own price (a keyed web search), charged to the run once the priced
    request answered (held in the reservation while it was in flight; a request that
    failed or was stopped has no such event: it was not charged)."""

    step: int
    call_id: str
    name: str
    cost_micros: int
    what: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SourcesEvent(_Event):
    """The web pages a run read and the results its searches gave, and the links of its
    answer that were neither (marked unverified in the answer)."""

    step: int
    fetched: tuple[str, ...] = ()
    searched: tuple[str, ...] = ()
    unverified: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class StepFinished(_Event):
    step: int
    model: str
    usage: Usage  # this step's
    stop_reason: str
    text_excerpt: str = ""
    tool_calls: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class CompactionEvent(_Event):
    tokens_before: int
    tokens_after: int
    model: str
    usage: Usage
    messages_summarised: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class CriticVerdictEvent(_Event):
    """A critic's verdict; ``usage`` is what its judgement (a model call) cost the run."""

    verdict: str  # continue, warn, stop, kill
    reason: str
    state: str
    step: int = 0
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalEvent(_Event):
    tool: str
    call_id: str
    approved: bool
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished(_Event):
    result: RunResult


@dataclass(frozen=True, slots=True, kw_only=True)
class RunDelivered(_Event):
    """After ``RunFinished``: whether the answer reached its member (the delivery's
    :class:`~executor.agent.DeliveryReport`). Only runs with a delivery that reports
    have one."""

    delivered: bool
    error: str | None = None


RunEvent = (
    RunStarted
    | ModelRequestEvent
    | ModelAttemptEvent
    | TextDeltaEvent
    | ToolCallStarted
    | ToolCallFinished
    | ToolChargeEvent
    | SourcesEvent
    | StepFinished
    | CompactionEvent
    | CriticVerdictEvent
    | ApprovalEvent
    | RunFinished
    | RunDelivered
)
