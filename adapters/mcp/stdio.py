"""A stdio transport for MCP servers that a misbehaving server cannot exhaust.

The SDK's ``stdio_client`` reads a server's stdout line by line with no bound on a
line and sends its stderr to ours. A server is code we did not write, so this one:

* starts the server in a session (and process group) of its own, with only the
  environment it is given, and stops the whole group (a stdin close, SIGTERM, then
  SIGKILL) when the connection ends, so no grandchild (``npx`` -> ``node``) is left;
* reads stdout with a line limit: a message past ``max_message_bytes`` ends the
  connection (the caller restarts the server) instead of growing our memory;
* skips stdout lines that are not JSON-RPC (counted, logged once);
* drains stderr into a bounded tail kept for ``coterie mcp list`` and the log.

It yields the SDK's transport streams, so ``mcp.Client`` drives it like its own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import mcp.types as mcp_types
from mcp.shared.message import SessionMessage

__all__ = ["StdioProcess", "bounded_stdio"]

log = logging.getLogger(__name__)

_EXIT_GRACE_S = 2.0  # after stdin closes, before SIGTERM
_KILL_GRACE_S = 2.0  # after SIGTERM, before SIGKILL


@dataclass(slots=True)
class StdioProcess:
    """What the transport knows of its server process, for health and figures."""

    pid: int | None = None
    returncode: int | None = None
    junk_lines: int = 0
    failure: str | None = None  # why the connection ended, when the server's fault
    stderr_tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=40)
    )
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def stderr_text(self) -> str:
        return "".join(self.stderr_tail)[-4000:]


@asynccontextmanager
async def bounded_stdio(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
    max_message_bytes: int = 8_000_000,
    process: StdioProcess | None = None,
    name: str = "mcp",
) -> AsyncIterator[tuple[Any, Any]]:
    """Start ``command`` and yield ``(read_stream, write_stream)`` for ``mcp.Client``.

    Raise ``OSError`` when the command cannot be started (not found, not executable).
    """
    info = process if process is not None else StdioProcess()
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
        limit=max_message_bytes,
    )
    info.pid = proc.pid
    read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](0)

    async def read_stdout() -> None:
        assert proc.stdout is not None
        try:
            async with read_send:
                while True:
                    try:
                        line = await proc.stdout.readline()
                    except ValueError:  # the line passed the limit
                        info.failure = f"the server sent a message over {max_message_bytes:,} bytes"
                        log.warning("MCP server %s: %s; cut off", name, info.failure)
                        return
                    if not line:
                        return
                    text = line.strip()
                    if not text:
                        continue
                    try:
                        message = mcp_types.jsonrpc_message_adapter.validate_json(
                            text, by_name=False
                        )
                    except ValueError:
                        info.junk_lines += 1
                        if info.junk_lines == 1:
                            log.warning(
                                "MCP server %s wrote a line that is not JSON-RPC to stdout; "
                                "such lines are skipped",
                                name,
                            )
                        continue
                    await read_send.send(SessionMessage(message))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return  # the session is gone
        finally:
            info.closed.set()

    async def write_stdin() -> None:
        assert proc.stdin is not None
        try:
            async with write_recv:
                async for message in write_recv:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    proc.stdin.write(data.encode("utf-8") + b"\n")
                    await proc.stdin.drain()
        except (ConnectionError, OSError, anyio.ClosedResourceError):
            # The server is gone: end the read side so a pending request fails now.
            await read_send.aclose()

    async def read_stderr() -> None:
        assert proc.stderr is not None
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await proc.stderr.read(4096):
                info.stderr_tail.append(chunk.decode("utf-8", errors="replace"))

    tasks = [
        asyncio.create_task(read_stdout(), name=f"mcp-{name}-stdout"),
        asyncio.create_task(write_stdin(), name=f"mcp-{name}-stdin"),
        asyncio.create_task(read_stderr(), name=f"mcp-{name}-stderr"),
    ]
    try:
        yield read_recv, write_send
    finally:
        # Why shielded: a cancelled caller must still stop the server, or it leaks.
        await asyncio.shield(_stop(proc, tasks, info))
        await read_recv.aclose()
        await write_send.aclose()


async def _stop(
    proc: asyncio.subprocess.Process, tasks: list[asyncio.Task[None]], info: StdioProcess
) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(OSError, RuntimeError):
            proc.stdin.close()
    if not await _exited(proc, _EXIT_GRACE_S):
        _signal_group(proc.pid, signal.SIGTERM)
        if not await _exited(proc, _KILL_GRACE_S):
            _signal_group(proc.pid, signal.SIGKILL)
            await _exited(proc, _KILL_GRACE_S)
    # Why always: the server may have exited and left children in its group.
    _signal_group(proc.pid, signal.SIGKILL)
    info.returncode = proc.returncode
    # Why close the transport: a pipe we stopped reading (an over-long message) never
    # reports its end, and an unclosed transport complains when the loop is gone.
    transport = getattr(proc, "_transport", None)
    close = getattr(transport, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):
            close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _exited(proc: asyncio.subprocess.Process, seconds: float) -> bool:
    # Why poll returncode and not wait(): on 3.11 wait() also waits for the pipes to
    # close, which a grandchild holding them delays; the group kill ends that.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while proc.returncode is None:
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def safe_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The few variables a server needs to run (the SDK's list), and ``extra``."""
    from mcp.client.stdio import get_default_environment

    return {**get_default_environment(), **extra}
