"""`coterie ask` end to end: the real CLI process, the real OpenAI and Anthropic
SDKs, a loopback LLMock server standing in for the providers."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llmock")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COTERIE_", "ANTHROPIC_", "OPENAI_"))
    }
    env.update(
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'c.db'}",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _ask(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", "ask", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=_env(tmp_path, **env),
        check=False,
    )


def test_ask_json_through_openai(llmock: Any, tmp_path: Path) -> None:
    llmock.reply("Paris is the capital of France.")
    out = _ask(
        tmp_path,
        "Capital of France?",
        "--json",
        OPENAI_BASE_URL=llmock.base_url("openai"),
        OPENAI_API_KEY="sk-test",
        COTERIE_TIER_STANDARD="openai:gpt-5-mini",
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["status"] == "ok"
    assert data["output"] == "Paris is the capital of France."
    assert data["model"] == "openai:gpt-5-mini"
    assert [a["error"] for a in data["attempts"]] == [None]
    assert data["usage"]["output_tokens"] > 0
    assert data["cost_usd"] > 0
    assert set(data) >= {"run_id", "status", "output", "model", "attempts", "usage", "cost_usd"}
    # the run is in the audit trail of the database the CLI upgraded
    audit = subprocess.run(
        [sys.executable, "-m", "bot", "audit", "show", data["run_id"]],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=_env(tmp_path),
        check=False,
    )
    assert audit.returncode == 0, audit.stderr
    assert data["run_id"] in audit.stdout


def test_ask_fails_over_from_a_dead_provider(llmock: Any, tmp_path: Path) -> None:
    llmock.outage(status=503, provider="anthropic")
    llmock.reply("from openai", provider="openai")
    out = _ask(
        tmp_path,
        "hello",
        "--json",
        ANTHROPIC_BASE_URL=llmock.base_url("anthropic"),
        ANTHROPIC_API_KEY="sk-ant-test",
        OPENAI_BASE_URL=llmock.base_url("openai"),
        OPENAI_API_KEY="sk-test",
        COTERIE_TIER_FAST="anthropic:claude-haiku-4-5,openai:gpt-5-mini",
        COTERIE_DEFAULT_TIER="fast",
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["output"] == "from openai"
    assert data["model"] == "openai:gpt-5-mini"
    assert data["attempts"][0]["model"] == "anthropic:claude-haiku-4-5"
    assert data["attempts"][0]["error"]
    assert data["attempts"][-1]["error"] is None


def test_ask_with_both_keys_imports_the_backups_sdk_only_when_it_fails_over(
    llmock: Any, tmp_path: Path
) -> None:
    """The default tier is Anthropic then OpenAI: an answer from Anthropic never
    imports the OpenAI SDK (about a second and tens of MB); a failover does."""

    def imported(stderr: str) -> set[str]:
        # -X importtime's lines: "import time: self | cumulative | module"
        return {
            line.rsplit("|", 1)[1].strip()
            for line in stderr.splitlines()
            if line.startswith("import time:") and "|" in line
        }

    keys = {
        "ANTHROPIC_BASE_URL": llmock.base_url("anthropic"),
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "OPENAI_BASE_URL": llmock.base_url("openai"),
        "OPENAI_API_KEY": "sk-test",
        "COTERIE_TIER_STANDARD": "anthropic:claude-sonnet-4-6,openai:gpt-5-mini",
        "PYTHONPROFILEIMPORTTIME": "1",
    }
    llmock.reply("from anthropic", provider="anthropic")
    out = _ask(tmp_path, "hello", **keys)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "from anthropic"
    assert "anthropic" in imported(out.stderr) and "openai" not in imported(out.stderr)

    llmock.outage(status=503, provider="anthropic")
    llmock.reply("from openai", provider="openai")
    out = _ask(tmp_path, "hello", **keys)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "from openai"
    assert "openai" in imported(out.stderr)


def test_ask_streams_text(llmock: Any, tmp_path: Path) -> None:
    llmock.reply("streamed answer")
    out = _ask(
        tmp_path,
        "hi",
        OPENAI_BASE_URL=llmock.base_url("openai"),
        OPENAI_API_KEY="sk-test",
        COTERIE_TIER_STANDARD="openai:gpt-5-mini",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "streamed answer"


def test_a_quick_exit_leaves_the_answer_the_audit_and_the_budget_settled(
    llmock: Any, tmp_path: Path
) -> None:
    """Issue 19: `coterie ask` ends with ``os._exit`` (no teardown), the streamed answer
    printed whole, and what the run wrote committed and the database closed: the run
    closed in the audit with its cost, the reservation settled into one charge of that
    cost, the process's instance row gone, no write-ahead log left behind."""
    llmock.reply("Paris, on the Seine.")
    out = _ask(
        tmp_path,
        "Capital of France?",
        ANTHROPIC_BASE_URL=llmock.base_url("anthropic"),
        ANTHROPIC_API_KEY="sk-ant-test",
        COTERIE_TIER_STANDARD="anthropic:claude-sonnet-4-6",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "Paris, on the Seine.\n"
    db = tmp_path / "c.db"
    assert not Path(f"{db}-wal").exists()  # the last connection closed cleanly
    with contextlib.closing(sqlite3.connect(db)) as conn:
        runs = conn.execute(
            "SELECT run_id, status, ended_at IS NOT NULL, cost_micros FROM audit_runs"
        ).fetchall()
        assert len(runs) == 1
        run_id, status, ended, cost = runs[0]
        assert (status, ended) == ("ok", 1)
        assert cost > 0
        assert conn.execute("SELECT count(*) FROM budget_reservations").fetchone() == (0,)
        charges = conn.execute("SELECT run_id, amount_micros FROM budget_ledger").fetchall()
        assert charges == [(run_id, cost)]
        assert conn.execute("SELECT count(*) FROM instances").fetchone() == (0,)


def test_missing_key_names_the_variable(tmp_path: Path) -> None:
    out = _ask(tmp_path, "hi", COTERIE_TIER_STANDARD="anthropic:claude-sonnet-4-6")
    assert out.returncode != 0
    assert "ANTHROPIC_API_KEY" in out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_tier_lists_the_known_ones(tmp_path: Path) -> None:
    out = _ask(tmp_path, "hi", "--tier", "nope", OPENAI_API_KEY="sk-test")
    assert out.returncode != 0
    assert "unknown tier 'nope'" in out.stderr
    assert "standard" in out.stderr
    assert "Traceback" not in out.stderr


def test_malformed_config_file_says_where(tmp_path: Path) -> None:
    (tmp_path / "coterie.toml").write_text("[tiers.fast\ncandidates = 1\n")
    out = _ask(tmp_path, "hi", OPENAI_API_KEY="sk-test")
    assert out.returncode != 0
    assert "coterie.toml" in out.stderr
    assert "line 1" in out.stderr or ":1:" in out.stderr
    assert "Traceback" not in out.stderr


def test_ask_leaves_without_the_interpreters_teardown_once_all_is_closed(
    llmock: Any, tmp_path: Path
) -> None:
    """Issue 19: after the answer, the audit's last write and the database's close,
    `coterie ask` ends at once (no exit handlers, no teardown of the SDK's objects),
    with the answer out, its exit code, and its run closed in the audit."""
    llmock.reply("Paris.")
    program = (
        "import atexit, runpy, sys;"
        "atexit.register(lambda: print('TEARDOWN', file=sys.stderr));"
        "sys.argv = ['coterie', 'ask', 'Capital of France?', '--json'];"
        "runpy.run_module('bot', run_name='__main__')"
    )
    out = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=_env(
            tmp_path,
            OPENAI_BASE_URL=llmock.base_url("openai"),
            OPENAI_API_KEY="sk-test",
            COTERIE_TIER_STANDARD="openai:gpt-5-mini",
        ),
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "TEARDOWN" not in out.stderr
    data = json.loads(out.stdout)
    assert data["output"] == "Paris."
    audit = subprocess.run(
        [sys.executable, "-m", "bot", "audit", "show", data["run_id"], "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=_env(tmp_path),
        check=False,
    )
    assert audit.returncode == 0, audit.stderr
    assert '"status": "ok"' in audit.stdout.replace('":"', '": "')


def test_the_sdks_optional_transport_is_refused_only_while_ask_imports_its_sdk() -> None:
    """`ask` imports its SDK as if the SDKs' aiohttp extra were not installed (coterie
    never uses that transport); afterwards aiohttp imports again, and a process that
    had it loaded already keeps it."""
    code = (
        "import sys\n"
        "from bot.cli.ask import sdk_extras_refused\n"
        "with sdk_extras_refused():\n"
        "    try:\n"
        "        import aiohttp\n"
        "    except ImportError:\n"
        "        print('refused')\n"
        "import aiohttp\n"
        "with sdk_extras_refused():\n"
        "    import aiohttp as again\n"
        "print(again is aiohttp)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["refused", "True"]
