"""Tool sources: where a registry's tools come from.

A :class:`ToolSource` lists the tools it offers now and is opened before use and
closed in the drain (pydantic-ai's ``toolsets``). The :class:`~executor.tools.registry.ToolRegistry`
composes sources; whatever the source, a tool is a :class:`~executor.tools.registry.Tool`,
so the permission stages (enabled, granted, privilege), approval, timeouts, result caps,
the audit and the budget wrap every source's tools the same way. A source only knows
how to list and call.

Two kinds of tool come out of sources:

- **function tools** (``@tool``): a Python function whose signature is its schema;
  the built-ins, ``run_skill``, memory's ``remember``/``recall``.
- **schema tools** (:func:`schema_tool`): a JSON schema and an async call that takes
  the arguments as a dict, for tools discovered at run time (an MCP server's). The
  kernel imports no MCP code: such a source lives outside ``executor/`` and plugs in
  here.

A source names its tools itself (an MCP source prefixes them ``<server>__``); the
registry refuses a second tool of a name it already has, whichever source offers it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from executor.agent import Privilege
from executor.errors import ConfigError
from executor.tools.registry import _NAME_RE, Tool, ToolContext, _schema_args_model

__all__ = ["FunctionSource", "SchemaCall", "ToolSource", "schema_tool"]

# What a schema tool's call receives: the model's arguments (a JSON object) and the
# context of the call. Its result is rendered like a function tool's.
SchemaCall = Callable[[dict[str, Any], ToolContext], Awaitable[Any]]


@runtime_checkable
class ToolSource(Protocol):
    """Lists tools and owns whatever they need open (a process, a connection)."""

    @property
    def name(self) -> str:
        """What the source is called in logs and ``coterie doctor`` ("builtin", "mcp.files")."""
        ...

    def tools(self) -> Sequence[Tool]:
        """The tools it offers now, already named as the model sees them.

        Cheap and synchronous: the registry asks on every lookup. A source whose
        tools change (a server's list, an operator's accept) returns the new list.
        """
        ...

    async def open(self) -> None:
        """Called once before the first run. A source may start lazily instead."""
        ...

    async def close(self) -> None:
        """Called in the drain, after the runs; stop what the source started."""
        ...


class FunctionSource:
    """A fixed list of tools built in this process: the built-ins, ``run_skill``."""

    def __init__(self, name: str, tools: Iterable[Tool] = ()) -> None:
        self._name = name
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    @property
    def name(self) -> str:
        return self._name

    def add(self, t: Tool) -> Tool:
        if t.name in self._tools:
            raise ConfigError(f"tool {t.name!r} is registered twice")
        self._tools[t.name] = t
        return t

    def tools(self) -> Sequence[Tool]:
        return list(self._tools.values())

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None


def schema_tool(
    name: str,
    *,
    description: str,
    parameters: dict[str, Any],
    call: SchemaCall,
    timeout_s: float = 30.0,
    max_result_chars: int = 16_000,
    requires_approval: bool = False,
    min_privilege: Privilege = Privilege.USER,
    status: str | None = None,
    read_only: bool = False,
    idempotent: bool = False,
) -> Tool:
    """A tool described by a JSON schema and called with its arguments as a dict.

    ``read_only`` / ``idempotent`` (an MCP tool's annotations, say): a call a restart
    left unfinished runs again when its run resumes; otherwise the member is asked.

    The arguments must be a JSON object; checking them against ``parameters`` is the
    callee's job (an MCP server validates its own input and answers with an error the
    model reads).
    """
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"tool name {name!r} must be 1-64 letters, digits, '_' or '-' (a provider rule)"
        )
    if timeout_s <= 0 or max_result_chars <= 0:
        raise ConfigError(f"tool {name}: timeout_s and max_result_chars must be positive")
    schema = dict(parameters) if isinstance(parameters, dict) else {}
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})
    return Tool(
        name=name,
        function=call,
        description=description or name,
        args_model=_schema_args_model(name),
        timeout_s=timeout_s,
        max_result_chars=max_result_chars,
        requires_approval=requires_approval,
        min_privilege=min_privilege,
        isolation="inline",
        status=status,
        schema_call=call,
        _schema=schema,
        read_only=read_only,
        idempotent=idempotent,
    )
