"""A busy host (the database's lock held past its timeout) mid-run is transient: the
member reads "busy, try again in a moment" with the log's reference (issue 12)."""

from __future__ import annotations

import logging

import pytest

from executor.agent import Invocation, RunnableAgent, RunStatus
from executor.errors import HostBusy
from executor.events import RunEvent, StepFinished
from executor.messages import Message
from executor.run import Executor
from executor.testing import AuditCapture, ScriptedModel


class BusyAudit(AuditCapture):
    async def record(self, event: RunEvent) -> None:
        if isinstance(event, StepFinished):
            raise HostBusy("SQLite database /srv/coterie/c.db is locked: ...")
        await super().record(event)


async def test_a_busy_host_mid_run_says_busy_with_a_reference(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="executor.run")
    result = await Executor(audit=BusyAudit()).run(
        RunnableAgent(model=ScriptedModel(["hi"])), Invocation([Message.user("hello")])
    )
    assert result.status is RunStatus.ERROR and result.error_kind == "busy"
    assert (
        result.note == f"coterie is busy right now; try again in a moment (ref {result.error_ref})."
    )
    assert "/srv" not in (result.note or "")
    logged = [r.getMessage() for r in caplog.records if str(result.error_ref) in r.getMessage()]
    assert logged and "is locked" in logged[0] and "Traceback" in logged[0]
