"""What coterie costs a small VM, beside the floor of the libraries it stands on.

    python benchmarks/footprint.py [--runs 3] [--chats 100]

Printed side by side, in one run, each a real process:

* the import floor: discord.py, SQLModel, aiosqlite, anthropic, openai and APScheduler
  imported together in a bare interpreter (RSS, import time);
* ``coterie run`` idle after start: connected to the fake Discord
  (``tests/fakediscord``), both providers configured (a loopback LLMock), RSS once
  the "ready" line is out, and the time from process start to that line;
* the same process after ``--chats`` concurrent chat runs (every member's mention
  answered; ``COTERIE_LANE_SLOTS`` raised so that all of them are in flight at once);
* the same process's first member message after "ready" beside the next ones: from
  the fake Discord sending the mention to the LLMock receiving the model request
  (issue 19: the first paid for the provider's SDK import, 474 ms vs 17-19 ms);
* ``coterie ask`` from process start to its answer against the LLMock, with one
  provider's key (OpenAI's, Anthropic's) and with both, beside ``import anthropic``
  alone in a bare interpreter (only a configured provider's SDK is imported).

Goals: idle within 30 MB of the floor, under 250 MB after the 100 runs, ready in
under 3 s (issue 11); the first message as fast as the next ones, ``ask`` with an
Anthropic key under 2 s (issue 19). Figures, not a test: nothing here asserts.
Every child process may cache its bytecode (``PYTHONDONTWRITEBYTECODE`` is dropped):
an installed coterie has its ``.pyc`` files, and compiling on each start is not a
cost users pay. Needs the dev extras (``pip install -e '.[dev]'``: llmock, aiohttp).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakediscord import FakeDiscord  # noqa: E402
from tests.lifecycle.conftest import SHIM, Proc  # noqa: E402

FLOOR = (
    "import time; t = time.perf_counter();"
    "import discord, sqlmodel, aiosqlite, anthropic, openai, apscheduler;"
    "took = time.perf_counter() - t;"
    "rss = [l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1];"
    "print(f'{int(rss) / 1024:.1f} {took:.2f}')"
)
ANSWER = "pong"


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _env(tmp: Path, llmock: Any, *, anthropic: bool, openai: bool, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COTERIE_", "ANTHROPIC_", "OPENAI_", "DISCORD_"))
        and k not in ("DATABASE_URL", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
    }
    env.update(
        DATABASE_URL=f"sqlite:///{tmp / 'data' / 'coterie.db'}",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join([str(SHIM), str(ROOT)]),
    )
    if anthropic:
        env.update(
            ANTHROPIC_API_KEY="sk-ant-bench", ANTHROPIC_BASE_URL=llmock.base_url("anthropic")
        )
    if openai:
        env.update(OPENAI_API_KEY="sk-bench", OPENAI_BASE_URL=llmock.base_url("openai"))
    env.update(extra)
    return env


def _bytecode_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def floor(runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", FLOOR],
            capture_output=True,
            text=True,
            check=True,
            env=_bytecode_env(),
        ).stdout.split()
        samples.append((float(out[0]), float(out[1])))
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def import_alone(module: str, runs: int) -> float:
    """Median seconds of ``python -c 'import MODULE'`` (process start to exit)."""
    walls = []
    for _ in range(runs + 1):  # the first warms the disk cache
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True, env=_bytecode_env())
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls[1:])


ANSWER_ROUTES = (
    ("POST", r"/webhooks/{id}/{token}"),
    ("PATCH", r"/webhooks/{id}/{token}/messages/{m}"),
)


async def _answered(fake: Any, since: int) -> Any:
    """Wait until a persona message (posted or edited) shows the whole answer."""
    return await fake.wait_for_any(
        ANSWER_ROUTES,
        lambda c: (c.json or {}).get("content") == ANSWER,
        timeout=60,
        since=since,
    )


async def _mention_to_request(fake: Any, llmock: Any, text: str) -> float:
    """Seconds from the fake Discord sending a mention to the LLMock's model request."""
    since = len(fake.calls)
    sent = time.monotonic()
    await fake.dispatch_message(f"<@{fake.bot_user['id']}> {text}", mentions=["bot"])
    await _answered(fake, since)
    started = [r.started_at for r in llmock.requests if r.started_at >= sent]
    return min(started) - sent


