"""The executor's tools: the typed registry, isolation, the SSRF guard, the built-ins."""

from executor.tools.builtin import (
    WebFetcher,
    builtin_tools,
    calculate,
    default_registry,
    html_to_text,
)
from executor.tools.isolation import SubprocessToolError, run_in_subprocess
from executor.tools.registry import Isolation, Tool, ToolContext, ToolOutcome, ToolRegistry, tool
from executor.tools.sources import FunctionSource, SchemaCall, ToolSource, schema_tool
from executor.tools.ssrf import BlockedURL, SSRFGuard, forbidden_reason, guarded_get

__all__ = [
    "BlockedURL",
    "FunctionSource",
    "Isolation",
    "SSRFGuard",
    "SchemaCall",
    "SubprocessToolError",
    "Tool",
    "ToolContext",
    "ToolOutcome",
    "ToolRegistry",
    "ToolSource",
    "WebFetcher",
    "builtin_tools",
    "calculate",
    "default_registry",
    "forbidden_reason",
    "guarded_get",
    "html_to_text",
    "run_in_subprocess",
    "schema_tool",
    "tool",
]
