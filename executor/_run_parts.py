"""What the run loop's parts share (:mod:`executor.run`, :mod:`executor._model_calls`,
:mod:`executor._tool_calls`): the ports they read, the one way an event is recorded,
and the early end of the step loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

from executor.agent import RunStatus
from executor.events import TextDeltaEvent

if TYPE_CHECKING:
    from executor._deadlines import Deadlines
    from executor.errors import BudgetDetails
    from executor.events import RunEvent
    from executor.hooks import RunHook
    from executor.ports import (
        Approver,
        AuditSink,
        BudgetGate,
        Checkpoints,
        Clock,
        CriticWatch,
        Observer,
    )
    from executor.tools.registry import ToolRegistry

__all__ = ["RunParts", "Stopped"]

# Text deltas go to the critic and the observers, never to the audit.
_DELTA_FREE = (TextDeltaEvent,)


class Stopped(Exception):
    """Internal: the step loop ended early with a status (bound reached, budget out)."""

    def __init__(
        self, status: RunStatus, reason: str, *, budget: BudgetDetails | None = None
    ) -> None:
        self.status = status
        self.reason = reason
        self.budget = budget
        super().__init__(reason)


class RunParts:
    """The executor's ports, as :class:`~executor.run.Executor` sets them (read at each
    use: a host may swap one after construction), and how an event is recorded."""

    tools: ToolRegistry
    audit: AuditSink
    budget: BudgetGate
    approver: Approver
    clock: Clock
    observers: list[Observer]
    hooks: list[RunHook]
    checkpoints: Checkpoints
    _deadlines: Deadlines

    async def _emit(self, event: RunEvent, watch: CriticWatch | None) -> None:
        if not isinstance(event, _DELTA_FREE):
            await self.audit.record(event)
        if watch is not None:
            await watch.on_event(event)
        for obs in self.observers:
            await obs.on_event(event)
