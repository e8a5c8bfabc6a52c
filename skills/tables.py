"""The skill tables: a skill, its immutable versions, and its schedules.

A skill is a named, reusable agent task within a guild ("" for deployment-wide).
Editing a skill adds a :class:`SkillVersion`; ``Skill.current_version`` points at the
one that runs. A :class:`Schedule` runs a skill by cron expression or once at a time,
on behalf of the member who created it (whose budget pays), and delivers to a channel.
Every slot a schedule reaches (ran, failed, skipped, running now) is one
:class:`ScheduleSlot` row, unique per (schedule, slot time): that constraint is what
keeps a slot from ever running twice, across processes and restarts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, ForeignKey, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

__all__ = ["Schedule", "ScheduleSlot", "Skill", "SkillVersion"]


def _now() -> datetime:
    return datetime.now(UTC)


def _when(*, nullable: bool = False) -> Any:
    if nullable:
        return Field(default=None, nullable=True)
    return Field(default_factory=_now, nullable=False)


class Skill(SQLModel, table=True):
    __tablename__ = "skills"
    __table_args__ = (UniqueConstraint("guild_id", "name", name="uq_skills_guild_name"),)

    id: int | None = Field(default=None, primary_key=True)
    guild_id: str = Field(default="", max_length=32, index=True)
    name: str = Field(max_length=64)
    description: str = Field(default="", max_length=200)
    owner_id: str = Field(default="", max_length=32)
    current_version: int = 1
    enabled: bool = True
    created_at: datetime = _when()
    updated_at: datetime = _when()


class SkillVersion(SQLModel, table=True):
    """One immutable version of a skill: what it asks, as whom, with what."""

    __tablename__ = "skill_versions"
    __table_args__ = (
        UniqueConstraint("skill_id", "version", name="uq_skill_versions_skill_version"),
    )

    id: int | None = Field(default=None, primary_key=True)
    skill_id: int = Field(sa_column_args=[ForeignKey("skills.id", ondelete="CASCADE")], index=True)
    version: int
    prompt: str = Field(default="")
    persona: str | None = Field(default=None, max_length=64)
    tier: str | None = Field(default=None, max_length=32)
    tools: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # JSON schema of a structured output, if the skill has one.
    output_schema: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )
    max_steps: int | None = None
    max_runtime_s: float | None = None
    created_by: str = Field(default="", max_length=32)
    created_at: datetime = _when()
    note: str = Field(default="", max_length=200)


class Schedule(SQLModel, table=True):
    """When a skill runs by itself: exactly one of cron and run_at is set.

    ``interval_s`` is from the first schema and unused (a cron expression says it).
    """

    __tablename__ = "schedules"
    __table_args__ = (Index("ix_schedules_enabled_next", "enabled", "next_run_at"),)

    id: int | None = Field(default=None, primary_key=True)
    skill_id: int = Field(sa_column_args=[ForeignKey("skills.id", ondelete="CASCADE")], index=True)
    guild_id: str = Field(default="", max_length=32, index=True)
    channel_id: str = Field(max_length=32)  # where the output is delivered
    created_by: str = Field(max_length=32)  # whose budget pays
    cron: str | None = Field(default=None, max_length=120)
    interval_s: int | None = None
    run_at: datetime | None = _when(nullable=True)
    timezone: str = Field(default="UTC", max_length=64)
    arguments: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    enabled: bool = True
    next_run_at: datetime | None = _when(nullable=True)
    last_run_at: datetime | None = _when(nullable=True)
    last_run_id: str | None = Field(default=None, max_length=64)
    last_status: str | None = Field(default=None, max_length=16)
    # What to do with a slot missed while coterie was down: "skip" or "catch-up".
    missed: str = Field(default="skip", max_length=16, sa_column_kwargs={"server_default": "skip"})
    consecutive_failures: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    disabled_reason: str | None = Field(default=None, max_length=300)
    # Seconds a top-of-hour cron fires after its slot (skills.scheduling.stagger_s).
    stagger_s: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    created_at: datetime = _when()
    updated_at: datetime = _when()


class ScheduleSlot(SQLModel, table=True):
    """One slot of a schedule: claimed (``running``) before the run starts, then
    ``ok`` / ``failed``; or ``skipped`` with the reason (overlap, missed while down).

    ``attempt`` is 1, or 2 once a slot a restart interrupted was claimed again for its
    one retry (``missed: catch-up``, within the grace); the claim moves it from 1 to 2
    in one conditional ``UPDATE``, so a slot runs at most twice, and never twice at once.

    ``owner`` is the instance that claimed it (or claimed its retry): a slot left
    ``running`` is another process's to settle only once that instance is gone.
    """

    __tablename__ = "schedule_slots"
    # Why no separate index on schedule_id: this constraint's index leads with it.
    __table_args__ = (
        UniqueConstraint("schedule_id", "slot_at", name="uq_schedule_slots_schedule_slot"),
        Index("ix_schedule_slots_status", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    schedule_id: int = Field(sa_column_args=[ForeignKey("schedules.id", ondelete="CASCADE")])
    slot_at: datetime  # the trigger's time before any stagger, UTC
    status: str = Field(max_length=16)  # running | ok | failed | skipped
    reason: str | None = Field(default=None, max_length=300)  # why skipped or failed
    run_id: str | None = Field(default=None, max_length=64)
    started_at: datetime | None = _when(nullable=True)
    ended_at: datetime | None = _when(nullable=True)
    attempt: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    # The instance that claimed it (adapters.storage.instances); None: one written by a
    # process that registered none (before instances, a test's scheduler).
    owner: str | None = Field(default=None, max_length=32)
