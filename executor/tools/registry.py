"""Typed tools: a function's signature is its JSON schema, its docstring its description.

Permission has three stages, all checked here:

1. the deployment enables the tool (``ToolRegistry(enabled=...)``);
2. the persona or skill grants it (``RunnableAgent.tools``);
3. the caller's privilege reaches the tool's ``min_privilege``.

A fourth flag, ``requires_approval``, is only carried here: the run loop asks its
``Approver`` port before calling such a tool. Two more say whether a call may run
again when a restart left it unfinished (a resumed run): ``read_only`` (it changes
nothing) and ``idempotent`` (a second call changes nothing more); any other tool is
asked about again, through the approver.

A tool never blocks the event loop: a synchronous function runs in a worker
thread, and one registered with ``isolation="process"`` runs in a subprocess that
is killed when its timeout passes (see :mod:`executor.tools.isolation`).

A tool shows the model a failure by raising :class:`~executor.errors.ToolFailed`
(or :class:`~executor.errors.ToolRetry`, to ask for a corrected call): its message
is the tool's error. Any other exception is a bug: it is logged with the tool's
name, the run id and a reference, and the model is told only that the tool failed
(pydantic-ai's ``ModelRetry`` rule: only opted-in errors reach the model).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Literal,
    get_args,
    get_origin,
    get_type_hints,
    overload,
)
from urllib.parse import urlsplit

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from executor._deadlines import Deadlines, Expiry
from executor._trace import log_failure, new_ref
from executor.agent import Caller, Invocation, Privilege
from executor.errors import ConfigError, ToolFailed
from executor.models.base import ToolDefinition
from executor.tools._docstrings import parse_docstring

if TYPE_CHECKING:
    from executor.tools.sources import ToolSource

__all__ = ["Isolation", "Tool", "ToolContext", "ToolOutcome", "ToolRegistry", "tool"]

Isolation = Literal["inline", "thread", "process"]

log = logging.getLogger(__name__)

# Why: both Anthropic and OpenAI reject tool names outside this pattern.
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Injected into a tool that declares a parameter of this type."""

    run_id: str
    caller: Caller
    call_id: str = ""
    agent: str = ""
    # The persona the agent speaks as ("" when none): a skill's agent has its own name.
    persona: str = ""
    # The calling run's invocation: a tool that starts a run (run_skill) starts it one
    # level deeper (executor.guard.child_invocation), with the same caller and cancel.
    invocation: Invocation | None = None
    # A priced call (a keyed web search), around its request:
    #     async with ctx.charge(micros, "a Brave search"):
    #         answer = await provider.search(...)
    # Entering holds the price in the run's reservation (raising ToolFailed when the
    # member's budget cannot cover it); leaving the block normally charges it (counted
    # as spent, a ToolChargeEvent in the audit); leaving it by an exception (the
    # provider failed, the call was stopped) gives it back. None outside a run: free.
    charge: Callable[[int, str], AbstractAsyncContextManager[None]] | None = None

    @property
    def privilege(self) -> Privilege:
        return self.caller.privilege


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    content: str
    is_error: bool = False
    duration_ms: float = 0.0
    truncated: bool = False


class _TimedOut(Exception):
    """Internal: a tool call passed its ``timeout_s``."""


