"""The chaos tests' shared fixtures: databases, and for the resume tests a scripted
loopback model (``model``) and the ``coterie run`` processes they start (``lives``,
killed at the end)."""

from collections.abc import AsyncIterator

import pytest

from tests.chaos.test_sigkill_resume import ScriptedLoopback
from tests.lifecycle.conftest import Proc
from tests.storage.dbs import db, pg_db, pg_url, sqlite_db, sqlite_template

__all__ = ["db", "lives", "model", "pg_db", "pg_url", "sqlite_db", "sqlite_template"]


@pytest.fixture
async def model() -> AsyncIterator[ScriptedLoopback]:
    server = ScriptedLoopback()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def lives() -> AsyncIterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        await p.kill()
