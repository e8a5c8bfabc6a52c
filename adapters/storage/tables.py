"""The host's tables: guild and channel settings, thread bindings, the audit trail, budgets
(and their warnings), admin actions, the processes on the database (instances and
their leases), run checkpoints (and their Resume offers), and tool calls waiting for
approval.

Discord ids (snowflakes) are strings. Money is integer micro-dollars. Every time is
stored in UTC and read back timezone-aware on SQLite and PostgreSQL alike
(sqlmodel's ``UTCDateTime``, its default for ``datetime`` fields).

Budgets are per **user id across guilds** (a person has one 7-day allowance, not one
per server they share with the bot); the operator's console runs use the user id
from ``settings.operator_user_id`` ("console").
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, ForeignKey, Index, false
from sqlmodel import Field, SQLModel

from executor.ports import utcnow

__all__ = [
    "AdminAction",
    "ApprovalRow",
    "AuditEventRow",
    "AuditModelAttempt",
    "AuditRun",
    "AuditStep",
    "AuditToolCall",
    "BudgetAlert",
    "BudgetGrant",
    "BudgetLedgerEntry",
    "BudgetMember",
    "BudgetReservationRow",
    "ChannelSettings",
    "GuildSettings",
    "Instance",
    "Lease",
    "McpToolPin",
    "RunCheckpoint",
    "ThreadBinding",
    "utcnow",
]


def _when(*, nullable: bool = False) -> Any:
    if nullable:
        return Field(default=None, nullable=True)
    return Field(default_factory=utcnow, nullable=False)


# --- guild settings and thread bindings ---------------------------------------------


class GuildSettings(SQLModel, table=True):
    """One guild's ``/config`` (see ``adapters.services.ports.GuildConfig``); NULL (or
    an empty list) means the deployment's default."""

    __tablename__ = "guild_settings"

    guild_id: str = Field(primary_key=True, max_length=32)
    default_persona: str | None = Field(default=None, max_length=64)
    admin_channel_id: str | None = Field(default=None, max_length=32)
    # Channel and category ids coterie answers in (both empty: every channel).
    answer_channels: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]")
    )
    answer_categories: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]")
    )
    allow_dms: bool | None = None
    default_tier: str | None = Field(default=None, max_length=32)
    timezone: str | None = Field(default=None, max_length=64)
    budget_default_micros: int | None = Field(default=None, sa_type=BigInteger)
    # {role id: limit in micro-dollars}
    role_budgets: dict[str, int] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, server_default="{}")
    )
    critic_soft_runtime_s: float | None = None
    critic_soft_steps: int | None = None
    critic_hard_runtime_s: float | None = None
    cost_footer: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    # Memory (issue 16): on unless turned off; notes shared across the guild's personas;
    # each save confirmed by the member with a button.
    memory: bool | None = None
    memory_shared: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    memory_confirm: bool = Field(default=False, sa_column_kwargs={"server_default": false()})


class ChannelSettings(SQLModel, table=True):
    __tablename__ = "channel_settings"

    channel_id: str = Field(primary_key=True, max_length=32)
    guild_id: str = Field(max_length=32, index=True)
    default_persona: str | None = Field(default=None, max_length=64)


class ThreadBinding(SQLModel, table=True):
    """A Discord thread in which one persona answers every message."""

    __tablename__ = "thread_bindings"

    thread_id: str = Field(primary_key=True, max_length=32)
    guild_id: str = Field(max_length=32, index=True)
    channel_id: str = Field(max_length=32)  # the parent channel
    persona: str = Field(max_length=64)
    created_by: str = Field(max_length=32)
    created_at: datetime = _when()


# --- audit -----------------------------------------------------------------------------


