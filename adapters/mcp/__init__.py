"""MCP servers as tool sources (``[mcp.<name>]`` in ``coterie.toml``).

The ``mcp`` SDK is imported here and nowhere else, and only when a server is first
reached: a deployment without MCP servers never loads it. See :mod:`adapters.mcp.config`
for the configuration, :mod:`adapters.mcp.source` for what is offered and how calls
are bounded, :mod:`adapters.mcp.pins` for accepting a server's tools.
"""

from adapters.mcp.config import McpServerConfig, ToolPolicy, load_mcp_config, parse_mcp_config
from adapters.mcp.pins import InMemoryPins, PinStore, ToolPin, schema_hash
from adapters.mcp.servers import McpServers
from adapters.mcp.source import AcceptReport, McpServerSource, ToolState

__all__ = [
    "AcceptReport",
    "InMemoryPins",
    "McpServerConfig",
    "McpServerSource",
    "McpServers",
    "PinStore",
    "ToolPin",
    "ToolPolicy",
    "ToolState",
    "load_mcp_config",
    "parse_mcp_config",
    "schema_hash",
]
