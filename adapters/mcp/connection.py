"""One live session with an MCP server, owned by a task of its own.

Why a task: ``mcp.Client`` holds anyio cancel scopes that must be left by the task
that entered them, and a server is started inside some run's tool call but stopped in
the drain. The owner task enters the client, lists the tools, and waits until it is
told to stop or the server dies; calls from any task go through the client meanwhile.

A stdio server runs under :func:`adapters.mcp.stdio.bounded_stdio`; an HTTP server is
reached through :class:`GuardedTransport`, which puts every request (the first and
each later one) through the SSRF guard with the server's allowlist and connects to
the address it checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import mcp.types as mcp_types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from adapters.mcp.config import McpServerConfig
from adapters.mcp.stdio import StdioProcess, bounded_stdio, safe_environment
from executor.errors import ConfigError, ToolFailed
from executor.tools.netguard import AllowlistGuard

__all__ = ["Connection", "GuardedTransport", "McpTool", "render_result"]

log = logging.getLogger(__name__)

McpTool = mcp_types.Tool
_LIST_PAGES = 50


class GuardedTransport(httpx2.AsyncBaseTransport):
    """An httpx2 transport that checks every request's host and connects to the
    address it checked (the original name stays in ``Host`` and TLS SNI), and cuts a
    request's answer off past ``max_bytes`` (the SDK bounds an SSE event, not a body)."""

    def __init__(self, guard: AllowlistGuard, *, max_bytes: int = 8_000_000) -> None:
        self.guard = guard
        self.max_bytes = max_bytes
        self.inner = httpx2.AsyncHTTPTransport(trust_env=False)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        target = await self.guard.check(str(request.url))
        if "host" not in request.headers:
            request.headers["Host"] = request.url.netloc.decode("ascii")
        request.url = request.url.copy_with(host=str(target.ip))
        if request.url.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": target.host}
        response = await self.inner.handle_async_request(request)
        if request.method == "POST":  # a call's answer; the GET stream is the SDK's, per event
            response.stream = _Capped(response.stream, self.max_bytes)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Capped(httpx2.AsyncByteStream):
    def __init__(self, inner: Any, limit: int) -> None:
        self.inner = inner
        self.limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self.inner:
            seen += len(chunk)
            if seen > self.limit:
                raise httpx2.ReadError(f"the server sent an answer over {self.limit:,} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class Connection:
    """A started server: its tools, its process (stdio), and the way to call it."""

    def __init__(
        self,
        config: McpServerConfig,
        *,
        environ: Mapping[str, str],
        guard: AllowlistGuard | None = None,
        max_message_bytes: int = 8_000_000,
    ) -> None:
        self.config = config
        self._environ = environ
        self._guard = guard or AllowlistGuard.of(networks=config.allow_networks)
        self._max_message_bytes = max_message_bytes
        self.process: StdioProcess | None = StdioProcess() if config.transport == "stdio" else None
        self.tools: dict[str, McpTool] = {}
        self.client: Client | None = None
        self.started_s: float | None = None  # how long the start took
        self.ended = asyncio.Event()
        self.error: str | None = None
        self.failure_counted = False  # the source's backoff counted this one's end
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.client is not None and not self.ended.is_set()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self) -> None:
        """Connect (start the process), handshake and list the tools, within
        ``startup_seconds``. Raise :class:`ToolFailed` saying why not."""
        began = time.perf_counter()
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._own(ready), name=f"mcp-{self.config.name}")
        try:
            async with asyncio.timeout(self.config.startup_s):
                await asyncio.shield(ready)
        except TimeoutError:
            await self.close()
            raise ToolFailed(
                f"the MCP server {self.config.name} did not start within "
                f"{self.config.startup_s:g} s{self._stderr_hint()}"
            ) from None
        except ToolFailed:
            await self.close()
            raise
        self.started_s = time.perf_counter() - began

    async def _own(self, ready: asyncio.Future[None]) -> None:
        try:
            async with self._client() as client:
                tools = await _list_tools(client)
                self.client, self.tools = client, tools
                ready.set_result(None)
                await self._wait_for_end()
        except asyncio.CancelledError:
            if not ready.done():
                ready.cancel()
            raise
        except BaseException as exc:  # an ExceptionGroup from the SDK's task group, too
            reason = self._why(exc)
            if not ready.done():
                ready.set_exception(ToolFailed(reason))
            else:
                self.error = reason
                log.warning("MCP server %s: the connection ended: %s", self.config.name, reason)
        finally:
            if self.process is not None and self.process.failure:
                self.error = self.process.failure
            self.ended.set()

    async def _wait_for_end(self) -> None:
        waits = [asyncio.ensure_future(self._stop.wait())]
        if self.process is not None:
            waits.append(asyncio.ensure_future(self.process.closed.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if self.process is not None and self.process.closed.is_set() and not self._stop.is_set():
            self.error = self.process.failure or "the server process exited"

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[Client]:
        info = mcp_types.Implementation(name="coterie", version="0.1.0")
        c = self.config
        if c.transport == "stdio":
            assert self.process is not None
            transport = bounded_stdio(
                c.command,
                env=safe_environment(c.resolved_env(self._environ)),
                cwd=c.cwd,
                max_message_bytes=self._max_message_bytes,
                process=self.process,
                name=c.name,
            )
            async with Client(transport, client_info=info, cache=None) as client:
                yield client
            return
        assert c.url is not None
        await self._guard.check(c.url)  # refuse before any connection, with the reason
        async with (
            httpx2.AsyncClient(
                headers=c.resolved_headers(self._environ),
                transport=GuardedTransport(self._guard, max_bytes=self._max_message_bytes),
                timeout=httpx2.Timeout(30.0, read=300.0),
                follow_redirects=False,
                trust_env=False,
            ) as http,
            Client(
                streamable_http_client(c.url, http_client=http), client_info=info, cache=None
            ) as client,
        ):
            yield client

    def _why(self, exc: BaseException) -> str:
        """One line for an operator and a model: why the server could not be used."""
        if self.process is not None and self.process.failure:
            return self.process.failure
        leaf = _leaf(exc)
        if isinstance(leaf, ToolFailed | ConfigError):  # a refused URL, a variable not set
            return str(leaf)
        if isinstance(leaf, FileNotFoundError):
            return f"cannot start {self.config.command[0]!r}: no such command"
        if isinstance(leaf, PermissionError):
            return f"cannot start {self.config.command[0]!r}: not executable"
        if isinstance(leaf, MCPError):
            return f"the server refused the connection: {leaf}{self._stderr_hint()}"
        if isinstance(leaf, httpx2.HTTPError):
            return f"cannot reach {self.config.url}: {type(leaf).__name__}: {leaf}"
        return f"{type(leaf).__name__}: {leaf}{self._stderr_hint()}"

    def _stderr_hint(self) -> str:
        tail = self.process.stderr_text.strip() if self.process is not None else ""
        if not tail:
            return ""
        last = tail.splitlines()[-1][-300:]
        return f" (its last stderr line: {last})"

    async def call(self, name: str, arguments: dict[str, Any]) -> mcp_types.CallToolResult:
        """Call ``name``; raise :class:`ConnectionLost` when the server goes away meanwhile."""
        client = self.client
        if client is None or self.ended.is_set():
            raise ConnectionLost(self.error or "the server is not running")
        call = asyncio.ensure_future(client.call_tool(name, arguments))
        # Why the process too: its stdout closing (an exit, an over-long message) ends
        # the call at once, before the connection has finished stopping the server.
        lost = [asyncio.ensure_future(self.ended.wait())]
        if self.process is not None:
            lost.append(asyncio.ensure_future(self.process.closed.wait()))
        try:
            await asyncio.wait([call, *lost], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            call.cancel()
            raise
        finally:
            for w in lost:
                w.cancel()
        if not call.done():
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await call
            raise ConnectionLost(self._lost())
        try:
            return call.result()
        except MCPError as exc:
            if self.ended.is_set() or exc.error.code == mcp_types.CONNECTION_CLOSED:
                if self.process is None:
                    # Why wait a moment: the owner task records why the connection ended
                    # (an HTTP error); a stdio server's end is known from its process.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await self.ended.wait()
                raise ConnectionLost(self._lost()) from exc
            raise

    def _lost(self) -> str:
        if self.process is not None and self.process.failure:
            return self.process.failure
        if self.error:
            return self.error
        if self.process is not None and self.process.closed.is_set():
            return "the server process exited"
        return "the server stopped during the call"

    async def close(self) -> None:
        """Stop the server (stdio: its whole process group). Idempotent."""
        self._stop.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            async with asyncio.timeout(10.0):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        except Exception:
            log.debug("MCP server %s closed with an error", self.config.name, exc_info=True)
        self.client = None


class ConnectionLost(Exception):
    """The server went away (exited, crashed, cut off) while it was being used."""


async def _list_tools(client: Client) -> dict[str, McpTool]:
    tools: dict[str, McpTool] = {}
    cursor: str | None = None
    for _ in range(_LIST_PAGES):
        page = await client.list_tools(cursor=cursor)
        for t in page.tools:
            tools[t.name] = t
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def _leaf(exc: BaseException) -> BaseException:
    """The first non-group exception inside ``exc`` (the SDK raises ExceptionGroups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def render_result(result: mcp_types.CallToolResult) -> str:
    """A tool result as text for the model (images and binary resources are described)."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
            parts.append(f"[{block.type}: {block.mime_type}, {len(block.data) * 3 // 4:,} bytes]")
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(f"[resource {block.name}: {block.uri}]")
        elif isinstance(block, mcp_types.EmbeddedResource):
            res = block.resource
            if isinstance(res, mcp_types.TextResourceContents):
                parts.append(res.text)
            else:
                parts.append(f"[binary resource {res.uri}, {res.mime_type or 'unknown type'}]")
    if not parts and result.structured_content is not None:
        import json

        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    return "\n".join(parts)