class AuditRun(SQLModel, table=True):
    """One run, a row from the moment it starts (status ``running``) to its end."""

    __tablename__ = "audit_runs"
    __table_args__ = (
        Index("ix_audit_runs_started", "started_at", "run_id"),
        Index("ix_audit_runs_user_started", "user_id", "started_at"),
        Index("ix_audit_runs_guild_started", "guild_id", "started_at"),
        Index("ix_audit_runs_persona_started", "persona", "started_at"),
        Index("ix_audit_runs_skill_started", "skill", "started_at"),
        Index("ix_audit_runs_status", "status"),
    )

    run_id: str = Field(primary_key=True, max_length=64)
    trigger: str = Field(max_length=16)  # chat, slash, schedule, console, cli
    user_id: str = Field(max_length=64)
    user_name: str = Field(default="", max_length=100)
    guild_id: str | None = Field(default=None, max_length=32)
    channel_id: str | None = Field(default=None, max_length=32)
    agent: str = Field(default="", max_length=100)
    persona: str | None = Field(default=None, max_length=64)
    skill: str | None = Field(default=None, max_length=100)
    skill_version: int | None = None  # the version of ``skill`` that ran
    parent_run_id: str | None = Field(default=None, max_length=64, index=True)
    tier: str = Field(default="", max_length=32)
    model: str | None = Field(default=None, max_length=128)  # the model of the last answer
    status: str = Field(default="running", max_length=16)
    started_at: datetime = _when()
    ended_at: datetime | None = _when(nullable=True)
    steps: int = 0
    input_tokens: int = Field(default=0, sa_type=BigInteger)
    output_tokens: int = Field(default=0, sa_type=BigInteger)
    cost_micros: int = Field(default=0, sa_type=BigInteger)
    # What the budget reserved for this run; crash recovery settles it.
    estimate_micros: int = Field(default=0, sa_type=BigInteger)
    prompt_excerpt: str = Field(default="")
    output_excerpt: str = Field(default="")
    error: str | None = None
    error_kind: str | None = Field(default=None, max_length=64)
    note: str | None = None
    # Did the answer reach Discord? None: not known (no delivery, the run is still
    # going, or the process stopped first). ``delivery_error`` says why not.
    delivered: bool | None = None
    delivery_error: str | None = Field(default=None, max_length=300)
    # The instance (``instances.id``) whose process runs it: crash recovery closes a
    # run only once its owner's lease has expired. None: written before instances
    # existed, or by a process that registered none.
    owner: str | None = Field(default=None, max_length=32)
    # The interrupted run this one continues (its member pressed Resume).
    resumed_from: str | None = Field(default=None, max_length=64)


def _run_fk() -> Any:
    return Field(
        sa_column_args=[ForeignKey("audit_runs.run_id", ondelete="CASCADE")],
        max_length=64,
        index=True,
    )


class AuditStep(SQLModel, table=True):
    __tablename__ = "audit_steps"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = _run_fk()
    step: int
    model: str = Field(default="", max_length=128)
    stop_reason: str = Field(default="", max_length=32)
    input_tokens: int = Field(default=0, sa_type=BigInteger)
    output_tokens: int = Field(default=0, sa_type=BigInteger)
    cost_micros: int = Field(default=0, sa_type=BigInteger)
    tool_calls: int = 0
    text_excerpt: str = Field(default="")
    at: datetime = _when()


class AuditModelAttempt(SQLModel, table=True):
    """One candidate model's try at one step (failover records several)."""

    __tablename__ = "audit_model_attempts"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = _run_fk()
    step: int
    model: str = Field(max_length=128)
    latency_ms: float = 0.0
    error: str | None = None
    error_kind: str | None = Field(default=None, max_length=64)
    # The answering attempt's usage (0 for a failed one): what crash recovery charges.
    input_tokens: int = Field(default=0, sa_type=BigInteger)
    output_tokens: int = Field(default=0, sa_type=BigInteger)
    cost_micros: int = Field(default=0, sa_type=BigInteger)
    at: datetime = _when()


class AuditToolCall(SQLModel, table=True):
    """One tool call: arguments redacted and size-capped, a result excerpt."""

    __tablename__ = "audit_tool_calls"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = _run_fk()
    step: int
    call_id: str = Field(max_length=128)
    name: str = Field(max_length=128)
    arguments: str = Field(default="")  # JSON, redacted, capped
    result_excerpt: str = Field(default="")
    is_error: bool = False
    duration_ms: float = 0.0
    at: datetime = _when()


class AuditEventRow(SQLModel, table=True):
    """Everything else a run emits: model requests, compaction, critic verdicts, approvals."""

    __tablename__ = "audit_events"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = _run_fk()
    kind: str = Field(max_length=32)
    step: int = 0
    # Money spent by the event itself (compaction calls a model).
    cost_micros: int = Field(default=0, sa_type=BigInteger)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    at: datetime = _when()


