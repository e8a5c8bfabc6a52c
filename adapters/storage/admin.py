"""Admin actions and budget-warning marks in SQL (``admin_actions``, ``budget_alerts``).

- :class:`SqlAdminLog` implements :class:`adapters.services.admin.AdminLog`: every
  admin action (settings change, limit, grant, export, forget) with who did it.
- :class:`SqlAlertStore` implements :class:`adapters.services.budget_alerts.AlertStore`:
  which budget warnings a member was sent in their current crossing.

Both forget a member: admin actions they took or that named them stay (what was
done, when), anonymised; their warning marks are deleted.
"""

from __future__ import annotations

import base64
import builtins
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters.services.admin import AdminEntry, AdminPage
from adapters.storage.audit_queries import FORGOTTEN
from adapters.storage.db import engine_of, write_transaction
from adapters.storage.export import jsonable_rows
from adapters.storage.tables import AdminAction, BudgetAlert
from executor.ports import utcnow

__all__ = ["SqlAdminLog", "SqlAlertStore"]

_actions = AdminAction.__table__  # type: ignore[attr-defined]
_alerts = BudgetAlert.__table__  # type: ignore[attr-defined]


def _entry(row: Any) -> AdminEntry:
    return AdminEntry(
        id=int(row.id),
        at=row.at,
        guild_id=row.guild_id,
        actor_id=row.actor_id,
        actor_name=row.actor_name,
        action=row.action,
        target_id=row.target_id,
        detail=dict(row.detail or {}),
    )


def _cursor(entry: AdminEntry) -> str:
    return base64.urlsafe_b64encode(f"{entry.id}".encode()).decode().rstrip("=")


def _uncursor(cursor: str) -> int:
    try:
        return int(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
    except ValueError as exc:
        raise ValueError(f"not a cursor from the admin log: {cursor!r}") from exc


class SqlAdminLog:
    data_name = "admin actions"

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._engine = engine_of(sessions)

    async def record(
        self,
        *,
        action: str,
        actor_id: str,
        actor_name: str = "",
        guild_id: str | None = None,
        target_id: str | None = None,
        detail: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> AdminEntry:
        values: dict[str, Any] = {
            "at": at or utcnow(),
            "guild_id": guild_id,
            "actor_id": actor_id,
            "actor_name": actor_name[:100],
            "action": action[:32],
            "target_id": target_id,
            "detail": detail or {},
        }
        async with write_transaction(self._engine) as conn:
            new_id = await conn.scalar(_actions.insert().values(**values).returning(_actions.c.id))
        return AdminEntry(id=int(new_id or 0), **values)

    async def list(
        self,
        *,
        guild_id: str | None = None,
        action: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> AdminPage:
        """Newest first; ``guild_id`` None: every guild's (and the operator's)."""
        limit = max(1, min(limit, 500))
        clauses = []
        if guild_id is not None:
            clauses.append(_actions.c.guild_id == guild_id)
        if action is not None:
            clauses.append(_actions.c.action == action)
        if cursor:
            clauses.append(_actions.c.id < _uncursor(cursor))
        stmt = (
            select(_actions)
            .where(and_(True, *clauses))
            .order_by(_actions.c.id.desc())
            .limit(limit + 1)
        )
        async with self._sessions() as session:
            rows = [_entry(r) for r in await session.execute(stmt)]
        more = len(rows) > limit
        rows = rows[:limit]
        return AdminPage(entries=rows, next_cursor=_cursor(rows[-1]) if more else None)

    async def export_user_data(self, user_id: str) -> builtins.list[dict[str, Any]]:
        """The admin actions this member took and those that named them, oldest first."""
        stmt = (
            select(_actions)
            .where((_actions.c.actor_id == user_id) | (_actions.c.target_id == user_id))
            .order_by(_actions.c.id)
        )
        async with self._sessions() as session:
            return jsonable_rows(await session.execute(stmt))

    async def delete_user_data(self, user_id: str) -> int:
        """Anonymise the actions this member took and those that named them; the
        reason an admin gave for an action about them (a grant's) is cleared too, as it
        may well name them."""
        async with write_transaction(self._engine) as conn:
            took = await conn.execute(
                update(_actions)
                .where(_actions.c.actor_id == user_id)
                .values(actor_id=FORGOTTEN, actor_name="")
            )
            about = list(
                await conn.execute(
                    select(_actions.c.id, _actions.c.detail).where(_actions.c.target_id == user_id)
                )
            )
            for row_id, detail in about:
                kept = dict(detail or {})
                if "reason" in kept:
                    kept["reason"] = ""
                await conn.execute(
                    update(_actions)
                    .where(_actions.c.id == row_id)
                    .values(target_id=FORGOTTEN, detail=kept)
                )
        return int(took.rowcount) + len(about)


class SqlAlertStore:
    data_name = "budget warnings"

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._engine = engine_of(sessions)
        self._dialect = self._engine.dialect.name

    async def claimed(self, user_id: str) -> dict[int, datetime]:
        stmt = select(_alerts.c.threshold_pct, _alerts.c.sent_at).where(
            _alerts.c.user_id == user_id
        )
        async with self._sessions() as session:
            return {int(t): at for t, at in await session.execute(stmt)}

    async def claim(self, user_id: str, threshold_pct: int, at: datetime) -> bool:
        # Why imported here: a dialect's module costs an import (PostgreSQL's ~15 ms) on
        # every start that would otherwise never load it.
        if self._dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt: Any = pg_insert(_alerts)
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(_alerts)
        stmt = stmt.values(
            user_id=user_id, threshold_pct=threshold_pct, sent_at=at
        ).on_conflict_do_nothing(index_elements=["user_id", "threshold_pct"])
        # Why one statement: two settles at once both see "not claimed"; only one insert wins.
        async with write_transaction(self._engine) as conn:
            result = await conn.execute(stmt)
        return bool(result.rowcount)

    async def release(self, user_id: str, thresholds: Sequence[int]) -> None:
        if not thresholds:
            return
        async with write_transaction(self._engine) as conn:
            await conn.execute(
                delete(_alerts).where(
                    _alerts.c.user_id == user_id, _alerts.c.threshold_pct.in_(list(thresholds))
                )
            )

    async def export_user_data(self, user_id: str) -> list[dict[str, Any]]:
        """The budget warnings sent to the member in their current crossings."""
        stmt = select(_alerts).where(_alerts.c.user_id == user_id).order_by(_alerts.c.sent_at)
        async with self._sessions() as session:
            return jsonable_rows(await session.execute(stmt))

    async def delete_user_data(self, user_id: str) -> int:
        async with write_transaction(self._engine) as conn:
            result = await conn.execute(delete(_alerts).where(_alerts.c.user_id == user_id))
        return int(result.rowcount)
