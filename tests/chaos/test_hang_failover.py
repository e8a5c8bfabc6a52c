"""A provider that accepts the request and then hangs, through the real CLI (issue 20):
`coterie ask` as a subprocess on the default `fast` tier, the real Anthropic and OpenAI
SDKs, a loopback LLMock whose Anthropic stream sends its headers and then nothing. The
tier's first-token timeout (set to 1 s by the environment, the way an operator would)
leaves Anthropic long before the 30 s attempt deadline; OpenAI answers; the audit records
the hung attempt as a timeout."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_ask import _ask

pytest.importorskip("llmock")
pytestmark = pytest.mark.chaos


def test_a_hung_provider_fails_over_at_the_first_token_timeout(llmock: Any, tmp_path: Path) -> None:
    llmock.slow_first_token(120, provider="anthropic")
    llmock.reply("Paris, from the fallback.", provider="openai")
    out = _ask(
        tmp_path,
        "Capital of France?",
        ANTHROPIC_BASE_URL=llmock.base_url("anthropic"),
        ANTHROPIC_API_KEY="sk-ant-chaos-0000000000",
        OPENAI_BASE_URL=llmock.base_url("openai"),
        OPENAI_API_KEY="sk-chaos-0000000000",
        COTERIE_DEFAULT_TIER="fast",
        COTERIE_TIER_FAST_FIRST_TOKEN_SECONDS="1",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("Paris, from the fallback.")
    assert "Traceback" not in out.stderr
    conn = sqlite3.connect(tmp_path / "c.db")
    try:
        attempts = conn.execute(
            "SELECT model, error_kind, error FROM audit_model_attempts ORDER BY id"
        ).fetchall()
        run = conn.execute("SELECT status, model FROM audit_runs").fetchone()
    finally:
        conn.close()
    assert [(m, k) for m, k, _ in attempts] == [
        ("anthropic:claude-haiku-4-5", "provider_timeout"),
        ("openai:gpt-5-mini", None),
    ]
    assert "1s first-token timeout" in attempts[0][2]
    assert run == ("ok", "openai:gpt-5-mini")
