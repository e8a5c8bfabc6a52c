"""``coterie mcp list`` only reads: with no database yet it lists the servers, says so,
and creates none; on a database behind the schema it says what to do and upgrades
nothing (as ``coterie status``)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from adapters.storage.db import Database
from bot.cli import main
from tests.mcp.conftest import SERVER
from tests.storage.dbs import sqlite_url


@pytest.fixture
def db_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "data" / "coterie.db"
    monkeypatch.delenv("COTERIE_CONFIG_FILE", raising=False)
    monkeypatch.setenv("DATABASE_URL", sqlite_url(path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "coterie.toml").write_text(
        f"""
[mcp.t]
command = [{json.dumps(sys.executable)}, {json.dumps(str(SERVER))}]
tools = ["echo", "add"]
""",
        encoding="utf-8",
    )
    return path


def _revision(path: Path) -> str | None:
    async def read() -> str | None:
        db = Database.open(sqlite_url(path), create=False)
        try:
            return (await db.current()).current
        finally:
            await db.close()

    return asyncio.run(read())


def test_with_no_database_it_lists_says_so_and_creates_none(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["mcp", "list", "--offline"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no database yet (there is no SQLite database at ")
    assert "`coterie mcp accept NAME` creates it" in out
    assert "t__echo" in out and "not accepted" in out
    assert not db_path.exists() and not db_path.parent.exists()

    assert main(["mcp", "list", "--offline", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "there is no SQLite database" in data["no_database"]
    assert {t["status"] for t in data["servers"][0]["tools"]} == {"not accepted"}
    assert not db_path.exists()


def test_an_empty_database_is_not_migrated_by_a_listing(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db_path.parent.mkdir()
    db_path.touch()  # there, but never migrated
    assert main(["mcp", "list", "--offline"]) == 0
    assert "no database yet (the database has no coterie schema yet)" in capsys.readouterr().out
    assert _revision(db_path) is None


def test_a_database_behind_the_schema_is_not_upgraded_by_a_listing(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def old() -> None:
        db = Database.open(sqlite_url(db_path))
        try:
            await db.upgrade("0013")
        finally:
            await db.close()

    asyncio.run(old())
    before = _revision(db_path)
    assert main(["mcp", "list", "--offline"]) == 1
    err = capsys.readouterr().err
    assert f"the database is at revision {before}, not " in err
    assert "(or run `coterie db upgrade`)" in err
    assert _revision(db_path) == before