# --- the tool ----------------------------------------------------------------------


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
    read_only: bool = False  # changes nothing: safe to call again
    idempotent: bool = False  # a second call with the same arguments changes nothing more
    # A status line template, e.g. "reading {host}": the arguments, plus ``host``
    # when a ``url`` argument is given.
    status: str | None = None
    # model field name -> the function's parameter name (they differ when a
    # parameter's name would clash with pydantic's own attributes).
    param_names: dict[str, str] = field(default_factory=dict)
    # A schema tool (executor.tools.sources.schema_tool): called with the arguments
    # as a dict instead of validated keyword arguments.
    schema_call: Callable[[dict[str, Any], ToolContext], Awaitable[Any]] | None = None
    _schema: dict[str, Any] = field(default_factory=dict)
    # (function, whether it is a coroutine function): asked once, not on every call.
    _is_async: tuple[Callable[..., Any], bool] | None = field(
        default=None, compare=False, repr=False
    )
    # (the arguments' model, its (field, parameter) names): read once, not on every call
    # (pydantic's ``model_fields`` costs about 10 us a read).
    _fields: tuple[type[BaseModel], tuple[tuple[str, str], ...]] | None = field(
        default=None, compare=False, repr=False
    )

    @property
    def repeatable(self) -> bool:
        """Whether a call a restart left unfinished may simply run again (a resumed
        run asks the member first otherwise)."""
        return (self.read_only or self.idempotent) and not self.requires_approval

    @property
    def definition(self) -> ToolDefinition:
        if not self._schema:
            schema = self.args_model.model_json_schema()
            _strip_titles(schema)
            schema.setdefault("properties", {})
            self._schema = schema
        return ToolDefinition(name=self.name, description=self.description, parameters=self._schema)

    def status_line(self, arguments: Mapping[str, Any]) -> str:
        values: dict[str, Any] = {k: _short(v) for k, v in arguments.items()}
        url = arguments.get("url")
        if isinstance(url, str) and "host" not in values:
            try:
                values["host"] = urlsplit(url.strip()).hostname or url
            except ValueError:
                values["host"] = _short(url)
        if self.status:
            try:
                return self.status.format_map(values)
            except (KeyError, IndexError, ValueError, AttributeError):
                pass
        return f"using {self.name}"

    async def invoke(
        self,
        arguments: Mapping[str, Any] | None,
        ctx: ToolContext,
        *,
        deadlines: Deadlines | None = None,
    ) -> ToolOutcome:
        """Validate, call under the timeout, render and cap the result.

        ``deadlines``: shared timers for the timeout (the executor's, see
        :mod:`executor._deadlines`); without them, ``asyncio.timeout``.

        Never raises for the tool's own failures or for bad arguments: they come
        back as ``is_error`` outcomes the model can read (an unexpected exception's
        text is logged, not shown). Cancellation propagates.
        """
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

        if self.schema_call is not None:
            if arguments is not None and not isinstance(arguments, Mapping):
                return done(f"invalid arguments for {self.name}: expected a JSON object", True)
            call: Callable[[], Awaitable[Any]] = _bind_schema_call(
                self.schema_call, dict(arguments or {}), ctx
            )
        else:
            try:
                parsed = self.args_model.model_validate({} if arguments is None else arguments)
            except ValidationError as exc:
                return done(f"invalid arguments for {self.name}: {_validation_summary(exc)}", True)
            fields = self._fields
            if fields is None or fields[0] is not type(parsed):
                model = type(parsed)
                names = tuple((k, self.param_names.get(k, k)) for k in model.model_fields)
                fields = self._fields = (model, names)
            kwargs = {param: getattr(parsed, k) for k, param in fields[1]}
            if self.context_param:
                kwargs[self.context_param] = ctx
            call = _bind_call(self, kwargs)
        try:
            result = await self._timed(call, deadlines)
        except ToolFailed as exc:  # ToolRetry too
            return done(str(exc) or f"{self.name} failed", True)
        except _TimedOut:
            return done(f"{self.name} timed out after {self.timeout_s:g} s", True)
        except Exception as exc:
            return done(self._unexpected(exc, ctx), True)
        return done(_render(result), False)

    async def _timed(self, call: Callable[[], Awaitable[Any]], deadlines: Deadlines | None) -> Any:
        """``call()`` within ``timeout_s``; :class:`_TimedOut` when it passes."""
        if deadlines is None:
            limit = asyncio.timeout(self.timeout_s)
            try:
                async with limit:
                    return await call()
            except TimeoutError:
                if limit.expired():
                    raise _TimedOut from None
                raise
        expiry = Expiry(deadlines, self.timeout_s)
        try:
            result = await call()
        except asyncio.CancelledError:
            if expiry.end():
                raise _TimedOut from None
            raise
        except BaseException:
            expiry.end()
            raise
        expiry.end()
        return result

    def _unexpected(self, exc: Exception, ctx: ToolContext) -> str:
        """Log a tool's unexpected exception; what the model is told instead."""
        ref = new_ref()
        log_failure(
            log,
            exc,
            "tool %s failed in run %s, call %s (ref %s)",
            self.name,
            ctx.run_id or "-",
            ctx.call_id or "-",
            ref,
        )
        return f"{self.name} failed: the tool had an internal error (ref {ref})."

    async def _call(self, kwargs: dict[str, Any]) -> Any:
        fn = self.function
        if self.isolation == "process":
            from executor.tools.isolation import run_in_subprocess

            return await run_in_subprocess(fn, kwargs, timeout_s=self.timeout_s)
        known = self._is_async
        if known is None or known[0] is not fn:
            known = self._is_async = (fn, inspect.iscoroutinefunction(fn))
        if known[1]:
            return await fn(**kwargs)
        if self.isolation == "inline":
            # Why: a plain def is assumed to possibly block; inline is opt-in for
            # trivial pure functions where a thread hop is wasted.
            return fn(**kwargs)
        # Why: a thread cannot be killed; on timeout the await returns and the
        # thread finishes in the background. Use isolation="process" for work
        # that must stop.
        return await asyncio.to_thread(fn, **kwargs)


