"""Typed tools: a function's signature is its JSON schema, its docstring its description.

Permission has three stages, all checked here:

1. the deployment enables the tool (``ToolRegistry(enabled=...)``);
2. the persona or skill grants it (``RunnableAgent.tools``);
3. the caller's privilege reaches the tool's ``min_privilege``.

A tool never blocks the event loop: a synchronous function runs in a worker
thread, and one registered with ``isolation="process"`` runs in a subprocess that
is killed when its timeout passes.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from executor.agent import Caller, Privilege
from executor.errors import ConfigError, ToolRetry
from executor.models.base import ToolDefinition

__all__ = ["Tool", "ToolContext", "ToolOutcome", "ToolRegistry", "tool"]

Isolation = Literal["inline", "thread", "process"]


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Injected into a tool that declares a parameter of this type."""

    run_id: str
    caller: Caller
    call_id: str = ""
    agent: str = ""

    @property
    def privilege(self) -> Privilege:
        return self.caller.privilege


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    content: str
    is_error: bool = False
    duration_ms: float = 0.0
    truncated: bool = False


_ARG_LINE = re.compile(r"^\s{2,}(\w+)(?:\s*\([^)]*\))?:\s*(.+)$")


def _parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Description (text before ``Args:``) and per-argument descriptions."""
    if not doc:
        return "", {}
    doc = inspect.cleandoc(doc)
    head, _, rest = doc.partition("\nArgs:")
    params: dict[str, str] = {}
    for line in rest.splitlines():
        m = _ARG_LINE.match("  " + line if not line.startswith(" ") else line)
        if m:
            params[m.group(1)] = m.group(2).strip()
        elif line.strip() and not line.startswith(" ") and params:
            break
    return head.strip(), params


@dataclass(slots=True)
class Tool:
    name: str
    function: Callable[..., Any]
    description: str
    args_model: type[BaseModel]
    context_param: str | None = None
    timeout_s: float = 30.0
    max_result_chars: int = 16_000
    requires_approval: bool = False
    min_privilege: Privilege = Privilege.USER
    isolation: Isolation = "inline"
    status: str | None = None  # a status line template, e.g. "reading {url}"
    _schema: dict[str, Any] = field(default_factory=dict)

    @property
    def definition(self) -> ToolDefinition:
        if not self._schema:
            schema = self.args_model.model_json_schema()
            schema.pop("title", None)
            for prop in schema.get("properties", {}).values():
                prop.pop("title", None)
            self._schema = schema
        return ToolDefinition(name=self.name, description=self.description, parameters=self._schema)

    def status_line(self, arguments: dict[str, Any]) -> str:
        if self.status:
            try:
                return self.status.format(**arguments)
            except (KeyError, IndexError, ValueError):
                pass
        return f"using {self.name}"

    async def invoke(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        """Validate, call under the timeout, render and cap the result. Never raises
        for the tool's own failures: they come back as ``is_error`` outcomes the
        model can read."""
        start = time.perf_counter()

        def done(content: str, is_error: bool) -> ToolOutcome:
            truncated = False
            if len(content) > self.max_result_chars:
                cut = len(content) - self.max_result_chars
                content = content[: self.max_result_chars] + f"\n[truncated {cut} characters]"
                truncated = True
            return ToolOutcome(
                content=content,
                is_error=is_error,
                duration_ms=(time.perf_counter() - start) * 1000,
                truncated=truncated,
            )

        try:
            parsed = self.args_model.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            return done(f"invalid arguments for {self.name}: {problems}", True)
        kwargs = {k: getattr(parsed, k) for k in type(parsed).model_fields}
        if self.context_param:
            kwargs[self.context_param] = ctx
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await self._call(kwargs)
        except TimeoutError:
            return done(f"{self.name} timed out after {self.timeout_s:g} s", True)
        except ToolRetry as exc:
            return done(str(exc), True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return done(f"{self.name} failed: {type(exc).__name__}: {exc}", True)
        return done(_render(result), False)

    async def _call(self, kwargs: dict[str, Any]) -> Any:
        fn = self.function
        if self.isolation == "process":
            from executor.tools.isolation import run_in_subprocess

            return await run_in_subprocess(fn, kwargs, timeout_s=self.timeout_s)
        if inspect.iscoroutinefunction(fn):
            return await fn(**kwargs)
        if self.isolation == "inline":
            # Why: a plain def is assumed to possibly block; inline is opt-in for
            # trivial pure functions where a thread hop is wasted.
            return fn(**kwargs)
        return await asyncio.to_thread(fn, **kwargs)


def _render(result: Any) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, BaseModel):
        return result.model_dump_json()
    try:
        return json.dumps(result, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(result)


def _build_tool(
    fn: Callable[..., Any],
    *,
    name: str | None,
    description: str | None,
    timeout_s: float,
    max_result_chars: int,
    requires_approval: bool,
    min_privilege: Privilege,
    isolation: Isolation | None,
    status: str | None,
) -> Tool:
    hints = get_type_hints(fn)
    sig = inspect.signature(fn)
    doc_desc, arg_docs = _parse_docstring(fn.__doc__)
    fields: dict[str, Any] = {}
    context_param: str | None = None
    from pydantic import Field

    for pname, param in sig.parameters.items():
        annotation = hints.get(pname, Any)
        if annotation is ToolContext:
            context_param = pname
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigError(f"tool {fn.__name__}: *args/**kwargs are not supported")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[pname] = (annotation, Field(default, description=arg_docs.get(pname)))
    model = create_model(  # type: ignore[call-overload]
        f"{fn.__name__}_args",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )
    if isolation is None:
        isolation = "thread" if not inspect.iscoroutinefunction(fn) else "inline"
    return Tool(
        name=name or fn.__name__,
        function=fn,
        description=description or doc_desc or (name or fn.__name__),
        args_model=model,
        context_param=context_param,
        timeout_s=timeout_s,
        max_result_chars=max_result_chars,
        requires_approval=requires_approval,
        min_privilege=min_privilege,
        isolation=isolation,
        status=status,
    )


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float = 30.0,
    max_result_chars: int = 16_000,
    requires_approval: bool = False,
    min_privilege: Privilege = Privilege.USER,
    isolation: Isolation | None = None,
    status: str | None = None,
) -> Any:
    """Turn a function into a :class:`Tool` (usable bare or with options)."""

    def wrap(f: Callable[..., Any]) -> Tool:
        return _build_tool(
            f,
            name=name,
            description=description,
            timeout_s=timeout_s,
            max_result_chars=max_result_chars,
            requires_approval=requires_approval,
            min_privilege=min_privilege,
            isolation=isolation,
            status=status,
        )

    return wrap(fn) if fn is not None else wrap


class ToolRegistry:
    """The deployment's tools. ``enabled=None`` enables every registered tool."""

    def __init__(self, tools: Iterable[Tool] = (), *, enabled: Iterable[str] | None = None) -> None:
        self._tools: dict[str, Tool] = {}
        self._enabled: set[str] | None = set(enabled) if enabled is not None else None
        for t in tools:
            self.add(t)

    def add(self, t: Tool) -> Tool:
        if t.name in self._tools:
            raise ConfigError(f"tool {t.name!r} is registered twice")
        self._tools[t.name] = t
        return t

    def register(self, fn: Callable[..., Awaitable[Any]] | Callable[..., Any] | None = None, **options: Any) -> Any:
        """Decorator: ``@registry.register`` or ``@registry.register(timeout_s=5)``."""

        def wrap(f: Callable[..., Any]) -> Tool:
            return self.add(tool(f, **options))

        return wrap(fn) if fn is not None else wrap

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> list[str]:
        return sorted(self._tools)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def is_enabled(self, name: str) -> bool:
        return name in self._tools and (self._enabled is None or name in self._enabled)

    @property
    def enabled_names(self) -> list[str]:
        return [n for n in self.names if self.is_enabled(n)]

    def refusal(self, name: str, granted: Iterable[str], privilege: Privilege) -> str | None:
        """Why ``name`` may not be used here, or None when it may."""
        t = self._tools.get(name)
        if t is None:
            return f"there is no tool named {name!r}"
        if not self.is_enabled(name):
            return f"the tool {name!r} is not enabled on this deployment"
        if name not in set(granted):
            return f"the tool {name!r} is not granted to this agent"
        if privilege < t.min_privilege:
            return f"the tool {name!r} needs {t.min_privilege.name.lower()} privilege"
        return None

    def available(self, granted: Iterable[str], privilege: Privilege) -> list[Tool]:
        granted = list(granted)
        return [
            self._tools[n]
            for n in granted
            if n in self._tools and self.refusal(n, granted, privilege) is None
        ]
