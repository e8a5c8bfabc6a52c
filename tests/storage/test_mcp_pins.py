"""MCP tool pins in SQL, on SQLite and PostgreSQL: accepting replaces a server's set."""

from __future__ import annotations

from adapters.mcp.pins import ToolPin
from adapters.storage.db import Database
from adapters.storage.mcp_pins import SqlMcpPins

SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}


async def test_accepting_replaces_the_servers_pins(db: Database) -> None:
    pins = SqlMcpPins(db.sessions)
    assert await pins.pins("files") == {}
    read = ToolPin.of("files", "read_file", "Read a file. Ünïcode ok.", SCHEMA, accepted_by="op")
    listing = ToolPin.of("files", "list_directory", "List a directory.", SCHEMA, read_only=True)
    other = ToolPin.of("notes", "search", "Search notes.", {"type": "object"})
    await pins.replace("files", [read, listing])
    await pins.replace("notes", [other])

    got = await pins.pins("files")
    assert set(got) == {"read_file", "list_directory"}
    assert got["read_file"].schema_hash == read.schema_hash
    assert got["read_file"].input_schema == SCHEMA
    assert got["read_file"].description == "Read a file. Ünïcode ok."
    assert got["read_file"].accepted_by == "op"
    assert got["read_file"].accepted_at.tzinfo is not None
    # The server's hints as accepted (a resumed run may call a read-only tool again).
    assert (got["read_file"].read_only, got["read_file"].idempotent) == (False, False)
    assert got["list_directory"].read_only

    await pins.replace("files", [read])  # list_directory was dropped from tools = [...]
    assert set(await pins.pins("files")) == {"read_file"}
    assert set(await pins.pins("notes")) == {"search"}
    await pins.replace("files", [])
    assert await pins.pins("files") == {}