def _bind_call(t: Tool, kwargs: dict[str, Any]) -> Callable[[], Awaitable[Any]]:
    return lambda: t._call(kwargs)


def _bind_schema_call(
    fn: Callable[[dict[str, Any], ToolContext], Awaitable[Any]],
    arguments: dict[str, Any],
    ctx: ToolContext,
) -> Callable[[], Awaitable[Any]]:
    return lambda: fn(arguments, ctx)


def _schema_args_model(name: str) -> type[BaseModel]:
    """A schema tool's stand-in arguments model: any object (the callee validates)."""
    model: type[BaseModel] = create_model(f"{name}_args", __config__=ConfigDict(extra="allow"))
    return model


def _short(value: Any, limit: int = 80) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[: limit - 1] + "…"
    return value


def _strip_titles(node: Any) -> None:
    """Drop pydantic's auto titles: noise in a prompt (a property *named* title stays)."""
    if isinstance(node, dict):
        if isinstance(node.get("title"), str):
            del node["title"]
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                for prop in value.values():
                    _strip_titles(prop)
            else:
                _strip_titles(value)
    elif isinstance(node, list):
        for item in node:
            _strip_titles(item)


def _validation_summary(exc: ValidationError) -> str:
    problems = []
    for e in exc.errors(include_url=False):
        where = ".".join(str(p) for p in e["loc"]) or "arguments"
        problems.append(f"{where}: {e['msg']}")
    return "; ".join(problems)


def _render(result: Any) -> str:
    if isinstance(result, str):
        return result
    if result is None:
        return "(no result)"
    if isinstance(result, BaseModel):
        return result.model_dump_json()
    # Why pydantic_core: it serialises dataclasses, datetimes, enums, sets and
    # models nested in containers, where json.dumps would give up.
    return pydantic_core.to_json(result, fallback=str).decode()


# --- building tools ---------------------------------------------------------------


def _is_context(annotation: Any) -> bool:
    if annotation is ToolContext:
        return True
    if get_origin(annotation) is Annotated:
        return _is_context(get_args(annotation)[0])
    args = get_args(annotation)
    # ToolContext | None
    return bool(args) and any(a is ToolContext for a in args)


