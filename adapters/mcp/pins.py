"""Pinned tools: what an operator accepted of an MCP server, and the port that keeps it.

``coterie mcp accept NAME`` records, for each tool of the server that ``tools = [...]``
lists, its name, description and input schema, and a hash of the three. A tool is
offered to models only while the server still lists it with the same hash: a changed
description (where a poisoned instruction would hide) or schema, or a new tool, stays
off until an operator accepts the server again. Pins are stored in the database
(:class:`adapters.storage.mcp_pins.SqlMcpPins`); :class:`InMemoryPins` is the default.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

__all__ = ["InMemoryPins", "PinStore", "ToolPin", "schema_hash"]


def schema_hash(name: str, description: str, input_schema: Mapping[str, Any]) -> str:
    """A stable hash of what a model sees of a tool (its name, description and schema)."""
    canonical = json.dumps(
        {"name": name, "description": description or "", "input_schema": input_schema},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ToolPin:
    server: str
    tool: str
    schema_hash: str
    description: str
    input_schema: dict[str, Any]
    accepted_by: str = ""
    accepted_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # The server's hints when it was accepted (``readOnlyHint``, ``idempotentHint``): a
    # call a restart left unfinished runs again when its run resumes only if one holds
    # (and the server, once reached, still says so); otherwise the member is asked.
    read_only: bool = False
    idempotent: bool = False

    @classmethod
    def of(
        cls,
        server: str,
        tool: str,
        description: str,
        input_schema: Mapping[str, Any],
        *,
        accepted_by: str = "",
        accepted_at: datetime | None = None,
        read_only: bool = False,
        idempotent: bool = False,
    ) -> ToolPin:
        return cls(
            server=server,
            tool=tool,
            schema_hash=schema_hash(tool, description, input_schema),
            description=description or "",
            input_schema=dict(input_schema),
            accepted_by=accepted_by,
            accepted_at=accepted_at or datetime.now(UTC),
            read_only=read_only,
            idempotent=idempotent,
        )


@runtime_checkable
class PinStore(Protocol):
    async def pins(self, server: str) -> dict[str, ToolPin]:
        """The server's accepted tools, by tool name."""
        ...

    async def replace(self, server: str, pins: Sequence[ToolPin]) -> None:
        """Make ``pins`` the server's whole accepted set (in one transaction)."""
        ...


class InMemoryPins:
    def __init__(self, pins: Sequence[ToolPin] = ()) -> None:
        self._pins: dict[str, dict[str, ToolPin]] = {}
        for p in pins:
            self._pins.setdefault(p.server, {})[p.tool] = p

    async def pins(self, server: str) -> dict[str, ToolPin]:
        return dict(self._pins.get(server, {}))

    async def replace(self, server: str, pins: Sequence[ToolPin]) -> None:
        self._pins[server] = {p.tool: p for p in pins}
