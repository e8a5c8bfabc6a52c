"""The operator's views: ``coterie budget show|set|grant|top``, ``coterie audit show`` by a
unique prefix, ``coterie audit actions``, ``coterie forget``, against a SQLite file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from adapters.storage.audit_queries import FORGOTTEN, RunFilter
from bot.app import build_app
from bot.cli import build_parser, main
from bot.settings import Settings
from executor.agent import Caller, Invocation, RunnableAgent
from executor.messages import Message, Usage
from executor.testing import Reply, ScriptedModel
from tests.services.test_deletion import ledger_and_audit_totals
from tests.storage.dbs import sqlite_url


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    value = sqlite_url(tmp_path / "data" / "coterie.db")
    monkeypatch.setenv("DATABASE_URL", value)
    monkeypatch.setenv("COTERIE_BUDGET_DEFAULT_USD", "1")
    monkeypatch.chdir(tmp_path)
    return value


def seed(url: str, *runs: tuple[str, int]) -> list[str]:
    """Runs by (user id, cost) through the real app; returns their ids."""

    async def go() -> list[str]:
        app = await build_app(Settings(_env_file=None, database_url=url))
        ids = []
        try:
            for user, cost in runs:
                model = ScriptedModel()
                model.push(Reply(text="ok", usage=Usage(output_tokens=1, cost_micros=cost)))
                result = await app.executor.run(
                    RunnableAgent(name="assistant", persona="assistant", model=model),
                    Invocation(
                        messages=[Message.user("hi")],
                        caller=Caller(user_id=user, display_name=f"name-{user}", guild_id="7"),
                        trigger="chat",
                    ),
                )
                ids.append(result.run_id)
            await app.audit.flush()
        finally:
            await app.close()
        return ids

    return asyncio.run(go())


def test_budget_verbs(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    seed(url, ("111", 250_000), ("111", 50_000), ("222", 10_000))
    assert main(["budget", "show", "111"]) == 0
    out = capsys.readouterr().out
    assert "spent (7 days)" in out and "$0.3000" in out and "$1.00" in out

    assert main(["budget", "set", "111", "3.50"]) == 0
    captured = capsys.readouterr()
    assert "own limit $3.50" in captured.err and "limit (own limit)" in captured.out
    assert main(["budget", "grant", "111", "2", "--reason", "exam week"]) == 0
    out = capsys.readouterr().out
    assert "$5.50" in out and "exam week" in out and "console" in out  # by the operator
    assert main(["budget", "set", "111", "default"]) == 0
    assert "limit (default)" in capsys.readouterr().out
    assert main(["budget", "set", "111", "lots"]) == 2
    assert "not an amount" in capsys.readouterr().err

    assert main(["budget", "top", "--days", "7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["member", "name", "runs", "spent", "limit", "now"]
    assert lines[2].split()[:4] == ["111", "name-111", "2", "$0.3000"]
    assert lines[3].split()[:4] == ["222", "name-222", "1", "$0.0100"]

    # Every change is in the admin log, by the operator.
    assert main(["audit", "actions"]) == 0
    out = capsys.readouterr().out
    assert out.count("budget.set") == 2 and "budget.grant" in out and "console operator" in out


def test_audit_show_takes_a_unique_prefix(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    ids = seed(url, ("111", 1_000), ("111", 2_000))
    prefix = ids[0][:8]
    assert main(["audit", "show", prefix]) == 0
    assert f"run       {ids[0]}" in capsys.readouterr().out
    assert main(["audit", "show", "ffffffffffff"]) == 1
    assert "No run starts with" in capsys.readouterr().err
    assert main(["audit", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["started", "(UTC)", "run"]
    assert main(["audit", "spend", "--days", "1"]) == 0
    assert "$0.0030" in capsys.readouterr().out


def test_forget(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    seed(url, ("111", 1_000), ("222", 2_000))
    assert main(["budget", "set", "111", "0.50"]) == 0
    capsys.readouterr()
    assert main(["forget", "111", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "audit runs" in out and "budget" in out
    assert "kept: the budget's charges in the 7-day window" in out

    async def check() -> None:
        app = await build_app(Settings(_env_file=None, database_url=url))
        try:
            forgotten = await app.audit_queries.list_runs(RunFilter(user_id=FORGOTTEN))
            assert len(forgotten.runs) == 1
            assert (await app.audit_queries.list_runs(RunFilter(user_id="111"))).runs == []
            # The budget is not reset: the charge and the limit the operator set stay.
            kept = await app.budget.status("111")
            assert (kept.spent_micros, kept.limit_micros, kept.overridden) == (1_000, 500_000, True)
            assert (await app.budget.status("222")).spent_micros == 2_000
            assert await ledger_and_audit_totals(app) == (3_000, 3_000)
            (entry,) = (await app.admin_log.list(action="forget")).entries
            assert "111" not in repr(entry)  # the log says a member was forgotten, not who
        finally:
            await app.close()

    asyncio.run(check())


def test_export_member(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import stat

    from memory import Caps, Scope

    seed(url, ("111", 1_000), ("222", 2_000))

    async def remember() -> None:
        app = await build_app(Settings(_env_file=None, database_url=url))
        try:
            await app.memory_store.add(Scope("111", "assistant", "dm"), "likes tea", caps=Caps())
        finally:
            await app.close()

    asyncio.run(remember())
    assert main(["export-member", "111"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["user_id"] == "111"
    assert [n["text"] for n in data["data"]["memory notes"]["notes"]] == ["likes tea"]
    assert [r["user_id"] for r in data["data"]["audit runs"]] == ["111"]
    assert data["data"]["budget"]["charges"][0]["amount_micros"] == 1_000
    out = tmp_path / "member.json"
    assert main(["export-member", "111", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["data"]["memory notes"] == data["data"]["memory notes"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    capsys.readouterr()
    assert main(["export-member", "111", "-o", str(out)]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err

    async def logged() -> None:
        app = await build_app(Settings(_env_file=None, database_url=url))
        try:
            entries = (await app.admin_log.list(action="member.export")).entries
            assert [e.target_id for e in entries] == ["111", "111"]
        finally:
            await app.close()

    asyncio.run(logged())


def test_help_lists_the_verbs() -> None:
    text = build_parser().format_help()
    assert "budget" in text and "forget" in text
    audit = build_parser().parse_args(["audit", "spend"])
    assert audit.handler.__name__ == "_spend"
