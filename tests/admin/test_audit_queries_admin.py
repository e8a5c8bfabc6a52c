"""The audit queries behind /audit and /budget, on SQLite and PostgreSQL: unique id
prefixes, autocomplete on run ids and skills, top spenders, spend per day per persona
or skill in a time zone, recent costs, and the one export format."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from adapters.services.errors import RunNotFound
from adapters.storage.audit_queries import AuditQueries, RunFilter
from adapters.storage.audit_sink import SqlAuditSink
from adapters.storage.db import Database
from executor.agent import Caller, Invocation, RunnableAgent
from executor.messages import Message, Usage
from executor.run import Executor
from executor.testing import Reply, ScriptedModel


async def _runs(db: Database) -> list[str]:
    sink = SqlAuditSink(db.sessions)
    executor = Executor(audit=sink)
    ids = []
    for i, (user, guild, persona, skill, cost) in enumerate(
        [
            ("1", "g1", "researcher", None, 100),
            ("1", "g1", "researcher", "digest", 300),
            ("2", "g1", "assistant", None, 50),
            ("3", "g2", "assistant", "digest_b", 999),
        ]
    ):
        model = ScriptedModel()
        model.push(Reply(text=f"answer {i}", usage=Usage(output_tokens=1, cost_micros=cost)))
        result = await executor.run(
            RunnableAgent(name=persona, persona=persona, skill=skill, model=model),
            Invocation(
                messages=[Message.user("q")],
                caller=Caller(user_id=user, display_name=f"n{user}", guild_id=guild),
                run_id=f"{'ab' if i < 2 else 'cd'}{i}-{'x' * 10}",
            ),
        )
        ids.append(result.run_id)
    await sink.close()
    return ids


async def test_the_admin_queries(db: Database) -> None:
    ids = await _runs(db)
    q = AuditQueries(db.sessions)
    assert await q.resolve_run("ab0") == ids[0]
    assert await q.resolve_run(ids[1]) == ids[1]  # a whole id, even if it prefixes another
    with pytest.raises(RunNotFound, match="More than one"):
        await q.resolve_run("ab")
    with pytest.raises(RunNotFound, match="No run starts"):
        await q.resolve_run("cd3", guild_id="g1")  # another guild's run is not found here
    with pytest.raises(RunNotFound, match="not a run id"):
        await q.resolve_run("a%")
    assert [r.run_id for r in await q.recent_runs(guild_id="g1", typed="ab")] == ids[1::-1]
    assert await q.recent_runs(typed="'; drop") == []
    assert await q.recent_skills(guild_id="g1") == ["digest"]
    assert sorted(await q.recent_skills(typed="dig")) == ["digest", "digest_b"]
    top = await q.top_spenders(since=datetime.now(UTC) - timedelta(days=1), guild_id="g1")
    assert [(t.user_id, t.user_name, t.runs, t.cost_micros) for t in top] == [
        ("1", "n1", 2, 400),
        ("2", "n2", 1, 50),
    ]
    assert sorted(await q.recent_costs(user_id="1")) == [100, 300]
    tz = ZoneInfo("Pacific/Kiritimati")  # UTC+14: "today" there may be tomorrow in UTC
    spend = await q.spend_by_label(since=datetime.now(UTC) - timedelta(days=1), tz=tz)
    assert {(s.label, s.cost_micros) for s in spend} == {
        ("researcher", 100),
        ("digest", 300),
        ("assistant", 50),
        ("digest_b", 999),
    }
    assert {s.day for s in spend} == {datetime.now(tz).date()}
    lines = [line async for line in q.export_lines(RunFilter(guild_id="g1"))]
    assert all(line.endswith("\n") for line in lines)
    assert sorted(json.loads(line)["run_id"] for line in lines) == sorted(ids[:3])
