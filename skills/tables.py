"""The skill tables: a skill, its immutable versions, and its schedules.

A skill is a named, reusable agent task within a guild ("" for deployment-wide).
Editing a skill adds a :class:`SkillVersion`; ``Skill.current_version`` points at the
one that runs. A :class:`Schedule` runs a skill by cron expression, fixed interval, or
once at a time, on behalf of the member who created it (whose budget pays), and
delivers to a channel.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, ForeignKey, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

__all__ = ["Schedule", "Skill", "SkillVersion"]


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
    """When a skill runs by itself: exactly one of cron, interval_s, run_at is set."""

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
    created_at: datetime = _when()
    updated_at: datetime = _when()