async def bot(runs: int, chats: int, llmock: Any) -> dict[str, float]:
    """Idle RSS, time to ready, and RSS after ``chats`` concurrent chats (medians)."""
    idle, ready, after, peak, first, later = [], [], [], [], [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            async with FakeDiscord() as fake:
                env = _env(
                    tmp,
                    llmock,
                    anthropic=True,
                    openai=True,
                    DISCORD_TOKEN=fake.token,
                    COTERIE_TEST_DISCORD_API=fake.api_base,
                    COTERIE_TEST_DISCORD_GATEWAY=fake.gateway_url,
                    COTERIE_LANE_SLOTS=str(chats),
                    COTERIE_BUDGET_DEFAULT_USD="1000",
                )
                started = time.perf_counter()
                proc = await Proc.start("run", env=env, cwd=tmp)
                try:
                    await proc.wait_for("coterie ready as", timeout=60)
                    ready.append(time.perf_counter() - started)
                    idle.append(_rss_mb(proc.pid))
                    first.append(await _mention_to_request(fake, llmock, "first"))
                    later.append(
                        statistics.median(
                            [await _mention_to_request(fake, llmock, f"next {i}") for i in range(5)]
                        )
                    )
                    since = len(fake.calls)
                    for i in range(chats):
                        await fake.dispatch_message(
                            f"<@{fake.bot_user['id']}> ping {i}", mentions=["bot"]
                        )
                    done = 0
                    while done < chats:
                        call = await fake.wait_for_any(
                            ANSWER_ROUTES,
                            lambda c: (c.json or {}).get("content") == ANSWER,
                            timeout=120,
                            since=since,
                        )
                        since = fake.calls.index(call) + 1
                        done += 1
                    after.append(_rss_mb(proc.pid))
                    peak.append(_rss_mb(proc.pid, "VmHWM"))
                    proc.signal()
                    await proc.exit_code()
                finally:
                    await proc.kill()
    return {
        "idle": statistics.median(idle),
        "ready": statistics.median(ready),
        "after": statistics.median(after),
        "peak": statistics.median(peak),
        "first": statistics.median(first),
        "later": statistics.median(later),
    }


def ask(runs: int, llmock: Any, *, anthropic: bool, openai: bool) -> tuple[float, float]:
    """Median seconds from `coterie ask` starting to its exit with the answer, and RSS."""
    walls, rss = [], []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        env = _env(tmp, llmock, anthropic=anthropic, openai=openai)
        subprocess.run(
            [sys.executable, "-m", "bot", "db", "upgrade"],
            env=env,
            cwd=tmp,
            check=True,
            capture_output=True,
        )
        for _ in range(runs + 1):  # the first warms the disk cache
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "bot", "ask", "ping"],
                env=env,
                cwd=tmp,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            out = proc.stdout.read() if proc.stdout else b""
            _, status, usage = os.wait4(proc.pid, 0)
            walls.append(time.perf_counter() - t0)
            rss.append(usage.ru_maxrss / 1024)
            if os.waitstatus_to_exitcode(status) != 0 or ANSWER not in out.decode():
                raise SystemExit(f"coterie ask failed: {out.decode()!r}")
    return statistics.median(walls[1:]), statistics.median(rss[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chats", type=int, default=100)
    args = parser.parse_args()

    from llmock.pytest_plugin import LLMock
    from llmock.testing import LLMockServer

    with LLMockServer() as server:
        llmock = LLMock(server).reset()
        llmock.reply(ANSWER, times=None)
        floor_rss, floor_s = floor(args.runs)
        figures = asyncio.run(bot(args.runs, args.chats, llmock))
        ask_one, ask_one_rss = ask(args.runs, llmock, anthropic=False, openai=True)
        ask_ant, ask_ant_rss = ask(args.runs, llmock, anthropic=True, openai=False)
        import_ant = import_alone("anthropic", args.runs)
        ask_both, ask_both_rss = ask(args.runs, llmock, anthropic=True, openai=True)

    rows = [
        ("import floor (6 libraries): RSS", f"{floor_rss:.1f} MB", "-"),
        ("import floor: import time", f"{floor_s:.2f} s", "-"),
        (
            "coterie run idle (both providers): RSS",
            f"{figures['idle']:.1f} MB ({figures['idle'] - floor_rss:+.1f} vs floor)",
            "<= floor + 30 MB",
        ),
        ("coterie run: process start -> ready", f"{figures['ready']:.2f} s", "< 3 s"),
        (
            f"after {args.chats} concurrent chats: RSS (peak)",
            f"{figures['after']:.1f} MB ({figures['peak']:.1f})",
            "< 250 MB",
        ),
        (
            "first message after ready: mention -> model request",
            f"{figures['first'] * 1000:.0f} ms (next ones {figures['later'] * 1000:.0f} ms)",
            "same as the next ones",
        ),
        (
            "coterie ask, OpenAI key: start -> answer",
            f"{ask_one:.2f} s ({ask_one_rss:.0f} MB)",
            "< 2 s",
        ),
        (
            "coterie ask, Anthropic key: start -> answer",
            f"{ask_ant:.2f} s ({ask_ant_rss:.0f} MB; import anthropic alone {import_ant:.2f} s)",
            "< 2 s",
        ),
        (
            "coterie ask, both providers: start -> answer",
            f"{ask_both:.2f} s ({ask_both_rss:.0f} MB)",
            "-",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'measured (median of ' + str(args.runs) + ')':<34}  goal")
    for label, value, goal in rows:
        print(f"{label:<{width}}  {value:<34}  {goal}")


if __name__ == "__main__":
    main()
