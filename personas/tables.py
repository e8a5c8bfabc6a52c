"""The persona table. Stored personas override built-ins by name within a guild."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from executor.ports import utcnow

__all__ = ["PersonaRow"]


class PersonaRow(SQLModel, table=True):
    __tablename__ = "personas"
    __table_args__ = (UniqueConstraint("guild_id", "name", name="uq_personas_guild_name"),)

    id: int | None = Field(default=None, primary_key=True)
    # The guild this persona belongs to; "" for a deployment-wide persona.
    guild_id: str = Field(default="", max_length=32, index=True)
    name: str = Field(max_length=64)
    description: str = Field(default="", max_length=200)
    system_prompt: str = Field(default="")
    tier: str = Field(default="standard", max_length=32)
    tools: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    avatar_url: str | None = Field(default=None, max_length=512)
    temperature: float | None = None
    created_by: str = Field(default="", max_length=32)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
