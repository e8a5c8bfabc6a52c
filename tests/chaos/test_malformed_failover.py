"""A provider's broken response through the real CLI (issue 12): `coterie ask` as a
subprocess, the real Anthropic and OpenAI SDKs, a loopback LLMock whose Anthropic stream
sends a chunk that is not JSON. The run fails over to OpenAI, the member reads its
answer (never "JSONDecodeError"), and the audit records the broken attempt, its kind and
what it was billed, and the answering attempt's cost; the ledger charges both."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_ask import _ask

pytest.importorskip("llmock")
pytestmark = pytest.mark.chaos


def test_a_broken_stream_fails_over_through_coterie_ask(llmock: Any, tmp_path: Path) -> None:
    llmock.corrupt(after_chunks=1, provider="anthropic")
    llmock.reply("Paris, from the fallback.", provider="openai")
    out = _ask(
        tmp_path,
        "Capital of France?",
        ANTHROPIC_BASE_URL=llmock.base_url("anthropic"),
        ANTHROPIC_API_KEY="sk-ant-chaos-0000000000",
        OPENAI_BASE_URL=llmock.base_url("openai"),
        OPENAI_API_KEY="sk-chaos-0000000000",
        COTERIE_TIER_FAST="anthropic:claude-haiku-4-5,openai:gpt-5-mini",
        COTERIE_DEFAULT_TIER="fast",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("Paris, from the fallback.")
    for text in (out.stdout, out.stderr):
        assert "JSONDecodeError" not in text and "Traceback" not in text
    conn = sqlite3.connect(tmp_path / "c.db")
    try:
        attempts = conn.execute(
            "SELECT model, error_kind, cost_micros FROM audit_model_attempts ORDER BY id"
        ).fetchall()
        run = conn.execute("SELECT status, model, cost_micros FROM audit_runs").fetchone()
        charged = conn.execute("SELECT sum(amount_micros) FROM budget_ledger").fetchone()[0]
    finally:
        conn.close()
    assert [(m, k) for m, k, _ in attempts] == [
        ("anthropic:claude-haiku-4-5", "malformed_response"),
        ("openai:gpt-5-mini", None),
    ]
    # The broken stream had begun (its message_start reported its input): Anthropic
    # billed it, so it is charged on its attempt, beside the answer.
    assert attempts[0][2] > 0 and attempts[1][2] > 0
    both = attempts[0][2] + attempts[1][2]
    assert run == ("ok", "openai:gpt-5-mini", both)
    assert charged == both
