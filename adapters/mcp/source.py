"""One MCP server as a :class:`~executor.tools.sources.ToolSource`.

What it offers the registry is decided here, tool by tool, deny by default:

* ``tools = [...]`` lists it (otherwise: ``not listed``, never offered);
* an operator accepted it (``coterie mcp accept``): its name, description and
  schema are pinned (otherwise: ``not accepted``);
* once the server has been reached in this process, it still lists the tool
  (otherwise: ``missing``) with the pinned hash (otherwise: ``changed``).

The offered tools carry the pinned schema and the configured privilege and approval;
the registry applies grants, privilege, approval, timeouts and result caps to them like
to any tool, and the run loop audits each call. Before the server is first reached, the
pins alone say what is offered, so a stdio server starts only when a tool is called.

A call runs under the tool's timeout; past it, or when the server dies, the server is
stopped (its whole process group), the call fails with a message the model reads, and
the next call starts it again, after a backoff that doubles with each consecutive
failure (1 s to 60 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from adapters.mcp.config import McpServerConfig, ToolPolicy
from adapters.mcp.pins import PinStore, ToolPin, schema_hash
from executor.agent import Caller
from executor.errors import ToolFailed
from executor.tools.netguard import AllowlistGuard
from executor.tools.registry import Tool, ToolContext
from executor.tools.sources import schema_tool

if TYPE_CHECKING:
    from adapters.mcp.connection import Connection, McpTool

__all__ = ["AcceptReport", "McpServerSource", "Notify", "ToolState", "hints"]

log = logging.getLogger(__name__)

#: ``(message, caller whose call revealed it or None)``: where changes are reported.
Notify = Callable[[str, Caller | None], Awaitable[None]]

ToolStatus = Literal["offered", "not accepted", "changed", "missing", "not listed"]
_BACKOFF_MAX_S = 60.0
_REFRESH_S = 60.0


@dataclass(frozen=True, slots=True)
class ToolState:
    tool: str
    exposed: str
    status: ToolStatus
    policy: ToolPolicy | None  # None for a tool tools = [...] does not list
    # What a resumed run does with a call of it that was cut off (offered tools only):
    # "runs again (read-only)", "runs again (idempotent)" or "asks again" (no hint, or
    # the tool needs approval).
    on_resume: str | None = None


@dataclass(slots=True)
class AcceptReport:
    server: str
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # listed in tools, not on the server
    unlisted: list[str] = field(default_factory=list)  # on the server, not in tools


class McpServerSource:
    """The tools of one ``[mcp.NAME]`` server, started lazily, stopped in the drain."""

    def __init__(
        self,
        config: McpServerConfig,
        *,
        pins: PinStore,
        environ: Mapping[str, str],
        guard: AllowlistGuard | None = None,
        notify: Notify | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        max_message_bytes: int = 8_000_000,
        refresh_s: float | None = _REFRESH_S,
    ) -> None:
        self.config = config
        self._store = pins
        self._environ = environ
        self._guard = guard
        self._notify = notify
        self._monotonic = monotonic
        self._max_message_bytes = max_message_bytes
        self._refresh_s = refresh_s
        self._pins: dict[str, ToolPin] = {}
        self._live: dict[str, McpTool] | None = None  # the server's listing, once reached
        self._offered: list[Tool] = []
        self._built: dict[tuple[str, str, bool, bool], Tool] = {}
        self._states: list[ToolState] = []
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()
        self._failures = 0
        self._retry_at = 0.0
        self.last_error: str | None = None
        self._notified: str | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._refresher: asyncio.Task[None] | None = None
        self.calls = 0
        self._rebuild()

    # --- ToolSource ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"mcp.{self.config.name}"

    def tools(self) -> Sequence[Tool]:
        return list(self._offered)

    async def open(self) -> None:
        await self.refresh()
        if self._refresh_s and self._refresher is None:
            self._refresher = asyncio.create_task(
                self._refresh_loop(self._refresh_s), name=f"mcp-{self.config.name}-pins"
            )

    async def close(self) -> None:
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        async with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # --- what is offered -------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the pins again (an operator may have accepted the server meanwhile)."""
        self._pins = await self._store.pins(self.config.name)
        self._rebuild()

    async def _refresh_loop(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.refresh()
            except Exception:
                log.warning(
                    "MCP server %s: could not read its pins", self.config.name, exc_info=True
                )

    def states(self) -> list[ToolState]:
        return list(self._states)

    @property
    def reached(self) -> bool:
        """Whether the server's own listing is known (it was reached in this process)."""
        return self._live is not None

    def _rebuild(self) -> None:
        c = self.config
        offered: list[Tool] = []
        states: list[ToolState] = []
        live = self._live
        for t in c.tools:
            pin = self._pins.get(t)
            status: ToolStatus = "offered"
            if pin is None:
                status = "not accepted"
            elif live is not None and t not in live:
                status = "missing"
            elif live is not None and _hash(live[t]) != pin.schema_hash:
                status = "changed"
            if status == "offered" and pin is not None:
                tool = self._tool(pin)
                offered.append(tool)
                states.append(ToolState(t, c.exposed(t), status, c.policy(t), _on_resume(tool)))
            else:
                states.append(ToolState(t, c.exposed(t), status, c.policy(t)))
        if live is not None:
            for t in sorted(set(live) - set(c.tools)):
                states.append(ToolState(t, c.exposed(t), "not listed", None))
        self._offered, self._states = offered, states

    def _tool(self, pin: ToolPin) -> Tool:
        # Why both: what the operator accepted, and what the server says now once it is
        # reached (a server that stops calling a tool idempotent is believed at once).
        read_only, idempotent = pin.read_only, pin.idempotent
        live = self._live.get(pin.tool) if self._live is not None else None
        if live is not None:
            now_read_only, now_idempotent = hints(live)
            read_only, idempotent = read_only and now_read_only, idempotent and now_idempotent
        key = (pin.tool, pin.schema_hash, read_only, idempotent)
        built = self._built.get(key)
        if built is None:
            policy = self.config.policy(pin.tool)
            tool_name = pin.tool

            async def call(arguments: dict[str, Any], ctx: ToolContext) -> str:
                return await self._call(tool_name, arguments, ctx)

            built = schema_tool(
                self.config.exposed(pin.tool),
                description=pin.description or pin.tool,
                parameters=pin.input_schema,
                call=call,
                # Why the start-up too: the first call starts the server; our own
                # timeouts (start, call) fire first, with a message that says which.
                timeout_s=self.config.startup_s + self.config.call_timeout(pin.tool) + 5.0,
                max_result_chars=self.config.max_result_chars,
                requires_approval=policy.approval,
                min_privilege=policy.privilege,
                status=f"using {self.config.name} · {pin.tool}",
                read_only=read_only,
                idempotent=idempotent,
            )
            self._built[key] = built
        return built

    # --- the server -------------------------------------------------------------------

    @property
    def health(self) -> str:
        conn = self._conn
        if conn is not None and conn.alive:
            pid = f", pid {conn.pid}" if conn.pid else ""
            return f"running{pid}"
        wait = self._retry_at - self._monotonic()
        if self.last_error and wait > 0:
            return f"failed ({self.last_error}); restarts after {wait:.0f} s"
        if self.last_error:
            return f"stopped ({self.last_error}); starts on the next call"
        return "not started (starts on the first call)"

    @property
    def connection(self) -> Connection | None:
        return self._conn

    async def connect(self, caller: Caller | None = None) -> Connection:
        """The running connection, started if needed (respecting the backoff).
        Raise :class:`ToolFailed` saying why not."""
        from adapters.mcp.connection import Connection

        async with self._lock:
            conn = self._conn
            if conn is not None and conn.alive:
                return conn
            if conn is not None:
                self._conn = None
                await conn.close()
            wait = self._retry_at - self._monotonic()
            if wait > 0:
                raise ToolFailed(
                    f"the MCP server {self.config.name} failed ({self.last_error}); "
                    f"it is started again in {wait:.0f} s"
                )
            conn = Connection(
                self.config,
                environ=self._environ,
                guard=self._guard,
                max_message_bytes=self._max_message_bytes,
            )
            try:
                await conn.start()
            except ToolFailed as exc:
                self._failed(str(exc))
                raise
            self._conn = conn
            self._live = dict(conn.tools)
            self._rebuild()
            self._watch(conn)
            log.info(
                "MCP server %s started in %.2f s (%d tools, %d offered)",
                self.config.name,
                conn.started_s or 0.0,
                len(conn.tools),
                len(self._offered),
            )
        await self._report_changes(caller)
        return conn

    def _watch(self, conn: Connection) -> None:
        async def watch() -> None:
            await conn.ended.wait()
            if self._conn is conn and conn.error and not conn.failure_counted:
                log.warning(
                    "MCP server %s stopped: %s; restarted on the next call",
                    self.config.name,
                    conn.error,
                )
                conn.failure_counted = True
                self._failed(conn.error)

        self._spawn(watch())

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _failed(self, reason: str) -> None:
        self._failures += 1
        self.last_error = reason
        self._retry_at = self._monotonic() + min(_BACKOFF_MAX_S, 2.0 ** (self._failures - 1))

    def _cut_off(self, conn: Connection, reason: str) -> None:
        """Stop a server that misbehaved, without making the run wait for it."""
        if self._conn is conn:
            self._conn = None
        if not conn.failure_counted:
            conn.failure_counted = True
            self._failed(reason)
        self._spawn(conn.close())

    async def _report_changes(self, caller: Caller | None) -> None:
        lines = []
        for s in self._states:
            if s.status == "changed":
                lines.append(f"`{s.tool}` changed since it was accepted")
            elif s.status == "missing":
                lines.append(f"`{s.tool}` is no longer offered by the server")
            elif s.status == "not accepted" and self._live is not None and s.tool in self._live:
                lines.append(f"`{s.tool}` is listed but not accepted")
        if not lines:
            self._notified = None
            return
        text = (
            f"MCP server **{self.config.name}**: " + "; ".join(lines) + ". Those tools are off "
            f"until an operator runs `coterie mcp accept {self.config.name}`."
        )
        if text == self._notified:
            return
        self._notified = text
        log.warning("%s", text.replace("**", "").replace("`", ""))
        if self._notify is not None:
            try:
                await self._notify(text, caller)
            except Exception:
                log.warning("could not report the MCP change to the admins", exc_info=True)

    # --- calling ------------------------------------------------------------------------

    async def _call(self, tool: str, arguments: dict[str, Any], ctx: ToolContext) -> str:
        from mcp.shared.exceptions import MCPError

        from adapters.mcp.connection import ConnectionLost, render_result

        conn = await self.connect(ctx.caller)
        if not any(t.name == self.config.exposed(tool) for t in self._offered):
            raise ToolFailed(
                f"{self.config.exposed(tool)} is off: the server's tool changed since an "
                "operator accepted it"
            )
        timeout = self.config.call_timeout(tool)
        self.calls += 1
        try:
            async with asyncio.timeout(timeout):
                result = await conn.call(tool, arguments)
        except TimeoutError:
            self._cut_off(conn, f"{tool} did not answer within {timeout:g} s")
            raise ToolFailed(
                f"the MCP server {self.config.name} did not answer within {timeout:g} s; "
                "it was stopped"
            ) from None
        except ConnectionLost as exc:
            self._cut_off(conn, str(exc))
            raise ToolFailed(f"the MCP server {self.config.name} stopped: {exc}") from None
        except MCPError as exc:
            raise ToolFailed(f"{self.config.exposed(tool)} failed: {exc}") from None
        self._failures = 0
        text = render_result(result)
        if result.is_error:
            raise ToolFailed(text or f"{self.config.exposed(tool)} reported an error")
        return text

    # --- accept ----------------------------------------------------------------------------

    async def accept(self, *, by: str) -> AcceptReport:
        """Pin what the server offers now of the listed tools (``coterie mcp accept``)."""
        conn = await self.connect()
        live = conn.tools
        report = AcceptReport(server=self.config.name)
        old = await self._store.pins(self.config.name)
        pins: list[ToolPin] = []
        for t in self.config.tools:
            if t not in live:
                report.missing.append(t)
                continue
            read_only, idempotent = hints(live[t])
            pin = ToolPin.of(
                self.config.name,
                t,
                live[t].description or "",
                live[t].input_schema,
                accepted_by=by,
                read_only=read_only,
                idempotent=idempotent,
            )
            before = old.get(t)
            if before is None:
                report.new.append(t)
            elif before.schema_hash != pin.schema_hash:
                report.changed.append(t)
            else:
                report.unchanged.append(t)
                # Keep when and by whom it was first accepted; the hints are today's.
                pin = replace(before, read_only=read_only, idempotent=idempotent)
            pins.append(pin)
        report.unlisted = sorted(set(live) - set(self.config.tools))
        await self._store.replace(self.config.name, pins)
        self._pins = {p.tool: p for p in pins}
        self._rebuild()
        return report


def _on_resume(tool: Tool) -> str:
    if not tool.repeatable:  # neither hint, or it needs approval: that always asks
        return "asks again"
    return "runs again (read-only)" if tool.read_only else "runs again (idempotent)"


def hints(tool: McpTool) -> tuple[bool, bool]:
    """``(read_only, idempotent)`` from the tool's annotations (``readOnlyHint``,
    ``idempotentHint``); absent, they are false (MCP's defaults): a resumed run asks
    the member again before calling such a tool. A read-only tool is idempotent too."""
    notes = getattr(tool, "annotations", None)
    read_only = getattr(notes, "read_only_hint", None) is True
    idempotent = read_only or getattr(notes, "idempotent_hint", None) is True
    return read_only, idempotent


def _hash(tool: McpTool) -> str:
    return schema_hash(tool.name, tool.description or "", tool.input_schema)
