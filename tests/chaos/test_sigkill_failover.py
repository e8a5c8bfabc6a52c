"""A crash after a mid-stream failover is charged both candidates: `coterie ask` as a
subprocess, the real Anthropic and OpenAI SDKs, one loopback server for both. Anthropic
begins to answer (its ``message_start`` reports the input it bills) and then sends a
chunk that is not JSON; the run fails over to OpenAI, whose stream starts and is held;
the process is SIGKILLed there. The failed attempt, with what Anthropic billed, and the
request to OpenAI were in the audit trail before OpenAI was asked, so crash recovery
charges both: the failed attempt's cost, and the input of the request the process died
in; the run's row and the ledger agree to the micro-dollar."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web

from adapters.storage.budget import SqlBudgetLedger
from adapters.storage.db import Database
from adapters.storage.instances import SqlInstances
from adapters.storage.recovery import recover
from executor.messages import Usage
from executor.testing import FakeClock
from tests.chaos.loopback import LoopbackOpenAI
from tests.cli.test_ask import _env
from tests.executor.models.loopback import anthropic_start

pytestmark = pytest.mark.chaos

FIRST = "anthropic:claude-haiku-4-5"
BACKUP = "openai:gpt-5-mini"
BILLED_INPUT = 1_234  # what Anthropic's message_start reports


class BreakingAnthropic(LoopbackOpenAI):
    """The OpenAI side holds every stream mid-answer (``LoopbackOpenAI``, ``mid-stream``
    from the first response); ``/v1/messages`` starts an Anthropic stream, reports its
    input, streams a few words and breaks."""

    def __init__(self) -> None:
        super().__init__()
        self.anthropic_requests = 0
        self.hold(0, "mid-stream")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/messages", self._messages)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        self.anthropic_requests += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(anthropic_start("Paris is ", input_tokens=BILLED_INPUT))
        await response.write(b"event: content_block_delta\ndata: {not json\n\n")
        await response.write_eof()
        return response


@pytest.fixture
async def server() -> AsyncIterator[BreakingAnthropic]:
    s = BreakingAnthropic()
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def test_a_sigkill_while_the_backup_streams_is_charged_both_candidates(
    tmp_path: Path, server: BreakingAnthropic
) -> None:
    env = _env(
        tmp_path,
        ANTHROPIC_BASE_URL=server.anthropic_url,
        ANTHROPIC_API_KEY="sk-ant-chaos-0000000000",
        OPENAI_BASE_URL=server.base_url,
        OPENAI_API_KEY="sk-chaos-0000000000",
        COTERIE_TIER_FAST=f"{FIRST},{BACKUP}",
        COTERIE_DEFAULT_TIER="fast",
        COTERIE_LOG_LEVEL="WARNING",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "ask",
        "Capital of France?",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # Held: the backup's stream has begun, after Anthropic broke.
        await server.wait_held(1)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        _, err = await proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    server.release()
    assert server.anthropic_requests == 1 and server.unanswered == 1

    url = env["DATABASE_URL"]
    db = Database.open(url)
    try:
        # The killed process's lease runs out (as if its time had passed), then a
        # start-up's recovery settles what it owned.
        later = FakeClock(datetime.now(UTC) + timedelta(days=1))
        await SqlInstances(db.sessions, clock=later).reap()
        ledger = SqlBudgetLedger(db.sessions, default_limit_micros=0)
        report = await recover(db.sessions, ledger)
        assert len(report.interrupted_runs) == 1
    finally:
        await db.close()

    conn = sqlite3.connect(tmp_path / "c.db")
    try:
        attempts = conn.execute(
            "SELECT model, error_kind, input_tokens, cost_micros FROM audit_model_attempts"
        ).fetchall()
        requests = [
            json.loads(data)
            for (data,) in conn.execute(
                "SELECT data FROM audit_events WHERE kind = 'model_request' ORDER BY id"
            )
        ]
        run = conn.execute("SELECT status, cost_micros FROM audit_runs").fetchone()
        charged = conn.execute("SELECT sum(amount_micros) FROM budget_ledger").fetchone()[0]
    finally:
        conn.close()
    # Anthropic's attempt, charged what it reported it billed.
    billed = server.prices.cost_micros(FIRST, Usage(input_tokens=BILLED_INPUT, output_tokens=1))
    assert attempts == [(FIRST, "malformed_response", BILLED_INPUT, billed)]
    # The same request, sent again to OpenAI after that attempt, never answered.
    assert [r["attempts_before"] for r in requests] == [0, 1]
    owed = requests[1]["unanswered_micros"]
    assert billed > 0 and owed > 0 and owed == requests[0]["unanswered_micros"]
    assert run == ("interrupted", billed + owed)
    assert charged == billed + owed
