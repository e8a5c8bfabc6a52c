"""What a tool call costs by where the tool lives: built in, an MCP server over stdio,
an MCP server over streamable HTTP (loopback); a stdio server's cold start; the memory
a running server takes, and what coterie's own process grows by to speak MCP.

    python benchmarks/tools.py [--calls 50] [--starts 5]

The servers are the test server (``tests/mcp/mcp_server.py``, the SDK's ``MCPServer``).
Each run of the agent calls the three tools in one step (the model is scripted, so only
the tools cost time); the durations are the audit's (``ToolCallFinished.duration_ms``),
medians over ``--calls`` runs. Figures, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.mcp import InMemoryPins, McpServerSource, parse_mcp_config  # noqa: E402
from executor import (  # noqa: E402
    Caller,
    Executor,
    Invocation,
    Message,
    Privilege,
    RunnableAgent,
    ToolCallFinished,
    ToolRegistry,
    default_registry,
)
from executor.testing import AuditCapture, ScriptedModel, call  # noqa: E402

SERVER = ROOT / "tests" / "mcp" / "mcp_server.py"
OWNER = Caller(user_id="bench", privilege=Privilege.OWNER)
POLICY = {"echo": {"privilege": "user", "approval": False}}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _group_rss_mb(pgid: int) -> float:
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == pgid:
                total += _rss_mb(int(entry.name))
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
    return total


def _stdio(name: str = "s") -> McpServerSource:
    [config] = parse_mcp_config(
        {
            name: {
                "command": [sys.executable, str(SERVER)],
                "tools": ["echo"],
                "tool": POLICY,
                "startup_seconds": 120,
            }
        }
    )
    return McpServerSource(config, pins=InMemoryPins(), environ={}, refresh_s=None)


def _http(url: str) -> McpServerSource:
    [config] = parse_mcp_config(
        {
            "h": {
                "url": url,
                "allow_networks": ["127.0.0.1"],
                "tools": ["echo"],
                "tool": POLICY,
                "startup_seconds": 120,
            }
        }
    )
    return McpServerSource(config, pins=InMemoryPins(), environ={}, refresh_s=None)


async def cold_starts(n: int) -> list[float]:
    times = []
    for _ in range(n):
        source = _stdio()
        began = time.perf_counter()
        await source.connect()
        times.append(time.perf_counter() - began)
        await source.close()
    return times


async def main(calls: int, starts: int) -> None:
    import logging

    logging.getLogger("adapters.mcp").setLevel(logging.ERROR)  # "not accepted" before accept
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    rss_before = _rss_mb(os.getpid())
    with tempfile.TemporaryFile("w+") as out:
        http = subprocess.Popen(
            [sys.executable, str(SERVER), "--http"],
            stdout=subprocess.PIPE,
            stderr=out,
            text=True,
            start_new_session=True,
        )
        try:
            assert http.stdout is not None
            port = int(http.stdout.readline().split()[1])
            await _measure(calls, starts, f"http://127.0.0.1:{port}/mcp", http.pid, rss_before)
        finally:
            # Why SIGKILL to the group: uvicorn waits for open event streams on SIGTERM.
            os.killpg(http.pid, signal.SIGKILL)
            http.wait(timeout=30)


async def _measure(calls: int, starts: int, url: str, http_pid: int, rss_before: float) -> None:
    stdio, remote = _stdio(), _http(url)
    await stdio.accept(by="bench")
    await remote.accept(by="bench")
    rss_connected = _rss_mb(os.getpid())
    calculator = default_registry().get("calculator")
    assert calculator is not None
    registry = ToolRegistry([calculator], sources=[stdio, remote])
    audit = AuditCapture()
    executor = Executor(tools=registry, audit=audit)
    agent_tools = ("calculator", "s__echo", "h__echo")
    for _ in range(calls):
        model = ScriptedModel(
            [
                [
                    call("calculator", expression="(1 + 2) * 3"),
                    call("s__echo", text="hello"),
                    call("h__echo", text="hello"),
                ],
                "done",
            ]
        )
        await executor.run(
            RunnableAgent(model=model, tools=agent_tools),
            Invocation(messages=[Message.user("go")], caller=OWNER),
        )
    by_tool: dict[str, list[float]] = {}
    for e in audit.events:
        if isinstance(e, ToolCallFinished):
            assert not e.is_error, e.result
            by_tool.setdefault(e.name, []).append(e.duration_ms)
    conn = stdio.connection
    stdio_rss = _group_rss_mb(conn.pid) if conn is not None and conn.pid else float("nan")
    http_rss = _rss_mb(http_pid)
    await registry.close()
    cold = await cold_starts(starts)

    print(f"\n{calls} runs, each calling the three tools in one step (median, p90):")
    print("| tool | where | median ms | p90 ms |")
    print("|---|---|---|---|")
    for name, where in (
        ("calculator", "built in"),
        ("s__echo", "MCP, stdio"),
        ("h__echo", "MCP, streamable HTTP (loopback)"),
    ):
        d = sorted(by_tool.get(name, [float("nan")]))
        p90 = d[min(len(d) - 1, int(len(d) * 0.9))]
        print(f"| `{name}` | {where} | {statistics.median(d):.2f} | {p90:.2f} |")
    print(f"\nstdio cold start (start the process, handshake, list tools), {starts} starts:")
    print(f"median {statistics.median(cold):.2f} s, min {min(cold):.2f} s, max {max(cold):.2f} s")
    print("\nmemory:")
    print(f"| stdio server (its process group) | {stdio_rss:.1f} MB |")
    print(f"| HTTP server process | {http_rss:.1f} MB |")
    print(
        f"| coterie's process: + the mcp SDK and two connections | "
        f"+{rss_connected - rss_before:.1f} MB ({rss_before:.1f} -> {rss_connected:.1f}) |"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.starts))
