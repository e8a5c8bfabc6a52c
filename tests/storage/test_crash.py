"""A writer killed mid-write leaves no half-written run."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from adapters.storage.db import Database
from adapters.storage.recovery import recover
from tests.storage.dbs import sqlite_url

WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import UTC, datetime
    from adapters.storage.audit_sink import SqlAuditSink
    from adapters.storage.db import Database
    from executor.agent import Caller, RunResult, RunStatus
    from executor.events import RunFinished, RunStarted, StepFinished, ToolCallFinished
    from executor.messages import Usage

    async def main(url):
        db = Database.open(url)
        sink = SqlAuditSink(db.sessions, batch_size=50)
        i = 0
        while True:
            run_id, now = f"run{i}", datetime.now(UTC)
            await sink.record(RunStarted(run_id=run_id, at=now, agent="a", tier="t",
                                         trigger="cli", caller=Caller(user_id="u")))
            for step in range(1, 21):
                await sink.record(StepFinished(run_id=run_id, at=now, step=step, model="m",
                                               usage=Usage(cost_micros=1), stop_reason="x"))
                await sink.record(ToolCallFinished(run_id=run_id, at=now, step=step,
                    call_id=str(step), name="t", arguments={"x": "y" * 200}, result="r" * 500,
                    is_error=False, duration_ms=1))
            await sink.record(RunFinished(run_id=run_id, at=now, result=RunResult(
                run_id=run_id, status=RunStatus.OK, steps=20, usage=Usage(cost_micros=20))))
            print(run_id, flush=True)
            i += 1

    asyncio.run(main(sys.argv[1]))
    """
)


async def test_kill_during_writes_leaves_whole_runs(sqlite_template: Path, tmp_path: Path) -> None:
    path = tmp_path / "coterie.db"
    shutil.copyfile(sqlite_template, path)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, sqlite_url(path)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
        text=True,
    )
    try:
        assert proc.stdout is not None
        for _ in range(30):  # wait (by its output, not a sleep) until it is busy writing
            assert proc.stdout.readline().startswith("run")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = conn.execute(
            "SELECT r.run_id, r.status, r.steps, "
            "(SELECT count(*) FROM audit_steps s WHERE s.run_id = r.run_id), "
            "(SELECT count(*) FROM audit_tool_calls t WHERE t.run_id = r.run_id) "
            "FROM audit_runs r"
        ).fetchall()
    finally:
        conn.close()
    finished = [r for r in rows if r[1] == "ok"]
    assert len(finished) >= 30
    for run_id, _, steps, step_rows, tool_rows in finished:
        assert (steps, step_rows, tool_rows) == (20, 20, 20), run_id
    assert all(r[1] in ("ok", "running") for r in rows)

    db = Database.open(sqlite_url(path))
    try:
        report = await recover(db.sessions)
        assert len(report.interrupted_runs) == sum(1 for r in rows if r[1] == "running")
    finally:
        await db.close()
