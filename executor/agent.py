"""What a run is: the agent (a plain description), the invocation, the result."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from executor.messages import Message, Usage
from executor.models.base import Attempt

if TYPE_CHECKING:
    from executor.models.base import Model
    from executor.ports import Checkpoint, Delivery

__all__ = [
    "Bounds",
    "Caller",
    "Invocation",
    "Privilege",
    "RunResult",
    "RunStatus",
    "RunnableAgent",
]


class Privilege(enum.IntEnum):
    """Who is asking. A tool may require at least one of these."""

    USER = 0
    MODERATOR = 1
    ADMIN = 2
    OWNER = 3


@dataclass(frozen=True, slots=True)
class Bounds:
    """Hard bounds of one run. The critic's soft limits sit inside these."""

    max_steps: int = 10
    max_runtime_s: float = 300.0
    max_output_tokens: int = 8192  # over the whole run
    max_tokens_per_response: int = 2048
    # Soft limits for the critic (None: the critic's defaults).
    soft_runtime_s: float | None = None
    soft_steps: int | None = None


@dataclass(frozen=True, slots=True)
class RunnableAgent:
    """A plain description of an agent: what a persona or a skill turns into."""

    name: str = "assistant"
    system_prompt: str = "You are a helpful assistant."
    tier: str = "standard"
    tools: tuple[str, ...] = ()
    bounds: Bounds = field(default_factory=Bounds)
    temperature: float | None = None
    # A model to use instead of resolving the tier (tests, demos, embedding).
    model: Model | None = None
    persona: str | None = None
    skill: str | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who started the run, and where."""

    user_id: str = "local"
    display_name: str = "local"
    privilege: Privilege = Privilege.USER
    guild_id: str | None = None
    channel_id: str | None = None
    roles: tuple[str, ...] = ()


@dataclass(slots=True)
class Invocation:
    """One request to run an agent."""

    messages: list[Message]
    caller: Caller = field(default_factory=Caller)
    trigger: str = "cli"  # chat, slash, schedule, console, cli
    parent_run_id: str | None = None
    delivery: Delivery | None = None
    # Set by the caller to cancel the run (status "cancelled").
    cancel: asyncio.Event | None = None
    run_id: str | None = None  # pre-assigned id; one is generated otherwise
    depth: int = 0  # dispatch depth (a skill that runs a skill ...)
    lineage: tuple[str, ...] = ()  # agent names up the call tree
    metadata: dict[str, Any] = field(default_factory=dict)
    # Continue an interrupted run from its checkpoint instead of starting from
    # ``messages``: a new run (its own id, audit row and reservation) linked to it.
    resume: Checkpoint | None = None


# Why one shared zero: a frozen Usage is never changed, only replaced.
_NO_USAGE = Usage()


class RunStatus(enum.StrEnum):
    OK = "ok"
    ERROR = "error"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    STEP_LIMIT = "step_limit"
    TOKEN_LIMIT = "token_limit"
    BUDGET_DENIED = "budget_denied"  # refused before any model call: nothing spent
    BUDGET_EXHAUSTED = "budget_exhausted"  # stopped between calls: what it had so far
    KILLED = "killed"
    REFUSED = "refused"
    INTERRUPTED = "interrupted"  # set by crash recovery, never by the loop


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """Whether a run's answer reached the place it was meant for (a Discord
    channel, a DM): what a delivery's ``finish`` returns once it has stopped trying.
    ``error`` says why not, written for an operator ("ServerDisconnectedError after
    4 tries")."""

    delivered: bool
    error: str | None = None


@dataclass(slots=True)
class RunResult:
    run_id: str
    status: RunStatus
    output: str = ""
    steps: int = 0
    usage: Usage = _NO_USAGE
    attempts: list[Attempt] = field(default_factory=list)
    error: str | None = None
    error_kind: str | None = None
    model: str | None = None  # the model that gave the last answer
    messages: list[Message] = field(default_factory=list)
    note: str | None = None  # why a run ended short, for the person who asked
    details: dict[str, Any] = field(default_factory=dict)
    # A failure the member cannot be told about in detail: the short reference the
    # note gives them and the log line carries ("ref 3FA9C1").
    error_ref: str | None = None
    # What the delivery reported after ``finish`` (None: nothing was delivered, or the
    # delivery does not say). A run can be ``ok`` and still not reach its member.
    delivery: DeliveryReport | None = None

    @property
    def ok(self) -> bool:
        return self.status is RunStatus.OK

    @property
    def cost_micros(self) -> int:
        return self.usage.cost_micros