def _field_name(pname: str) -> str:
    # Why: a parameter named like a BaseModel attribute ("json", "schema",
    # "model_x") would shadow it; pydantic warns (an error in our tests).
    if pname.startswith(("_", "model_")) or hasattr(BaseModel, pname):
        return f"arg_{pname.lstrip('_')}"
    return pname


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
    read_only: bool = False,
    idempotent: bool = False,
) -> Tool:
    tool_name: str = name or str(getattr(fn, "__name__", ""))
    if not _NAME_RE.match(tool_name):
        raise ConfigError(
            f"tool name {tool_name!r} must be 1-64 letters, digits, '_' or '-' (a provider rule)"
        )
    if timeout_s <= 0 or max_result_chars <= 0:
        raise ConfigError(f"tool {tool_name}: timeout_s and max_result_chars must be positive")
    # Why not get_type_hints(fn): an unresolvable *return* annotation (a class
    # local to a test, say) is no reason to refuse the tool; only parameters matter.
    annotations = {k: v for k, v in getattr(fn, "__annotations__", {}).items() if k != "return"}
    try:
        hints = get_type_hints(
            SimpleNamespace(__annotations__=annotations),
            globalns=getattr(inspect.unwrap(fn), "__globals__", None),
            include_extras=True,
        )
    except (NameError, TypeError) as exc:
        raise ConfigError(f"tool {tool_name}: cannot resolve its type hints: {exc}") from exc
    sig = inspect.signature(fn)
    doc_desc, arg_docs = parse_docstring(fn.__doc__)
    fields: dict[str, Any] = {}
    param_names: dict[str, str] = {}
    context_param: str | None = None

    for pname, param in sig.parameters.items():
        annotation = hints.get(pname, Any)
        if _is_context(annotation):
            context_param = pname
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigError(f"tool {tool_name}: *args/**kwargs are not supported")
        if param.kind is param.POSITIONAL_ONLY:
            raise ConfigError(f"tool {tool_name}: positional-only parameters are not supported")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fname = _field_name(pname)
        alias = pname if fname != pname else None
        if alias:
            param_names[fname] = pname
        fields[fname] = (
            annotation,
            Field(default, description=arg_docs.get(pname), alias=alias),
        )
    model: type[BaseModel] = create_model(
        f"{tool_name}_args",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )
    try:
        model.model_json_schema()
    except Exception as exc:  # an annotation pydantic cannot describe
        raise ConfigError(f"tool {tool_name}: no JSON schema for its parameters: {exc}") from exc
    is_async = inspect.iscoroutinefunction(fn)
    if isolation == "process":
        from executor.tools.isolation import SubprocessToolError, check_importable

        try:
            check_importable(fn)
        except SubprocessToolError as exc:
            raise ConfigError(f"tool {tool_name}: {exc}") from exc
    if isolation is None:
        isolation = "inline" if is_async else "thread"
    return Tool(
        name=tool_name,
        function=fn,
        description=description or doc_desc or tool_name,
        args_model=model,
        context_param=context_param,
        timeout_s=timeout_s,
        max_result_chars=max_result_chars,
        requires_approval=requires_approval,
        min_privilege=min_privilege,
        isolation=isolation,
        status=status,
        param_names=param_names,
        read_only=read_only,
        idempotent=idempotent,
    )


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float = 30.0,
    max_result_chars: int = 16_000,
    requires_approval: bool = False,
    min_privilege: Privilege = Privilege.USER,
    isolation: Isolation | None = None,
    status: str | None = None,
    read_only: bool = False,
    idempotent: bool = False,
) -> Callable[[Callable[..., Any]], Tool]: ...


