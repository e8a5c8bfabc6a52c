"""The operator's path: ``coterie mcp list|accept``, ``coterie doctor`` and ``coterie ask``
with a real MCP server (stdio) declared in coterie.toml, against the real CLI process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.mcp.conftest import SERVER, STARTUP_S

pytest.importorskip("llmock")


def _write_config(tmp_path: Path, variant: str = "") -> None:
    env = f'env = {{ MCP_TEST_VARIANT = "{variant}" }}\n' if variant else ""
    (tmp_path / "coterie.toml").write_text(
        f"""
[mcp.t]
command = [{json.dumps(sys.executable)}, {json.dumps(str(SERVER))}]
startup_seconds = {STARTUP_S}
tools = ["echo", "add"]
{env}
[mcp.t.tool.echo]
privilege = "user"
approval = false
""",
        encoding="utf-8",
    )


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COTERIE_", "ANTHROPIC_", "OPENAI_", "BRAVE_", "TAVILY_"))
    }
    env.update(DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'c.db'}", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _coterie(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=_env(tmp_path, **env),
        check=False,
    )


def _tool_names(body: Any) -> list[str]:
    return [t["function"]["name"] if "function" in t else t["name"] for t in body.get("tools", [])]


def test_list_accept_doctor_and_ask_with_an_mcp_tool(llmock: Any, tmp_path: Path) -> None:
    _write_config(tmp_path)
    listed = _coterie(tmp_path, "mcp", "list")
    assert listed.returncode == 0, listed.stderr
    assert "no database yet" in listed.stdout  # said, not made: a listing only reads
    assert not (tmp_path / "c.db").exists()
    assert "t__echo" in listed.stdout and "not accepted" in listed.stdout
    assert "coterie mcp accept t" in listed.stdout
    assert "more tool(s) on the server, not listed" in listed.stdout

    accepted = _coterie(tmp_path, "mcp", "accept", "t")
    assert accepted.returncode == 0, accepted.stderr
    assert "accepted t: new echo, add" in accepted.stdout
    assert "delete_everything" in accepted.stdout  # on the server, never offered

    data = json.loads(_coterie(tmp_path, "mcp", "list", "--offline", "--json").stdout)
    [server] = data["servers"]
    statuses = {
        t["name"]: (t["status"], t["privilege"], t["approval"], t["on_resume"])
        for t in server["tools"]
    }
    assert statuses == {  # the hints as accepted (offline: the server is not asked again)
        "t__echo": ("offered", "user", False, "runs again (read-only)"),
        "t__add": ("offered", "admin", True, "asks again"),  # idempotent, but approval asks
    }
    rendered = _coterie(tmp_path, "mcp", "list", "--offline").stdout
    assert "on resume runs again (read-only)" in rendered, rendered

    doctor = _coterie(tmp_path, "doctor", "--offline", "--json")
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["mcp t"]["status"] == "OK", checks["mcp t"]
    assert "t__echo" in checks["mcp t"]["detail"]
    assert checks["search"]["status"] == "SKIP"

    llmock.call_tool("t__echo", {"text": "pinned and called"})
    llmock.reply("The server said: pinned and called.")
    out = _coterie(
        tmp_path,
        "ask",
        "say it through the server",
        "--json",
        OPENAI_BASE_URL=llmock.base_url("openai"),
        OPENAI_API_KEY="sk-test",
        COTERIE_TIER_STANDARD="openai:gpt-5-mini",
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["status"] == "ok" and result["cost_usd"] > 0
    offered = _tool_names(llmock.requests[0].body)
    assert "t__echo" in offered and "t__add" in offered
    assert "t__delete_everything" not in offered and "t__hang" not in offered

    shown = _coterie(tmp_path, "audit", "show", result["run_id"], "--json")
    assert shown.returncode == 0, shown.stderr
    run = json.loads(shown.stdout)
    [called] = run["tool_calls"]
    assert called["name"] == "t__echo" and not called["is_error"]
    assert "pinned and called" in called["arguments"]
    assert called["result_excerpt"] == "pinned and called"
    assert run["cost_micros"] > 0


def test_a_changed_server_is_reported_by_list_and_doctor(tmp_path: Path) -> None:
    _write_config(tmp_path)
    assert _coterie(tmp_path, "mcp", "accept", "t").returncode == 0
    _write_config(tmp_path, variant="changed")
    listed = _coterie(tmp_path, "mcp", "list")
    assert listed.returncode == 0, listed.stderr
    assert "t__echo" in listed.stdout and "changed" in listed.stdout
    doctor = _coterie(tmp_path, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["mcp t"]["status"] == "WARN"
    assert "t__echo changed" in checks["mcp t"]["detail"]
    assert checks["mcp t"]["fix"] == "review, then: coterie mcp accept t"


def test_accept_names_the_servers_when_the_name_is_wrong(tmp_path: Path) -> None:
    _write_config(tmp_path)
    out = _coterie(tmp_path, "mcp", "accept", "nope")
    assert out.returncode == 2
    assert "no MCP server 'nope'" in out.stderr and "known: t" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_bad_mcp_table_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "coterie.toml").write_text('[mcp.t]\ncommand = "not a list"\n', encoding="utf-8")
    out = _coterie(tmp_path, "mcp", "list")
    assert out.returncode == 2
    assert "mcp.t.command must be a non-empty list" in out.stderr
    assert "Traceback" not in out.stderr