# --- budgets ---------------------------------------------------------------------------


class BudgetMember(SQLModel, table=True):
    """One row per member: the lock row for atomic reservations, and the limit override."""

    __tablename__ = "budget_members"

    user_id: str = Field(primary_key=True, max_length=64)
    # None: the configured default applies.
    limit_micros: int | None = Field(default=None, sa_type=BigInteger)
    updated_at: datetime = _when()


class BudgetLedgerEntry(SQLModel, table=True):
    """A timestamped charge. Spend is the sum of charges in the last 7 x 24 hours."""

    __tablename__ = "budget_ledger"
    __table_args__ = (
        # Why: covering index; the window sum is one range scan that never reads the table.
        Index("ix_budget_ledger_user_at", "user_id", "at", "amount_micros"),
    )

    id: int | None = Field(default=None, primary_key=True)
    user_id: str = Field(max_length=64)
    at: datetime = _when()
    amount_micros: int = Field(sa_type=BigInteger)
    run_id: str | None = Field(default=None, max_length=64, index=True)
    note: str = Field(default="", max_length=200)


class BudgetReservationRow(SQLModel, table=True):
    """An open reservation: held from before a run until it is settled."""

    __tablename__ = "budget_reservations"

    id: int | None = Field(default=None, primary_key=True)
    user_id: str = Field(
        sa_column_args=[ForeignKey("budget_members.user_id")], max_length=64, index=True
    )
    run_id: str = Field(max_length=64, index=True)
    amount_micros: int = Field(sa_type=BigInteger)
    created_at: datetime = _when()
    owner: str | None = Field(default=None, max_length=32)  # as ``AuditRun.owner``


