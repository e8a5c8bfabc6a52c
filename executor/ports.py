"""How host concerns reach the kernel: small protocols, each with a default.

``Executor()`` with no ports is a complete bounded in-memory agent: audit goes to
memory, budgets are unlimited, nobody approves anything, nothing is delivered,
and time is the real clock. The Discord host implements these in ``adapters/``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from executor.events import RunEvent

if TYPE_CHECKING:
    from executor.agent import Caller, DeliveryReport, RunnableAgent, RunResult, RunStatus
    from executor.messages import Message, ToolCallPart, ToolResultPart, Usage
    from executor.spend import RunBudget

__all__ = [
    "ApprovalDecision",
    "ApprovalRequest",
    "Approver",
    "AuditSink",
    "BudgetGate",
    "Checkpoint",
    "Checkpoints",
    "Clock",
    "Critic",
    "CriticWatch",
    "Delivery",
    "DenyAllApprover",
    "Escalation",
    "Escalator",
    "ForwardingDelivery",
    "InMemoryAuditSink",
    "InMemoryCheckpoints",
    "NullDelivery",
    "NullEscalator",
    "Observer",
    "RealClock",
    "Reservation",
    "RunControl",
    "UnlimitedBudget",
    "utcnow",
]


# --- clock ---------------------------------------------------------------------


@runtime_checkable
class Clock(Protocol):
    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


def utcnow() -> datetime:
    """Now, timezone-aware, in UTC: the one spelling of it in coterie."""
    return datetime.now(UTC)


class RealClock:
    def now(self) -> datetime:
        return datetime.now(UTC)  # utcnow(), one call less: a run reads it for every event

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


# --- audit ---------------------------------------------------------------------


@runtime_checkable
class AuditSink(Protocol):
    """Receives every event of every run except text deltas, in order per run.

    ``record`` must be cheap: a durable sink buffers and writes in batches, but
    makes ``RunStarted`` durable before it returns (a run is a row from the
    moment it starts) and ``RunFinished`` durable before the run returns.
    """

    async def record(self, event: RunEvent) -> None: ...


class InMemoryAuditSink:
    """The default sink: keeps events in a list (bounded, oldest dropped first)."""

    def __init__(self, max_events: int = 100_000) -> None:
        self.events: list[RunEvent] = []
        self._max = max_events

    async def record(self, event: RunEvent) -> None:
        self.events.append(event)
        if len(self.events) > self._max:
            del self.events[: len(self.events) - self._max]

    def for_run(self, run_id: str) -> list[RunEvent]:
        return [e for e in self.events if e.run_id == run_id]


# --- budget --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reservation:
    run_id: str
    caller: Caller
    amount_micros: int
    token: Any = None  # the gate's own handle (a ledger row id, say)


@runtime_checkable
class BudgetGate(Protocol):
    """Reserve before a run, grow the reservation before each model call, settle after.

    ``reserve`` raises :class:`~executor.errors.BudgetExceeded` when the caller's
    spent + reserved + estimate would pass their limit. ``grow`` raises an open
    reservation to ``amount_micros`` as atomically as ``reserve`` takes one, refusing
    the same way when the extra (``amount_micros`` minus what it holds) would pass the
    limit (the refusal's ``estimate_micros`` is that extra; the reservation is left as
    it was); it never lowers a reservation, and returns the reservation as it now is.
    ``settle`` turns the reservation into a charge of ``cost_micros`` (the real cost,
    whether the run succeeded, failed or was cancelled) and releases the rest.
    """

    async def reserve(self, caller: Caller, run_id: str, estimate_micros: int) -> Reservation: ...

    async def grow(self, reservation: Reservation, amount_micros: int) -> Reservation: ...

    async def settle(self, reservation: Reservation, cost_micros: int) -> None: ...


class UnlimitedBudget:
    """The default gate: everything is allowed; what was settled is remembered."""

    def __init__(self) -> None:
        self.settled: dict[str, int] = {}

    async def reserve(self, caller: Caller, run_id: str, estimate_micros: int) -> Reservation:
        return Reservation(run_id=run_id, caller=caller, amount_micros=estimate_micros)

    async def grow(self, reservation: Reservation, amount_micros: int) -> Reservation:
        if amount_micros <= reservation.amount_micros:
            return reservation
        return dataclasses.replace(reservation, amount_micros=amount_micros)

    async def settle(self, reservation: Reservation, cost_micros: int) -> None:
        self.settled[reservation.run_id] = cost_micros


# --- checkpoints ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A run as it stood after its last completed step: what resuming it needs.

    ``messages`` is the conversation without the system prompt, the last model
    response included; ``pending`` are that response's tool calls (their results are
    not in ``messages``), and ``done`` the results of those known to have finished.
    ``usage`` is what the run had spent up to here, over every attempt of it.
    """

    run_id: str
    step: int
    messages: tuple[Message, ...]
    usage: Usage
    caller: Caller
    trigger: str
    agent: str
    tier: str
    persona: str | None = None
    skill: str | None = None
    parent_run_id: str | None = None
    # The run this one resumed (a resumed run is not offered again: once).
    resumed_from: str | None = None
    pending: tuple[ToolCallPart, ...] = ()
    done: tuple[ToolResultPart, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)


