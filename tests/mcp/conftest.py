"""A real MCP server (tests/mcp/mcp_server.py, the SDK's MCPServer) over stdio and HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.mcp.config import McpServerConfig, parse_mcp_config

SERVER = Path(__file__).with_name("mcp_server.py")
# Why generous: a cold start imports the SDK (seconds on a loaded CI box); the tests
# assert what happens, never how fast.
STARTUP_S = 120


def stdio_config(name: str = "t", **body: Any) -> McpServerConfig:
    raw: dict[str, Any] = {
        "command": [sys.executable, str(SERVER)],
        "startup_seconds": STARTUP_S,
        "tools": ["echo", "add"],
        **body,
    }
    [config] = parse_mcp_config({name: raw})
    return config


def http_config(url: str, name: str = "h", **body: Any) -> McpServerConfig:
    raw: dict[str, Any] = {"url": url, "startup_seconds": STARTUP_S, "tools": ["echo"], **body}
    [config] = parse_mcp_config({name: raw})
    return config


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by a parent that is not us) counts as gone.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


@pytest.fixture(scope="module")
def mcp_http_url() -> Iterator[str]:
    """The test server over streamable HTTP on a loopback port (one per module)."""
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--http"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "PORT n", printed once the socket listens
        assert line.startswith("PORT "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}/mcp"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
