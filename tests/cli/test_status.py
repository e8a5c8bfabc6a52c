"""``coterie status``: the live ``coterie run`` processes on the database, as a table or
JSON; a process that stopped renewing its lease is not listed; a database behind the
schema says how to bring it up."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from sqlalchemy import text

from adapters.services.instances import Identity
from adapters.storage.db import Database
from adapters.storage.instances import SCHEDULER_LEASE, SqlInstances
from bot.cli import main


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if var.startswith("COTERIE_") and var != "COTERIE_TEST_POSTGRES_URL":
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'data' / 'coterie.db'}")


def _seed(url: str) -> None:
    async def seed() -> None:
        db = Database.open(url)
        try:
            await db.upgrade()
            store = SqlInstances(db.sessions)
            for name, pid, shards in (("a1", 101, [0, 1]), ("b2", 202, [2]), ("dead", 303, [])):
                await store.register(Identity(id=name, kind="bot", host="vm1", pid=pid), ttl_s=60)
                await store.heartbeat(name, ttl_s=60, runs=pid // 100, shards=shards, shard_count=3)
            await store.register(Identity(id="ask", kind="cli", host="vm1", pid=404), ttl_s=60)
            assert await store.take(SCHEDULER_LEASE, "b2", ttl_s=60)
            async with db.engine.begin() as conn:
                await conn.execute(
                    text(
                        "UPDATE instances SET expires_at = '2000-01-01 00:00:00' WHERE id = 'dead'"
                    )
                )
        finally:
            await db.close()

    asyncio.run(seed())


def test_status_lists_the_live_bots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["status"]) == 0
    assert capsys.readouterr().out.strip() == "no coterie run is alive on this database"

    _seed(os.environ["DATABASE_URL"])
    assert main(["status", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["instances"]
    for i in listed:
        assert 0 <= i.pop("heartbeat_age_s") < 60
    assert listed == [
        {"id": "a1", "host": "vm1", "pid": 101, "shards": [0, 1], "leader": False, "runs": 1},
        {"id": "b2", "host": "vm1", "pid": 202, "shards": [2], "leader": True, "runs": 2},
    ]
    assert main(["status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["instance", "host", "pid", "shards", "leader", "heartbeat", "runs"]
    assert lines[2].split()[:5] == ["a1", "vm1", "101", "0,1", "of"]
    assert "yes" in lines[3].split()


def test_status_on_a_database_behind_the_schema_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "coterie.db").touch()  # there, but never migrated
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert "coterie run` upgrades it at start (or run `coterie db upgrade`)" in err