_CHECKPOINT_FIELDS = tuple(f.name for f in dataclasses.fields(Checkpoint))


@runtime_checkable
class Checkpoints(Protocol):
    """Where a run keeps its last completed step, so a host can resume it after a
    restart (``Invocation.resume``).

    The loop calls ``save`` before its first model call (step 0: the invocation's
    conversation) and after each model response that asked for tools, before they
    run (each save replaces the last); ``tool_done`` when a pending call that may not
    be repeated blindly finished (neither read-only nor idempotent: a read-only
    call's result comes with the next save, and a crash before it only runs it
    again); ``drop`` once the run has ended, except when its host cancelled it (a
    shutdown: the host may offer it to resume, and forgets it otherwise). A store may
    keep only the runs its host can resume (and ignore the rest); ``save`` and
    ``tool_done`` are durable when they return.
    """

    async def save(self, checkpoint: Checkpoint) -> None: ...

    async def tool_done(self, run_id: str, result: ToolResultPart) -> None: ...

    async def drop(self, run_id: str) -> None: ...


class InMemoryCheckpoints:
    """The default: each running run's last checkpoint, in memory, gone when it ends
    (one its host cancelled stays until :meth:`drop`; a process that stops takes them
    along: nothing survives to resume)."""

    def __init__(self) -> None:
        self.saved: dict[str, Checkpoint] = {}

    async def save(self, checkpoint: Checkpoint) -> None:
        self.saved[checkpoint.run_id] = checkpoint

    async def tool_done(self, run_id: str, result: ToolResultPart) -> None:
        last = self.saved.get(run_id)
        if last is not None:
            # Why not dataclasses.replace: it inspects every field on every call.
            values = {name: getattr(last, name) for name in _CHECKPOINT_FIELDS}
            values["done"] = (*last.done, result)
            self.saved[run_id] = Checkpoint(**values)

    async def drop(self, run_id: str) -> None:
        self.saved.pop(run_id, None)


# --- delivery ------------------------------------------------------------------


@runtime_checkable
class Delivery(Protocol):
    """Where a run's answer goes while it is made.

    Order: ``start`` once, then any of ``text`` / ``reset`` / ``status``, then
    ``finish`` once with the result (also for failures, to say what happened).

    What the hosts ask besides (the chat flow, the runner, the approver): ``note``,
    ``show_cost_footer``, ``queued`` and ``ask_approval``. Each has a no-op default
    (``ask_approval``'s denies), which a class gets by subclassing ``Delivery``
    explicitly (:class:`NullDelivery` does). A wrapper must not: it subclasses
    :class:`ForwardingDelivery`, which forwards every method to what it wraps, by name
    (never through ``__getattr__``), so a method added here and not forwarded there
    fails the type check instead of silently denying every approval.

    ``finish`` may return a :class:`~executor.agent.DeliveryReport` (did the answer
    reach its member?); the run loop puts it on the result and records it in the
    audit (``RunDelivered``). Returning None says nothing (the default).
    """

    async def start(self) -> None: ...

    async def text(self, delta: str) -> None: ...

    async def reset(self) -> None:
        """Discard the text delivered so far (a failover candidate starts over)."""
        ...

    async def status(self, line: str) -> None:
        """A short status line ("reading example.com", "still working: step 12, 95 s")."""
        ...

    async def finish(self, result: RunResult) -> DeliveryReport | None: ...

    def note(self, line: str) -> None:
        """A line shown at the end of the answer ("the history was cut")."""
        return None

    def show_cost_footer(self) -> None:
        """End the answer with its cost, model and time (the guild's cost footer)."""
        return None

    async def queued(self, position: int) -> None:
        """The request waits in its member's lane at ``position`` (1 = next); 0: it
        started."""
        return None

    async def ask_approval(self, request: ApprovalRequest) -> ApprovalDecision:
        """Ask the member to approve a tool call (the default: nobody can be asked)."""
        return ApprovalDecision(approved=False, reason="nobody can be asked to approve it here")


