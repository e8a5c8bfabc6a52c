"""Tool calls waiting for approval in SQL (``approvals``): the
:class:`~adapters.services.approval.ApprovalStore` of the bot.

A press is recorded by one conditional ``UPDATE`` (still open, the presser's, not past
its time, its process alive): of two presses, or a press and the waiter's timeout, in
two processes at once, the first to commit wins and the other changes nothing. Whether
the waiting process is alive is whether its instance still has a row (an expired one is
reaped by the survivors): a question with no owner (a process that registered none)
counts as waited for.

It keeps member ids (who may decide, who did) and a display name, so it is part of the
data API: ``/forgetme`` deletes the member's questions, ``/mydata`` lists them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import and_, delete, exists, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from adapters.services.approval import Approval, Closing, DecisionKind
from adapters.storage.db import engine_of, translate_errors, write_transaction
from adapters.storage.tables import ApprovalRow, Instance

__all__ = ["SqlApprovals"]

_rows = ApprovalRow.__table__  # type: ignore[attr-defined]
_instances = Instance.__table__  # type: ignore[attr-defined]

_ALIVE = or_(_rows.c.owner.is_(None), exists().where(_instances.c.id == _rows.c.owner))
_COLUMNS = (*_rows.c, _ALIVE.label("waiting"))


def _approval(m: Any) -> Approval:
    return Approval(
        id=m["id"],
        run_id=m["run_id"],
        call_id=m["call_id"],
        tool=m["tool"],
        user_id=m["user_id"],
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        owner=m["owner"],
        decision=cast(DecisionKind | None, m["decision"]),
        decided_by=m["decided_by"],
        decided_by_name=m["decided_by_name"],
        decided_at=m["decided_at"],
        waiting=bool(m["waiting"]),
        channel_id=m["channel_id"],
        message_id=m["message_id"],
    )


class SqlApprovals:
    """Questions waiting for approval, and their answers."""

    #: The part's name in the data API's reports and exports.
    data_name = "approval requests"

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._engine = engine_of(sessions)

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with write_transaction(self._engine) as conn:
            yield conn

    async def add(self, approval: Approval) -> None:
        async with self._write() as conn:
            await conn.execute(
                insert(_rows).values(
                    id=approval.id,
                    run_id=approval.run_id,
                    call_id=approval.call_id,
                    tool=approval.tool,
                    user_id=approval.user_id,
                    owner=approval.owner,
                    created_at=approval.created_at,
                    expires_at=approval.expires_at,
                )
            )

    async def get(self, approval_id: str) -> Approval | None:
        with translate_errors(self._engine.url):
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(select(*_COLUMNS).where(_rows.c.id == approval_id))
                ).first()
        return None if row is None else _approval(row._mapping)

    async def _row(self, conn: AsyncConnection, approval_id: str) -> Approval | None:
        row = (await conn.execute(select(*_COLUMNS).where(_rows.c.id == approval_id))).first()
        return None if row is None else _approval(row._mapping)

    async def decide(
        self, approval_id: str, *, user_id: str, name: str, approved: bool, now: datetime
    ) -> Approval | None:
        async with self._write() as conn:
            done = await conn.execute(
                update(_rows)
                .where(
                    _rows.c.id == approval_id,
                    _rows.c.user_id == user_id,
                    _rows.c.decision.is_(None),
                    _rows.c.expires_at > now,
                    _ALIVE,
                )
                .values(
                    decision="approved" if approved else "denied",
                    decided_by=user_id,
                    decided_by_name=name,
                    decided_at=now,
                )
            )
            if not cast(Any, done).rowcount:
                return None
            return await self._row(conn, approval_id)

    async def close(self, approval_id: str, *, decision: Closing, now: datetime) -> Approval | None:
        async with self._write() as conn:
            await conn.execute(
                update(_rows)
                .where(_rows.c.id == approval_id, _rows.c.decision.is_(None))
                .values(decision=decision, decided_at=now)
            )
            return await self._row(conn, approval_id)

    async def posted(self, approval_id: str, *, channel_id: str, message_id: str) -> None:
        async with self._write() as conn:
            await conn.execute(
                update(_rows)
                .where(_rows.c.id == approval_id)
                .values(channel_id=channel_id, message_id=message_id)
            )

    async def interrupted(self, run_ids: Sequence[str], *, now: datetime) -> list[Approval]:
        ids = list(run_ids)
        async with self._write() as conn:
            await conn.execute(
                update(_rows)
                .where(_rows.c.run_id.in_(ids), _rows.c.decision.is_(None))
                .values(decision="interrupted", decided_at=now)
            )
            showing = and_(
                _rows.c.run_id.in_(ids),
                _rows.c.decision == "interrupted",
                _rows.c.message_id.is_not(None),
            )
            # Why FOR UPDATE: two processes settling the same runs take each once.
            query = select(*_COLUMNS).where(showing).with_for_update(of=_rows)
            rows = (await conn.execute(query)).all()
            taken = [_approval(r._mapping) for r in rows]
            if taken:
                await conn.execute(
                    update(_rows)
                    .where(_rows.c.id.in_([a.id for a in taken]))
                    .values(channel_id=None, message_id=None)
                )
        return taken

    async def prune(self, before: datetime) -> int:
        async with self._write() as conn:
            gone = await conn.execute(delete(_rows).where(_rows.c.expires_at < before))
        return int(cast(Any, gone).rowcount or 0)

    # --- the data API (adapters.services.deletion.MemberData) ------------------------

    def _members(self, user_id: str) -> Any:
        return or_(_rows.c.user_id == user_id, _rows.c.decided_by == user_id)

    async def export_user_data(self, user_id: str) -> list[dict[str, Any]]:
        """The questions the member was asked (or decided): which tool, when, the answer."""
        with translate_errors(self._engine.url):
            async with self._engine.connect() as conn:
                rows = (
                    await conn.execute(
                        select(_rows).where(self._members(user_id)).order_by(_rows.c.created_at)
                    )
                ).mappings()
                return [
                    {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}
                    for row in rows
                ]

    async def delete_user_data(self, user_id: str) -> int:
        """Delete the member's questions (a run waiting on one is denied)."""
        async with self._write() as conn:
            gone = await conn.execute(delete(_rows).where(self._members(user_id)))
        return int(cast(Any, gone).rowcount or 0)
