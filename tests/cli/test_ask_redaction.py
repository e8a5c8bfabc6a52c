"""`coterie ask --json` never prints a credential a provider echoed (issue 12): the
attempts' errors go through the audit's scrubber, as the audit copy already did."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_ask import _ask

pytest.importorskip("llmock")

KEY = "sk-ant-api03-Zq7cLw4pX9bN2mKd8TfRy1Hs"


def test_a_proxy_that_echoes_the_key_is_scrubbed(llmock: Any, tmp_path: Path) -> None:
    # A compatible proxy refusing the request and quoting the credential it got.
    llmock.fail(400, message=f"invalid credential Bearer {KEY}", times=None)
    out = _ask(
        tmp_path,
        "hello",
        "--json",
        OPENAI_BASE_URL=llmock.base_url("openai"),
        OPENAI_API_KEY=KEY,
        COTERIE_TIER_STANDARD="openai:gpt-5-mini",
    )
    assert out.returncode == 1, out.stderr
    assert KEY not in out.stdout and KEY not in out.stderr
    data = json.loads(out.stdout)
    assert data["status"] == "error"
    errors = [a["error"] for a in data["attempts"]]
    assert errors and all(e and "[redacted]" in e for e in errors)
    assert "[redacted]" in (data["error"] or "")
