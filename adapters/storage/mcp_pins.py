"""MCP tool pins in SQL (``mcp_tool_pins``): :class:`adapters.mcp.pins.PinStore`.

Accepting a server replaces its whole set in one transaction, so a tool the operator
dropped from ``tools = [...]`` loses its pin too. Pins hold no member data (the
accepting operator's id only), so they have no part in ``/forgetme``.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters.mcp.pins import ToolPin
from adapters.storage.db import engine_of, write_transaction
from adapters.storage.tables import McpToolPin

__all__ = ["SqlMcpPins"]

_pins = McpToolPin.__table__  # type: ignore[attr-defined]


class SqlMcpPins:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._engine = engine_of(sessions)

    async def pins(self, server: str) -> dict[str, ToolPin]:
        async with self._sessions() as session:
            rows = (await session.execute(select(_pins).where(_pins.c.server == server))).all()
        return {
            r.tool: ToolPin(
                server=r.server,
                tool=r.tool,
                schema_hash=r.schema_hash,
                description=r.description,
                input_schema=dict(r.input_schema or {}),
                accepted_by=r.accepted_by,
                accepted_at=r.accepted_at,
                read_only=bool(r.read_only),
                idempotent=bool(r.idempotent),
            )
            for r in rows
        }

    async def replace(self, server: str, pins: Sequence[ToolPin]) -> None:
        async with write_transaction(self._engine) as conn:
            await conn.execute(delete(_pins).where(_pins.c.server == server))
            if pins:
                await conn.execute(
                    insert(_pins),
                    [
                        {
                            "server": server,
                            "tool": p.tool,
                            "schema_hash": p.schema_hash,
                            "description": p.description,
                            "input_schema": p.input_schema,
                            "accepted_by": p.accepted_by[:64],
                            "accepted_at": p.accepted_at,
                            "read_only": p.read_only,
                            "idempotent": p.idempotent,
                        }
                        for p in pins
                    ],
                )
