"""The single-instance lock: one holder per database, the holder named in the refusal,
released on exit and by the OS on a crash; crash recovery only while holding it."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from adapters.storage.db import Database, DatabaseError
from adapters.storage.lock import (
    ADVISORY_KEY,
    InstanceLock,
    InstanceLocked,
    holds_lock,
    lock_holder,
    lock_path,
)
from adapters.storage.recovery import recover_interrupted_runs
from tests.lifecycle.conftest import ROOT


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'data' / 'coterie.db'}"


async def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    url = _url(tmp_path)
    first = await InstanceLock.acquire(url)
    try:
        assert holds_lock(url)
        path = lock_path(url)
        assert path == tmp_path / "data" / "coterie.db.lock"
        assert f"pid={os.getpid()}" in path.read_text()
        with pytest.raises(InstanceLocked) as refused:
            await InstanceLock.acquire(url)
        assert refused.value.holder is not None and refused.value.holder.pid == os.getpid()
        assert f"another coterie (pid {os.getpid()} on " in str(refused.value)
        assert str(tmp_path / "data" / "coterie.db") in str(refused.value)
        holder = await lock_holder(url)
        assert holder is not None and holder.pid == os.getpid()
    finally:
        await first.release()
    assert not holds_lock(url)
    assert await lock_holder(url) is None
    again = await InstanceLock.acquire(url)  # released: free again
    await again.release()


async def test_the_os_releases_the_lock_of_a_crashed_process(tmp_path: Path) -> None:
    url = _url(tmp_path)
    code = (
        "import asyncio, sys\n"
        "from adapters.storage.lock import InstanceLock\n"
        "async def main():\n"
        f"    lock = await InstanceLock.acquire({url!r})\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.readline()\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"held"
    with pytest.raises(InstanceLocked, match=f"pid {proc.pid} "):
        await InstanceLock.acquire(url)
    proc.kill()  # no clean exit: the kernel drops the flock
    await proc.wait()
    lock = await InstanceLock.acquire(url)
    await lock.release()


async def test_probing_creates_nothing(tmp_path: Path) -> None:
    url = _url(tmp_path)
    assert await lock_holder(url) is None
    assert not (tmp_path / "data").exists()


async def test_an_in_memory_database_needs_no_lock() -> None:
    assert holds_lock("sqlite+aiosqlite:///:memory:")
    lock = await InstanceLock.acquire("sqlite+aiosqlite:///:memory:")
    await lock.release()


async def test_crash_recovery_refuses_without_the_lock(tmp_path: Path) -> None:
    url = _url(tmp_path)
    db = Database.open(url)
    try:
        await db.upgrade()
        with pytest.raises(DatabaseError, match="single-instance lock"):
            await recover_interrupted_runs(db.sessions)
        async with await InstanceLock.acquire(url):
            assert (await recover_interrupted_runs(db.sessions)).interrupted_runs == []
    finally:
        await db.close()


# --- PostgreSQL ---------------------------------------------------------------------


def _dsn(pg_url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)


async def test_postgres_processes_share_the_lock_and_it_comes_back(pg_url: str) -> None:
    import asyncpg

    first = await InstanceLock.acquire(pg_url)
    try:
        # Several `coterie run` of this version share one PostgreSQL database.
        second = await InstanceLock.acquire(pg_url)
        await second.release()
        assert holds_lock(pg_url)
        probed = await lock_holder(pg_url)
        assert probed is not None and probed.pid == os.getpid() and probed.backend_pid

        # The server drops the lock's connection (a restart, an admin): verify takes it back.
        admin = await asyncpg.connect(_dsn(pg_url))
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", probed.backend_pid)
            assert await first.verify() is False  # it had dropped; taken again
            assert await first.verify() is True
            # A coterie from before instances (it took the lock alone) cannot start now.
            assert not await admin.fetchval("SELECT pg_try_advisory_lock($1, $2)", *ADVISORY_KEY)
        finally:
            await admin.close()
    finally:
        await first.release()
    assert await lock_holder(pg_url) is None


async def test_postgres_refuses_to_start_beside_a_coterie_too_old_to_share(pg_url: str) -> None:
    import asyncpg

    # What the single-process coterie did: the lock alone, its identity as the app name.
    old = await asyncpg.connect(
        _dsn(pg_url), server_settings={"application_name": "coterie pid=4242 host=vm1 since=x"}
    )
    try:
        assert await old.fetchval("SELECT pg_try_advisory_lock($1, $2)", *ADVISORY_KEY)
        for spelling in (pg_url, pg_url.replace("postgresql+asyncpg://", "postgres://")):
            with pytest.raises(InstanceLocked) as refused:
                await InstanceLock.acquire(spelling)
            assert refused.value.holder is not None and refused.value.holder.pid == 4242
            assert "an older coterie (pid 4242 on vm1" in str(refused.value)
    finally:
        await old.close()
    lock = await InstanceLock.acquire(pg_url)
    await lock.release()
