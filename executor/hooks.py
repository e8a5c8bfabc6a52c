"""Named hooks on the run loop, and the run's mutable state they see.

The loop stays small: the dispatch guard, compaction and anything else that
must act *inside* a run hang here instead of on ``if``s threaded through it.
Audit, budget and the critic are ports (``executor.ports``) driven by events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from executor.messages import Message, Usage

if TYPE_CHECKING:
    from executor.agent import Invocation, RunnableAgent, RunResult, RunStatus
    from executor.errors import ModelAPIError
    from executor.events import RunEvent
    from executor.models.base import Attempt, Model, ModelRequest, ModelResponse, ToolDefinition
    from executor.ports import Delivery
    from executor.spend import InputCount, RunBudget

__all__ = ["RunHook", "RunState"]

# Why one shared zero: a frozen Usage is never changed, only replaced by a sum.
_NO_USAGE = Usage()


@dataclass(slots=True)
class RunState:
    """Everything one run knows about itself, oldest message first."""

    run_id: str
    agent: RunnableAgent
    invocation: Invocation
    model: Model
    delivery: Delivery
    messages: list[Message]  # the conversation without the system prompt
    started_monotonic: float
    steps: int = 0
    usage: Usage = _NO_USAGE
    # What the run's earlier attempts spent (a resumed run): counted against its
    # bounds, charged to the attempts that spent it.
    prior: Usage = _NO_USAGE
    attempts: list[Attempt] = field(default_factory=list)
    answered_by: str | None = None
    partial_text: str = ""  # text streamed in the current step
    # Set by the run loop: a model request is in flight (False between a failover and
    # the next candidate's request: a stop then owes nothing more for it).
    requesting: bool = False
    last_text: str = ""  # the last complete assistant text
    stop_reason: str | None = None
    stop_status: RunStatus | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Set by the run loop: hooks record their own events (compaction) through it,
    # to the audit sink, the critic and the observers. None outside a run.
    emit: Callable[[RunEvent], Awaitable[None]] | None = None
    # Set by the run loop: the run's reservation, grown before each model call.
    budget: RunBudget | None = None
    # Set by the run loop: (the agent they were built for, system message, tool definitions).
    request_parts: tuple[Any, list[Message], list[ToolDefinition]] | None = None
    # Set by the run loop: counts the input of the run's requests (only what is new).
    count_input: InputCount | None = None

    def add_usage(self, usage: Usage) -> None:
        self.usage = self.usage + usage


class RunHook:
    """Override what you need; every method is a no-op by default."""

    async def before_run(self, state: RunState) -> None:
        """Raise :class:`~executor.errors.RunRefused` to refuse before any model call."""

    async def before_model_request(self, state: RunState, request: ModelRequest) -> ModelRequest:
        return request

    async def after_model_response(self, state: RunState, response: ModelResponse) -> None:
        return None

    async def on_model_error(self, state: RunState, error: ModelAPIError, attempt: int) -> bool:
        """Return True to retry the same step once more (e.g. after compacting)."""
        return False

    async def before_finish(self, state: RunState, result: RunResult) -> None:
        """The run is over, its answer not yet delivered nor recorded: a hook may amend
        ``result`` (the citation check marks links the run never saw)."""
