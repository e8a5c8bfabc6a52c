"""The executor's tools: the typed registry, isolation, the SSRF guard, the built-ins.

Names load on first use (as in :mod:`executor`): the child process that extracts a
web page's text imports :mod:`executor.tools.htmltext` through this package, and
should not pay for httpx and the registry it never uses.
"""

import typing as _typing

from executor.lazy import attach as _attach

# name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "BlockedURL": "executor.tools.ssrf",
    "CPULimitExceeded": "executor.tools.isolation",
    "FunctionSource": "executor.tools.sources",
    "Isolation": "executor.tools.registry",
    "SSRFGuard": "executor.tools.ssrf",
    "SchemaCall": "executor.tools.sources",
    "SubprocessToolError": "executor.tools.isolation",
    "SystemResolver": "executor.tools.ssrf",
    "Tool": "executor.tools.registry",
    "ToolContext": "executor.tools.registry",
    "ToolOutcome": "executor.tools.registry",
    "ToolRegistry": "executor.tools.registry",
    "ToolSource": "executor.tools.sources",
    "WebFetcher": "executor.tools.builtin",
    "builtin_tools": "executor.tools.builtin",
    "calculate": "executor.tools.builtin",
    "default_registry": "executor.tools.builtin",
    "forbidden_reason": "executor.tools.ssrf",
    "guarded_get": "executor.tools.ssrf",
    "html_to_text": "executor.tools.htmltext",
    "run_in_subprocess": "executor.tools.isolation",
    "schema_tool": "executor.tools.sources",
    "tool": "executor.tools.registry",
}

__all__ = [
    "BlockedURL",
    "CPULimitExceeded",
    "FunctionSource",
    "Isolation",
    "SSRFGuard",
    "SchemaCall",
    "SubprocessToolError",
    "SystemResolver",
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


__getattr__, __dir__ = _attach(__name__, _EXPORTS, globals())


if _typing.TYPE_CHECKING:
    from executor.tools.builtin import (
        WebFetcher,
        builtin_tools,
        calculate,
        default_registry,
    )
    from executor.tools.htmltext import html_to_text
    from executor.tools.isolation import (
        CPULimitExceeded,
        SubprocessToolError,
        run_in_subprocess,
    )
    from executor.tools.registry import (
        Isolation,
        Tool,
        ToolContext,
        ToolOutcome,
        ToolRegistry,
        tool,
    )
    from executor.tools.sources import FunctionSource, SchemaCall, ToolSource, schema_tool
    from executor.tools.ssrf import (
        BlockedURL,
        SSRFGuard,
        SystemResolver,
        forbidden_reason,
        guarded_get,
    )
