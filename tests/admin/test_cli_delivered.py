"""``coterie audit show`` says whether a run's answer reached Discord (the audit run's
``delivered``, recorded from the delivery's report after the run closed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.app import build_app
from bot.cli import main
from bot.settings import Settings
from executor.agent import Caller, DeliveryReport, Invocation, RunnableAgent, RunResult
from executor.messages import Message
from executor.ports import NullDelivery
from executor.testing import ScriptedModel
from tests.storage.dbs import sqlite_url


class Lost(NullDelivery):
    async def finish(self, result: RunResult) -> DeliveryReport:
        return DeliveryReport(delivered=False, error="ServerDisconnectedError: Server disconnected")


def test_audit_show_says_whether_the_answer_arrived(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = sqlite_url(tmp_path / "data" / "coterie.db")
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.chdir(tmp_path)

    async def seed() -> list[str]:
        app = await build_app(Settings(_env_file=None, database_url=url))
        try:
            ids = []
            for delivery in (Lost(), None, NullDelivery()):
                result = await app.executor.run(
                    RunnableAgent(name="assistant", model=ScriptedModel(["hi"])),
                    Invocation([Message.user("hi")], caller=Caller(user_id="1"), delivery=delivery),
                )
                ids.append(result.run_id)
            await app.audit.flush()
            return ids
        finally:
            await app.close()

    lost, bare, silent = asyncio.run(seed())
    assert main(["audit", "show", lost]) == 0
    assert "delivered no: ServerDisconnectedError: Server disconnected" in capsys.readouterr().out
    for run in (bare, silent):
        assert main(["audit", "show", run]) == 0
        assert "delivered not recorded" in capsys.readouterr().out
