"""The db and audit verbs, end to end against a SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.storage.audit_sink import SqlAuditSink
from adapters.storage.db import Database
from bot.cli import main
from tests.conformance.test_audit_sink import full_run
from tests.storage.dbs import sqlite_url


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    value = sqlite_url(tmp_path / "data" / "coterie.db")
    monkeypatch.setenv("DATABASE_URL", value)
    monkeypatch.chdir(tmp_path)
    return value


def test_db_verbs(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Reading verbs create nothing where there is no database: they say so.
    for verb in (["db", "current"], ["db", "backup", str(tmp_path / "b/")], ["audit", "list"]):
        assert main(verb) == 2
        err = capsys.readouterr().err
        assert err.startswith("coterie: there is no SQLite database at "), err
        assert "Traceback" not in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert main(["db", "upgrade"]) == 0
    assert "upgraded from (empty)" in capsys.readouterr().out
    assert main(["db", "current"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["db", "backup", str(tmp_path / "copy.db")]) == 0
    assert (tmp_path / "copy.db").is_file()
    assert main(["db", "backup", str(tmp_path / "copy.db")]) == 2
    assert "will not overwrite" in capsys.readouterr().err


def test_audit_verbs(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    async def seed() -> None:
        db = Database.open(url)
        try:
            await db.upgrade()
            sink = SqlAuditSink(db.sessions)
            for i in range(3):
                await full_run(sink, f"r{i}", user="alice" if i else "bob")
            await sink.close()
        finally:
            await db.close()

    asyncio.run(seed())
    assert main(["audit", "list", "--member", "alice"]) == 0
    out = capsys.readouterr().out
    assert "r1" in out and "r2" in out and "r0" not in out
    assert main(["audit", "show", "r1"]) == 0
    out = capsys.readouterr().out
    assert "tool step 1: add" in out and "[redacted]" in out
    assert main(["audit", "show", "nope"]) == 1
    assert main(["audit", "export", "-o", str(tmp_path / "runs.jsonl")]) == 0
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert [json.loads(line)["run_id"] for line in lines] == ["r2", "r1", "r0"]
    assert main(["audit", "list", "--cursor", "garbage!"]) == 2
