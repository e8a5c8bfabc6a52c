"""Real ``coterie`` processes against the fake Discord and a loopback LLMock.

:func:`coterie_env` builds a clean environment (no stray keys), pointing discord.py at
the fake through ``shim/sitecustomize.py``; :class:`Proc` runs a ``python -m bot``
subprocess and lets a test await a line of its output (no sleeps: each wait is an
event on a pipe).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakediscord import FakeDiscord
from tests.storage.dbs import pg_url

__all__ = ["Proc", "coterie_env", "openai_env", "pg_url", "procs", "query", "webhook_shows"]

ROOT = Path(__file__).resolve().parents[2]
SHIM = Path(__file__).resolve().parent / "shim"


def coterie_env(tmp_path: Path, *, fake: FakeDiscord | None = None, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COTERIE_", "ANTHROPIC_", "OPENAI_", "OPENROUTER_", "DISCORD_"))
        and k not in ("DATABASE_URL", "PYTHONPATH")
    }
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'data' / 'coterie.db'}",
        PYTHONUNBUFFERED="1",
        # Why the repo root too: the subprocess imports this checkout's code wherever
        # the package was installed from.
        PYTHONPATH=os.pathsep.join([str(SHIM), str(ROOT)]),
    )
    if fake is not None:
        env.update(
            DISCORD_TOKEN=fake.token,
            COTERIE_TEST_DISCORD_API=fake.api_base,
            COTERIE_TEST_DISCORD_GATEWAY=fake.gateway_url,
        )
    env.update(extra)
    return env


def openai_env(llmock: Any) -> dict[str, str]:
    """Every tier on one OpenAI model served by the LLMock."""
    return {
        "OPENAI_BASE_URL": llmock.base_url("openai"),
        "OPENAI_API_KEY": "sk-test-key-for-llmock",
        "COTERIE_TIER_FAST": "openai:gpt-5-mini",
        "COTERIE_TIER_STANDARD": "openai:gpt-5-mini",
        "COTERIE_TIER_SMART": "openai:gpt-5-mini",
    }


async def webhook_shows(fake: FakeDiscord, text: str, *, timeout: float = 15) -> None:
    """Wait until a persona (webhook) message is posted or edited to contain ``text``."""

    def shows(call: Any) -> bool:
        return text in str((call.json or {}).get("content", ""))

    waits = [
        asyncio.ensure_future(
            fake.wait_for_call("POST", "/webhooks/{id}/{token}", shows, timeout=timeout)
        ),
        asyncio.ensure_future(
            fake.wait_for_call(
                "PATCH", "/webhooks/{id}/{token}/messages/{m}", shows, timeout=timeout
            )
        ),
    ]
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for w in pending:
        w.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for w in done:
        w.result()


class Proc:
    """A ``python -m bot ...`` subprocess whose output lines can be awaited."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        self._partial: dict[int, str] = {}  # a stream's text after its last newline
        self._changed = asyncio.Condition()
        assert proc.stdout is not None and proc.stderr is not None
        self._pumps = [
            asyncio.create_task(self._pump(proc.stdout, self.out)),
            asyncio.create_task(self._pump(proc.stderr, self.err)),
        ]

    @classmethod
    async def start(cls, *args: str, env: dict[str, str], cwd: Path, stdin: bool = False) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            *args,
            env=env,
            cwd=cwd,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _pump(self, stream: asyncio.StreamReader, sink: list[str]) -> None:
        # Why chunks and not lines: `coterie ask` streams an answer with no newline yet.
        partial = ""
        while True:
            raw = await stream.read(4096)
            async with self._changed:
                if not raw:
                    if partial:
                        sink.append(partial)
                    self._partial[id(sink)] = ""
                    self._changed.notify_all()
                    return
                partial += raw.decode("utf-8", "replace")
                *lines, partial = partial.split("\n")
                sink.extend(lines)
                self._partial[id(sink)] = partial
                self._changed.notify_all()

    async def wait_for(self, pattern: str, *, stream: str = "err", timeout: float = 30) -> str:
        """The first line of ``stream`` (err or out) matching ``pattern``."""
        lines = self.err if stream == "err" else self.out
        regex = re.compile(pattern)

        async def until() -> str:
            async with self._changed:
                while True:
                    for line in [*lines, self._partial.get(id(lines), "")]:
                        if regex.search(line):
                            return line
                    if all(p.done() for p in self._pumps):
                        raise AssertionError(
                            f"the process ended without printing {pattern!r}:\n"
                            + "\n".join(self.err[-30:])
                        )
                    await self._changed.wait()

        try:
            return await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"no line matching {pattern!r} in {timeout}s; stderr:\n" + "\n".join(self.err[-30:])
            ) from None

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    async def write(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        await self.proc.stdin.drain()

    async def exit_code(self, timeout: float = 60) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.gather(*self._pumps)
        return code

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        for p in self._pumps:
            p.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    @property
    def stderr(self) -> str:
        return "\n".join(self.err)

    @property
    def stdout(self) -> str:
        return "\n".join(self.out)


@pytest.fixture
async def procs(request: pytest.FixtureRequest) -> AsyncIterator[list[Proc]]:
    """Started processes to kill if a test leaves one running (their stderr is printed
    when the test failed, for the report)."""
    started: list[Proc] = []
    yield started
    for p in started:
        await p.kill()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for p in started:
            print(f"--- stderr of pid {p.pid} ---\n{p.stderr}")


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Why: the procs fixture prints its processes' stderr when the test itself failed.
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