class ForwardingDelivery:
    """A delivery that hands every method of :class:`Delivery` to the one it wraps
    (``inner``); a wrapper subclasses it and overrides what it changes.

    Why not a subclass of ``Delivery``: a method forgotten here would be the port's
    no-op default (an approval denied for everyone); as it is, the type check names it
    wherever a wrapper is passed as a ``Delivery``."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Delivery) -> None:
        self._inner = inner

    async def start(self) -> None:
        await self._inner.start()

    async def text(self, delta: str) -> None:
        await self._inner.text(delta)

    async def reset(self) -> None:
        await self._inner.reset()

    async def status(self, line: str) -> None:
        await self._inner.status(line)

    async def finish(self, result: RunResult) -> DeliveryReport | None:
        return await self._inner.finish(result)

    def note(self, line: str) -> None:
        self._inner.note(line)

    def show_cost_footer(self) -> None:
        self._inner.show_cost_footer()

    async def queued(self, position: int) -> None:
        await self._inner.queued(position)

    async def ask_approval(self, request: ApprovalRequest) -> ApprovalDecision:
        return await self._inner.ask_approval(request)


class NullDelivery(Delivery):
    async def start(self) -> None:
        return None

    async def text(self, delta: str) -> None:
        return None

    async def reset(self) -> None:
        return None

    async def status(self, line: str) -> None:
        return None

    async def finish(self, result: RunResult) -> DeliveryReport | None:
        return None


# --- approval ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    run_id: str
    caller: Caller
    tool: str
    call_id: str
    arguments: dict[str, Any]
    delivery: Delivery | None = None
    # A resumed run asks again for a call that started before the interruption and may
    # have run already (a tool that is neither read-only nor idempotent).
    again: bool = False


@dataclass(frozen=True, slots=True)
class ApprovalDecision:
    approved: bool
    reason: str = ""


@runtime_checkable
class Approver(Protocol):
    async def approve(self, request: ApprovalRequest) -> ApprovalDecision: ...


class DenyAllApprover:
    """The default: with nobody to ask, a tool needing approval is denied."""

    async def approve(self, request: ApprovalRequest) -> ApprovalDecision:
        return ApprovalDecision(approved=False, reason="no approver is configured")


# --- critic --------------------------------------------------------------------


@dataclass(slots=True)
class RunControl:
    """What a critic (or any watcher) sees of a live run and may do to it."""

    run_id: str
    agent: RunnableAgent
    caller: Caller
    started_monotonic: float
    delivery: Delivery
    stop: Callable[[str, RunStatus], None]  # stop(reason, status): end the run now
    usage_fn: Callable[[], Usage] | None = None
    # Set by the run loop: record an event of the watcher's own (a verdict) to the
    # audit sink and the observers (not back to the watch).
    emit: Callable[[RunEvent], Awaitable[None]] | None = None
    # Set by the run loop: a watcher's own model calls (a judgement) are covered by the
    # run's reservation before they are made (``budget.covered``) and their cost added
    # to the run's usage (``add_usage``), which the run is charged at its end.
    budget: RunBudget | None = None
    add_usage: Callable[[Usage], None] | None = None


@runtime_checkable
class CriticWatch(Protocol):
    """One run's watcher; gets every event, is closed when the run ends."""

    async def on_event(self, event: RunEvent) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class Critic(Protocol):
    def watch(self, control: RunControl) -> CriticWatch: ...


@dataclass(frozen=True, slots=True)
class Escalation:
    """A run a watcher stopped or killed, for the people who run the bot."""

    run_id: str
    agent: str
    caller: Caller
    action: str  # "stop" or "kill"
    reason: str
    elapsed_s: float
    steps: int


@runtime_checkable
class Escalator(Protocol):
    """Where stops and kills go (the Discord host posts them to an admin channel)."""

    async def escalate(self, escalation: Escalation) -> None: ...


class NullEscalator:
    async def escalate(self, escalation: Escalation) -> None:
        return None


# --- observers -----------------------------------------------------------------


@runtime_checkable
class Observer(Protocol):
    """Anything that wants a run's events, text deltas included."""

    async def on_event(self, event: RunEvent) -> None: ...
