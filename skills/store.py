"""The skills noun's store. So far: forgetting a member (the skill commands build on it)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col

from skills.tables import Schedule, Skill, SkillVersion

__all__ = ["SkillStore"]


class SkillStore:
    def __init__(self, sessions: async_sessionmaker[Any]) -> None:
        self._sessions = sessions

    async def delete_user_data(self, user_id: str) -> int:
        """Delete the skills a member owns (their versions and schedules with them) and
        the schedules they made on others' skills; returns how many rows went."""
        async with self._sessions() as session, session.begin():
            owned = select(col(Skill.id)).where(col(Skill.owner_id) == user_id)
            gone = 0
            for stmt in (
                delete(Schedule).where(
                    (col(Schedule.created_by) == user_id) | col(Schedule.skill_id).in_(owned)
                ),
                delete(SkillVersion).where(col(SkillVersion.skill_id).in_(owned)),
                delete(Skill).where(col(Skill.owner_id) == user_id),
            ):
                gone += int((await session.execute(stmt)).rowcount)
            # A version this member wrote on someone else's skill keeps no name.
            await session.execute(
                SkillVersion.__table__.update()  # type: ignore[attr-defined]
                .where(SkillVersion.__table__.c.created_by == user_id)  # type: ignore[attr-defined]
                .values(created_by="")
            )
            return gone
