"""``coterie db backup``: a consistent copy, into a directory with dated names, keeping
the newest N when asked; a backup restores by copying it back."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from bot.cli import main


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if var.startswith("COTERIE_") and var != "COTERIE_TEST_POSTGRES_URL":
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'data' / 'coterie.db'}")


def _copies(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("coterie-*.db"))


def test_backups_into_a_directory_keep_the_newest_n(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "upgrade"]) == 0
    for _ in range(4):
        assert main(["db", "backup", "backups/", "--keep", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("backed up SQLite database") == 4
    assert out.count("removed the old copy") == 2
    kept = _copies(tmp_path / "backups")
    assert len(kept) == 2
    # every copy is a whole, readable database at the current schema
    for name in kept:
        conn = sqlite3.connect(tmp_path / "backups" / name)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            conn.close()


def test_keep_needs_a_directory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade"]) == 0
    assert main(["db", "backup", "one.db", "--keep", "3"]) == 2
    assert "--keep needs a directory" in capsys.readouterr().err


def test_a_file_is_never_overwritten(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade"]) == 0
    assert main(["db", "backup", "one.db"]) == 0
    assert main(["db", "backup", "one.db"]) == 2
    assert "will not overwrite" in capsys.readouterr().err


def test_restore_is_copying_the_backup_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "upgrade"]) == 0
    db = tmp_path / "data" / "coterie.db"
    assert main(["db", "backup", "backups/"]) == 0
    [copy] = list((tmp_path / "backups").glob("coterie-*.db"))
    db.unlink()
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    shutil.copyfile(copy, db)
    capsys.readouterr()
    assert main(["db", "current"]) == 0
    assert "up to date" in capsys.readouterr().out