@overload
def tool(
    fn: Callable[..., Any],
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float = 30.0,
    max_result_chars: int = 16_000,
    requires_approval: bool = False,
    min_privilege: Privilege = Privilege.USER,
    isolation: Isolation | None = None,
    status: str | None = None,
    read_only: bool = False,
    idempotent: bool = False,
) -> Tool: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float = 30.0,
    max_result_chars: int = 16_000,
    requires_approval: bool = False,
    min_privilege: Privilege = Privilege.USER,
    isolation: Isolation | None = None,
    status: str | None = None,
    read_only: bool = False,
    idempotent: bool = False,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Turn a function into a :class:`Tool` (usable bare or with options).

    ``isolation``: ``"inline"`` (call on the loop: async functions and trivial
    pure ones), ``"thread"`` (the default for a plain ``def``), or ``"process"``
    (a top-level function run in a child process, killed at the timeout).
    ``read_only`` / ``idempotent``: a call a restart left unfinished runs again when
    the run resumes (otherwise the member is asked first).
    """

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
            read_only=read_only,
            idempotent=idempotent,
        )

    return wrap(fn) if fn is not None else wrap


class ToolRegistry:
    """The deployment's tools: its own (``add``, ``register``) and its sources'.

    ``enabled`` is the deployment's switch for its own tools (``COTERIE_ENABLED_TOOLS``;
    ``None`` enables every one); a source enables its tools itself (an MCP server's
    ``tools = [...]`` and the operator's accept) and offers only those.
    """

    def __init__(
        self,
        tools: Iterable[Tool] = (),
        *,
        enabled: Iterable[str] | None = None,
        sources: Iterable[ToolSource] = (),
    ) -> None:
        self._tools: dict[str, Tool] = {}
        self._enabled: frozenset[str] | None = frozenset(enabled) if enabled is not None else None
        self._sources: list[ToolSource] = []
        for t in tools:
            self.add(t)
        for s in sources:
            self.add_source(s)

    def add(self, t: Tool) -> Tool:
        if t.name in self._tools or self._from_source(t.name) is not None:
            raise ConfigError(f"tool {t.name!r} is registered twice")
        self._tools[t.name] = t
        return t

    def add_source(self, source: ToolSource) -> ToolSource:
        """Compose ``source``'s tools into this registry (a name may come from one place)."""
        if any(s.name == source.name for s in self._sources):
            raise ConfigError(f"tool source {source.name!r} is added twice")
        clash = sorted({t.name for t in source.tools()} & set(self._index()))
        if clash:
            raise ConfigError(f"tool source {source.name!r} offers tools that exist: {clash}")
        self._sources.append(source)
        return source

    @property
    def sources(self) -> list[ToolSource]:
        return list(self._sources)

    async def open(self) -> None:
        """Open every source, in order (a source may also start lazily, on first call)."""
        for source in self._sources:
            await source.open()

    async def close(self) -> None:
        """Close every source, the last opened first; one failing does not stop the rest."""
        for source in reversed(self._sources):
            try:
                await source.close()
            except Exception:
                log.exception("error while closing tool source %s", source.name)

    def register(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Decorator: ``@registry.register`` or ``@registry.register(timeout_s=5)``."""

        def wrap(f: Callable[..., Any]) -> Tool:
            return self.add(tool(f, **options))

        return wrap(fn) if fn is not None else wrap

    def _from_source(self, name: str) -> Tool | None:
        for source in self._sources:
            for t in source.tools():
                if t.name == name:
                    return t
        return None

    def _index(self) -> dict[str, Tool]:
        """Every tool by name: its own first, then each source's (the first one wins)."""
        found = dict(self._tools)
        for source in self._sources:
            for t in source.tools():
                found.setdefault(t.name, t)
        return found

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __len__(self) -> int:
        return len(self._index())

    @property
    def names(self) -> list[str]:
        return sorted(self._index())

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name) or self._from_source(name)

    def is_enabled(self, name: str) -> bool:
        if name in self._tools:
            return self._enabled is None or name in self._enabled
        return self._from_source(name) is not None

    @property
    def enabled_names(self) -> list[str]:
        return [n for n in self.names if self.is_enabled(n)]

    def refusal(self, name: str, granted: Iterable[str], privilege: Privilege) -> str | None:
        """Why ``name`` may not be used here, or None when it may."""
        t = self.get(name)
        if t is None:
            return f"there is no tool named {name!r}"
        if not self.is_enabled(name):
            return f"the tool {name!r} is not enabled on this deployment"
        if name not in (
            granted if isinstance(granted, tuple | list | set | frozenset) else set(granted)
        ):
            return f"the tool {name!r} is not granted to this agent"
        if privilege < t.min_privilege:
            return (
                f"the tool {name!r} needs {t.min_privilege.name.lower()} privilege "
                f"(the caller has {Privilege(privilege).name.lower()})"
            )
        return None

    def grant_refusal(
        self, names: Iterable[str], privilege: Privilege, *, kept: Iterable[str] = ()
    ) -> str | None:
        """Why someone at ``privilege`` may not grant ``names`` to an agent, or None.

        Each name must be registered, enabled, and within ``privilege``; the first one
        that is not gives the reason. A name in ``kept`` (granted earlier, by someone
        who could) passes while it is still registered, so editing another field of an
        agent does not need its granter's privilege. Personas and skills cap their
        tools with this when they are saved.
        """
        granted = list(dict.fromkeys(names))
        previous = set(kept)
        for name in granted:
            if name in previous and name in self:
                continue
            problem = self.refusal(name, granted, privilege)
            if problem is not None:
                return problem
        return None

    def available(self, granted: Iterable[str], privilege: Privilege) -> list[Tool]:
        """The tools this agent may offer the model, in grant order, once each."""
        names = list(dict.fromkeys(granted))
        if not names:
            return []
        # Why not refusal() per name: the same checks, on one index instead of a scan
        # of every source for each name (this runs at the start of every run).
        index, own, enabled = self._index(), self._tools, self._enabled
        return [
            t
            for n in names
            if (t := index.get(n)) is not None
            and (enabled is None or n not in own or n in enabled)
            and privilege >= t.min_privilege
        ]

    def definitions(self, granted: Iterable[str], privilege: Privilege) -> list[ToolDefinition]:
        return [t.definition for t in self.available(granted, privilege)]
