"""What coterie creates on disk is its owner's alone, whatever the umask: the data
directory (and any parent it makes) 0700; the SQLite database, its -wal and -shm files,
the lock file and every ``coterie db backup`` 0600. A directory that already exists
keeps the mode the operator gave it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from adapters.storage.db import Database
from adapters.storage.lock import InstanceLock
from tests.lifecycle.conftest import coterie_env


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _coterie(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Why through sh: the common umask (022), which made these files world-readable.
    command = " ".join([sys.executable, "-m", "bot", *args])
    return subprocess.run(
        ["sh", "-c", f"umask 022 && exec {command}"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=coterie_env(tmp_path),
        check=False,
    )


async def test_the_data_directory_database_and_backups_are_private(tmp_path: Path) -> None:
    out = _coterie(tmp_path, "db", "upgrade")
    assert out.returncode == 0, out.stderr
    data = tmp_path / "data"
    db_file = data / "coterie.db"
    assert _mode(data) == 0o700
    assert _mode(db_file) == 0o600

    # The -wal and -shm files exist while a connection writes: SQLite gives them the
    # database file's mode.
    db = Database.open(f"sqlite:///{db_file}")
    try:
        async with db.engine.connect() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
            await conn.commit()
            for suffix in ("-wal", "-shm"):
                side = db_file.with_name(db_file.name + suffix)
                assert _mode(side) == 0o600, suffix
    finally:
        await db.close()

    out = _coterie(tmp_path, "db", "backup", "backups/nightly/")
    assert out.returncode == 0, out.stderr
    [copy] = (tmp_path / "backups" / "nightly").iterdir()
    assert _mode(copy) == 0o600
    assert _mode(tmp_path / "backups") == 0o700 and _mode(copy.parent) == 0o700
    out = _coterie(tmp_path, "db", "backup", "one.db")
    assert out.returncode == 0, out.stderr
    assert _mode(tmp_path / "one.db") == 0o600


async def test_coterie_run_makes_the_data_directory_private_too(tmp_path: Path) -> None:
    """`coterie run` takes its lock before the database opens: the lock makes the directory."""
    old = os.umask(0o022)
    try:
        db_file = tmp_path / "state" / "data" / "coterie.db"
        lock = await InstanceLock.acquire(f"sqlite:///{db_file}")
        try:
            assert _mode(tmp_path / "state") == 0o700 and _mode(db_file.parent) == 0o700
            assert _mode(db_file.with_name("coterie.db.lock")) == 0o600
        finally:
            await lock.release()
    finally:
        os.umask(old)


async def test_a_directory_that_exists_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o750)  # e.g. systemd's StateDirectoryMode, for a backup group
    db = Database.open(f"sqlite:///{shared / 'coterie.db'}")
    try:
        await db.upgrade()
    finally:
        await db.close()
    assert _mode(shared) == 0o750
    assert _mode(shared / "coterie.db") == 0o600