class BudgetGrant(SQLModel, table=True):
    """A one-off grant by an admin: extra allowance until it expires (7 days by default)."""

    __tablename__ = "budget_grants"
    __table_args__ = (Index("ix_budget_grants_user_expires", "user_id", "expires_at"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: str = Field(max_length=64)
    amount_micros: int = Field(sa_type=BigInteger)
    granted_by: str = Field(default="", max_length=64)
    granted_at: datetime = _when()
    expires_at: datetime = _when()
    note: str = Field(default="", max_length=200)


class BudgetAlert(SQLModel, table=True):
    """A budget warning DM sent to a member: at most one per threshold per crossing.

    The row is the "sent" mark (it survives restarts); it is deleted once the member's
    spend is back under the threshold (spend rolled out of the window, or the limit
    grew), so the next crossing warns again.
    """

    __tablename__ = "budget_alerts"

    user_id: str = Field(primary_key=True, max_length=64)
    threshold_pct: int = Field(primary_key=True)
    sent_at: datetime = _when()


# --- admin actions ---------------------------------------------------------------------


class AdminAction(SQLModel, table=True):
    """Who changed what: every ``/config`` change, budget limit, grant, export, forget.

    ``detail`` holds the action's values (the settings before and after, the limit,
    the amount and reason); never a member's id other than ``target_id``.
    """

    __tablename__ = "admin_actions"
    __table_args__ = (Index("ix_admin_actions_guild_at", "guild_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _when()
    guild_id: str | None = Field(default=None, max_length=32)
    actor_id: str = Field(max_length=64, index=True)
    actor_name: str = Field(default="", max_length=100)
    action: str = Field(max_length=32)  # config.set, budget.set, budget.grant, audit.export, ...
    target_id: str | None = Field(default=None, max_length=64, index=True)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


# --- MCP servers ---------------------------------------------------------------------------


class McpToolPin(SQLModel, table=True):
    """One MCP tool an operator accepted (``coterie mcp accept``): what the model is shown
    of it, and the hash the server's listing must keep for the tool to stay on."""

    __tablename__ = "mcp_tool_pins"

    server: str = Field(primary_key=True, max_length=32)
    tool: str = Field(primary_key=True, max_length=64)
    schema_hash: str = Field(max_length=64)
    description: str = Field(default="")
    input_schema: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    accepted_by: str = Field(default="", max_length=64)
    accepted_at: datetime = _when()
    # The server's readOnlyHint and idempotentHint as accepted: whether a resumed run
    # may call the tool again without asking (adapters.mcp.pins.ToolPin).
    read_only: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    idempotent: bool = Field(default=False, sa_column_kwargs={"server_default": false()})


# --- instances and leases ----------------------------------------------------------------


class Instance(SQLModel, table=True):
    """A coterie process on this database (``coterie run``, or a ``coterie ask`` /
    ``chat`` that runs agents), alive while ``expires_at`` is ahead: it renews that
    with each heartbeat. What it owns (runs, reservations, leases) is settled by
    another process once it has expired (:mod:`adapters.storage.instances`)."""

    __tablename__ = "instances"

    id: str = Field(primary_key=True, max_length=32)
    kind: str = Field(default="bot", max_length=16)  # bot (coterie run) or cli (ask, chat)
    host: str = Field(default="", max_length=255)
    pid: int = 0
    started_at: datetime = _when()
    heartbeat_at: datetime = _when()
    expires_at: datetime = Field(default_factory=utcnow, nullable=False, index=True)
    shard_count: int | None = None
    # What it reported at its last heartbeat: the shards it serves, its runs in flight.
    shards: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    runs: int = 0
    # Stopping: it has handed its shards over and only finishes its runs in flight; the
    # others share the shards out without it.
    draining: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    # Serves the shards pinned to it (COTERIE_SHARD_IDS): held, not shared out.
    pinned: bool = Field(default=False, sa_column_kwargs={"server_default": false()})


class Lease(SQLModel, table=True):
    """A named thing one instance holds until ``expires_at`` (renewed with its
    heartbeat): ``shard:N`` for a Discord shard, ``scheduler`` for the scheduler's
    leader. ``term`` grows by one each time the holder changes."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=32, index=True)
    term: int = Field(default=1, sa_type=BigInteger)
    acquired_at: datetime = _when()
    expires_at: datetime = Field(default_factory=utcnow, nullable=False)


# --- run checkpoints -------------------------------------------------------------------


class RunCheckpoint(SQLModel, table=True):
    """A running chat run's last completed step (``state``: JSON of the conversation,
    usage and pending tool calls; ``done``: JSON of the pending calls that finished),
    kept while it runs so that a restart can offer its member to resume it; then that
    offer: ``offer`` is None (not offered), ``offered``, ``resumed``, ``discarded`` or
    ``expired``. A decided offer keeps no conversation (``state`` and ``done`` empty).
    """

    __tablename__ = "run_checkpoints"

    run_id: str = Field(primary_key=True, max_length=64)
    user_id: str = Field(max_length=64, index=True)
    step: int = 0
    state: str = Field(default="")
    done: str = Field(default="")
    updated_at: datetime = _when()
    offer: str | None = Field(default=None, max_length=16)
    offer_expires_at: datetime | None = _when(nullable=True)
    offer_channel_id: str | None = Field(default=None, max_length=32)
    offer_message_id: str | None = Field(default=None, max_length=32)
    decided_at: datetime | None = _when(nullable=True)
    resumed_as: str | None = Field(default=None, max_length=64)


# --- approvals -------------------------------------------------------------------------


class ApprovalRow(SQLModel, table=True):
    """A tool call waiting for its member's Approve or Deny: the run that waits (and the
    instance it runs in, ``owner``), who may decide (``user_id``), until when; then the
    decision (``approved``, ``denied``; ``expired`` when nobody answered in time,
    ``cancelled`` when the run stopped waiting, ``interrupted`` when its process died),
    who decided and when. Any process may record the press; the waiting one reads it.
    ``channel_id``/``message_id``: where the question was posted, while its buttons may
    still show (cleared once a restart's clean-up has taken them off)."""

    __tablename__ = "approvals"

    id: str = Field(primary_key=True, max_length=32)
    run_id: str = Field(max_length=64, index=True)
    call_id: str = Field(max_length=128)
    tool: str = Field(max_length=128)
    user_id: str = Field(max_length=64, index=True)
    owner: str | None = Field(default=None, max_length=32)
    created_at: datetime = _when()
    expires_at: datetime = Field(default_factory=utcnow, nullable=False, index=True)
    decision: str | None = Field(default=None, max_length=16)
    decided_by: str | None = Field(default=None, max_length=64)
    decided_by_name: str | None = Field(default=None, max_length=128)
    decided_at: datetime | None = _when(nullable=True)
    channel_id: str | None = Field(default=None, max_length=32)
    message_id: str | None = Field(default=None, max_length=32)
