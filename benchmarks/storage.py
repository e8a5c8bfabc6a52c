"""Storage benchmark: the audit sink and the budget ledger on SQLite (WAL).

    .venv/bin/python benchmarks/storage.py [--runs 400] [--ledger-rows 1000000]

Prints, side by side in one run:

* audit rows per second through ``SqlAuditSink`` versus a raw ``aiosqlite`` batched
  ``executemany`` of the same rows (the floor), and the sink's cost per run step;
* the database's share of a member's message before the model request: the chat
  flow and executor as ``build_app`` wires them on SQLite, beside the same path with
  in-memory ports, and which parts took it;
* budget reserve+settle pairs per second with 1 and with 50 concurrent members;
* the p50/p95 of a budget check (a reservation, and a status read) with 1,000,000
  rows in the ledger.

Goals (issue 19): audit with 10 concurrent runs >= 1/3 of the floor, one run at a
time <= 0.5 ms of sink per step; the database's share of a message <= 3 ms; budget
check <= 10 ms p95 (issue 19's <= 5 ms belongs to the ledger's own work).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.storage.audit_sink import SqlAuditSink
from adapters.storage.budget import SqlBudgetLedger
from adapters.storage.db import Database
from executor.agent import Caller, RunResult, RunStatus
from executor.events import (
    ModelAttemptEvent,
    ModelRequestEvent,
    RunEvent,
    RunFinished,
    RunStarted,
    StepFinished,
    ToolCallFinished,
)
from executor.messages import Usage
from executor.models.base import Attempt

STEPS = 10  # per run: request + attempt + step + tool call = 4 child rows per step


def run_events(run_id: str, now: datetime) -> list[RunEvent]:
    events: list[RunEvent] = [
        RunStarted(
            run_id=run_id,
            at=now,
            agent="assistant",
            tier="standard",
            trigger="chat",
            caller=Caller(user_id="u1", guild_id="g1", channel_id="c1"),
            prompt_excerpt="summarise this page",
            estimate_micros=20_000,
        )
    ]
    for step in range(1, STEPS + 1):
        events += [
            # What the request would be charged if never answered (written at once).
            ModelRequestEvent(
                run_id=run_id,
                at=now,
                step=step,
                message_count=step * 2,
                input_tokens=1200,
                unanswered_micros=3600,
                attempts_before=step - 1,
            ),
            # The answering attempt carries the response's usage (written at once), as
            # the run loop records it.
            ModelAttemptEvent(
                run_id=run_id,
                at=now,
                step=step,
                attempt=Attempt(model="a:m", latency_ms=812.5),
                usage=Usage(input_tokens=1200, output_tokens=80, cost_micros=900),
            ),
            StepFinished(
                run_id=run_id,
                at=now,
                step=step,
                model="a:m",
                usage=Usage(input_tokens=1200, output_tokens=80, cost_micros=900),
                stop_reason="tool_use",
                text_excerpt="let me look that up",
                tool_calls=1,
            ),
            ToolCallFinished(
                run_id=run_id,
                at=now,
                step=step,
                call_id=f"call_{step}",
                name="web_fetch",
                arguments={"url": "https://example.com/page", "api_key": "sk-abcdefghijklmnop"},
                result="Example Domain. This domain is for use in examples. " * 8,
                is_error=False,
                duration_ms=120.0,
            ),
        ]
    events.append(
        RunFinished(
            run_id=run_id,
            at=now,
            result=RunResult(
                run_id=run_id,
                status=RunStatus.OK,
                output="The page says ...",
                steps=STEPS,
                usage=Usage(input_tokens=12_000, output_tokens=800, cost_micros=9_000),
            ),
        )
    )
    return events


async def fresh_db(directory: Path, name: str) -> Database:
    directory.mkdir(parents=True, exist_ok=True)
    db = Database.open(f"sqlite+aiosqlite:///{directory / name}")
    await db.upgrade()
    return db


async def bench_audit_sink(directory: Path, runs: int, concurrency: int) -> tuple[float, int, int]:
    db = await fresh_db(directory, "audit.db")
    sink = SqlAuditSink(db.sessions)
    now = datetime.now(UTC)
    batches = [
        [run_events(f"r{c}-{i}", now) for i in range(runs // concurrency)]
        for c in range(concurrency)
    ]
    rows = sum(len(evts) for b in batches for evts in b)
    steps = runs // concurrency * concurrency * STEPS

    async def worker(my_runs: list[list[RunEvent]]) -> None:
        for evts in my_runs:
            for e in evts:
                await sink.record(e)

    t = time.perf_counter()
    await asyncio.gather(*(worker(b) for b in batches))
    await sink.close()
    elapsed = time.perf_counter() - t
    await db.close()
    return elapsed, rows, steps


async def bench_raw_floor(directory: Path, runs: int) -> tuple[float, int]:
    """The same rows, inserted with aiosqlite executemany in batches: the floor."""
    import aiosqlite

    db = await fresh_db(directory, "floor.db")
    path = db.sqlite_path
    await db.close()
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    conn = await aiosqlite.connect(str(path), isolation_level=None)
    await conn.execute("PRAGMA journal_mode=WAL")
    await conn.execute("PRAGMA synchronous=NORMAL")
    rows = 0
    t = time.perf_counter()
    per_batch = 50  # runs per transaction, ~2,000 rows like the sink's batch
    for start in range(0, runs, per_batch):
        ids = [f"r{i}" for i in range(start, min(start + per_batch, runs))]
        run_rows = [
            (
                rid,
                "chat",
                "u1",
                "",
                "g1",
                "c1",
                "assistant",
                "standard",
                "ok",
                now,
                now,
                STEPS,
                1,
                1,
                9000,
                0,
                "",
                "",
            )
            for rid in ids
        ]
        step_rows = [
            (rid, s, "a:m", "tool_use", 1200, 80, 900, 1, "let me", now)
            for rid in ids
            for s in range(1, STEPS + 1)
        ]
        att_rows = [(rid, s, "a:m", 812.5, now) for rid in ids for s in range(1, STEPS + 1)]
        tool_rows = [
            (rid, s, f"call_{s}", "web_fetch", '{"url": "x"}', "Example" * 50, 0, 120.0, now)
            for rid in ids
            for s in range(1, STEPS + 1)
        ]
        ev_rows = [
            (rid, "model_request", s, 0, '{"message_count": 2}', now)
            for rid in ids
            for s in range(1, STEPS + 1)
        ]
        await conn.execute("BEGIN IMMEDIATE")
        await conn.executemany(
            "INSERT INTO audit_runs (run_id, trigger, user_id, user_name, guild_id, channel_id, agent, tier, status,"
            " started_at, ended_at, steps, input_tokens, output_tokens, cost_micros, estimate_micros,"
            " prompt_excerpt, output_excerpt) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            run_rows,
        )
        await conn.executemany(
            "INSERT INTO audit_steps (run_id, step, model, stop_reason, input_tokens, output_tokens, cost_micros,"
            " tool_calls, text_excerpt, at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            step_rows,
        )
        await conn.executemany(
            "INSERT INTO audit_model_attempts (run_id, step, model, latency_ms, at) VALUES (?,?,?,?,?)",
            att_rows,
        )
        await conn.executemany(
            "INSERT INTO audit_tool_calls (run_id, step, call_id, name, arguments, result_excerpt, is_error,"
            " duration_ms, at) VALUES (?,?,?,?,?,?,?,?,?)",
            tool_rows,
        )
        await conn.executemany(
            "INSERT INTO audit_events (run_id, kind, step, cost_micros, data, at) VALUES (?,?,?,?,?,?)",
            ev_rows,
        )
        await conn.execute("COMMIT")
        rows += len(run_rows) * 2 + len(step_rows) + len(att_rows) + len(tool_rows) + len(ev_rows)
    elapsed = time.perf_counter() - t
    await conn.close()
    return elapsed, rows


class _Surface:
    """The chat flow's surface for the message path: a one-turn history, no Discord."""

    def __init__(self, turns: list[Any]) -> None:
        self.turns = turns

    async def history(self, source: Any, *, max_messages: int) -> list[Any]:
        return list(self.turns)

    async def open_thread(self, name: str, starter: str) -> str | None:
        return None

    async def delivery(self, persona: Any) -> Any:
        from executor.ports import NullDelivery

        return NullDelivery()


class _DictPersonas:
    """The floor's persona lookup: a dict, no database."""

    def __init__(self, builtins: dict[str, Any]) -> None:
        self.builtins = builtins

    async def find(self, guild_id: str | None, name: str) -> Any:
        return self.builtins.get(name.lower())


async def bench_message_path(
    directory: Path, messages: int = 300, members: int = 50
) -> dict[str, Any]:
    """A member's mention, from the chat flow taking it to the model's request: the app
    as ``build_app`` wires it on SQLite, then the same app with in-memory ports (no
    database). The difference is the database's share; also which parts took it."""
    from adapters.services.chat import IncomingMessage
    from adapters.services.conversation import Turn
    from adapters.services.ports import InMemoryGuildSettings, InMemoryThreadStore
    from bot.app import build_app
    from bot.settings import Settings
    from executor.events import RunStarted
    from executor.ports import InMemoryAuditSink, UnlimitedBudget
    from executor.testing import FunctionModel

    stamps: list[float] = []

    def answer(_request: Any) -> str:
        stamps.append(time.perf_counter())
        return "ok"

    model = FunctionModel(answer)

    class Resolver:
        default_tier = "standard"
        tiers = ("fast", "standard", "smart")

        def resolve(self, tier: str) -> Any:
            return model

        def estimate_micros(self, tier: str, input_tokens: int, output_tokens: int) -> int:
            return 1_000

    directory.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{directory / 'path.db'}",
        budget_default_usd=1_000_000,
    )
    app = await build_app(settings, resolver=Resolver())
    surface = _Surface([Turn(author_name="m", content="hello there, what's new?")])
    parts: dict[str, list[float]] = {}

    def timed(name: str, fn: Any, only: Any = None) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            if only is not None and not only(*args):
                return await fn(*args, **kwargs)
            t = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                parts.setdefault(name, []).append(time.perf_counter() - t)

        return call

    async def path(n: int) -> list[float]:
        out = []
        for i in range(n):
            caller = Caller(user_id=f"m{i % members}", guild_id="g1", channel_id="c1")
            msg = IncomingMessage(caller=caller, guild_id="g1", channel_id="c1", mentions_bot=True)
            t = time.perf_counter()
            await app.chat.answer(msg, surface)
            out.append(stamps[-1] - t)
        return out

    try:
        await path(20)  # warm-up
        personas, audit, budget = app.chat.personas, app.executor.audit, app.executor.budget

        class TimedPersonas:
            find = staticmethod(timed("persona lookup", personas.find))

        app.chat.personas = TimedPersonas()  # type: ignore[assignment]
        budget.reserve = timed("budget reservation", budget.reserve)  # type: ignore[method-assign]
        audit.record = timed(  # type: ignore[method-assign]
            "run start (audit)", audit.record, only=lambda e: isinstance(e, RunStarted)
        )
        real = await path(messages)
        # The floor: the same flow and executor with in-memory ports.
        app.chat.personas = _DictPersonas(personas.builtins)  # type: ignore[assignment]
        app.chat.guild_settings = InMemoryGuildSettings()
        app.chat.threads = InMemoryThreadStore()
        app.executor.audit, app.executor.budget = InMemoryAuditSink(), UnlimitedBudget()
        floor = await path(messages)
    finally:
        await app.close()
    return {
        "real": statistics.median(real) * 1e3,
        "floor": statistics.median(floor) * 1e3,
        # Each part is called once a message: its median, and its mean (checkpoints,
        # a busy moment of the disk) after it.
        "parts": {
            k: (statistics.median(v) * 1e3, statistics.fmean(v) * 1e3) for k, v in parts.items()
        },
    }


async def bench_budget_pairs(directory: Path, members: int, pairs_per_member: int) -> float:
    db = await fresh_db(directory, f"budget_{members}.db")
    ledger = SqlBudgetLedger(db.sessions, default_limit_micros=10**12)

    async def member(m: int) -> None:
        who = Caller(user_id=f"m{m}")
        for i in range(pairs_per_member):
            r = await ledger.reserve(who, f"r{m}-{i}", 20_000)
            await ledger.settle(r, 9_000)

    t = time.perf_counter()
    await asyncio.gather(*(member(m) for m in range(members)))
    elapsed = time.perf_counter() - t
    await db.close()
    return members * pairs_per_member / elapsed


def fill_ledger(path: Path, rows: int, members: int) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    rnd = random.Random(7)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    chunk = 100_000
    for start in range(0, rows, chunk):
        batch = [
            (
                f"m{rnd.randrange(members)}",
                (now - timedelta(seconds=rnd.randrange(30 * 86400))).isoformat(sep=" "),
                rnd.randrange(1, 20_000),
                f"old{start + i}",
                "",
            )
            for i in range(min(chunk, rows - start))
        ]
        conn.executemany(
            "INSERT INTO budget_ledger (user_id, at, amount_micros, run_id, note) VALUES (?,?,?,?,?)",
            batch,
        )
        conn.commit()
    conn.execute("ANALYZE")
    conn.commit()
    conn.close()


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100)[int(p) - 1]


async def bench_budget_check(
    directory: Path, ledger_rows: int, members: int, samples: int
) -> dict[str, Any]:
    db = await fresh_db(directory, "ledger.db")
    path = db.sqlite_path
    await db.close()
    t = time.perf_counter()
    fill_ledger(path, ledger_rows, members)  # type: ignore[arg-type]
    fill_s = time.perf_counter() - t
    db = Database.open(f"sqlite+aiosqlite:///{path}")
    ledger = SqlBudgetLedger(db.sessions, default_limit_micros=10**12)
    rnd = random.Random(11)
    reserve_ms: list[float] = []
    status_ms: list[float] = []
    for i in range(samples):
        who = Caller(user_id=f"m{rnd.randrange(members)}")
        t = time.perf_counter()
        r = await ledger.reserve(who, f"bench{i}", 20_000)
        reserve_ms.append((time.perf_counter() - t) * 1000)
        await ledger.settle(r, 9_000)
        t = time.perf_counter()
        await ledger.status(who.user_id)
        status_ms.append((time.perf_counter() - t) * 1000)
    await db.close()
    return {
        "fill_s": fill_s,
        "reserve_p50": statistics.median(reserve_ms),
        "reserve_p95": pct(reserve_ms, 95),
        "status_p50": statistics.median(status_ms),
        "status_p95": pct(status_ms, 95),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400, help="audited runs (10 steps each)")
    parser.add_argument("--ledger-rows", type=int, default=1_000_000)
    parser.add_argument("--members", type=int, default=1_000, help="members in the big ledger")
    parser.add_argument("--samples", type=int, default=500, help="budget checks timed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="coterie-bench-") as tmp:
        d = Path(tmp)
        sink_s, sink_rows, sink_steps = await bench_audit_sink(d, args.runs, concurrency=10)
        seq_s, seq_rows, seq_steps = await bench_audit_sink(d / "seq", args.runs, concurrency=1)
        floor_s, floor_rows = await bench_raw_floor(d, args.runs)
        path = await bench_message_path(d / "path")
        pairs_1 = await bench_budget_pairs(d, members=1, pairs_per_member=500)
        pairs_50 = await bench_budget_pairs(d, members=50, pairs_per_member=20)
        check = await bench_budget_check(d, args.ledger_rows, args.members, args.samples)

    print(
        f"SQLite {sqlite3.sqlite_version}, WAL, synchronous=NORMAL; Python {sys.version.split()[0]}"
    )
    print()
    print(
        f"{'audit (' + str(args.runs) + ' runs x ' + str(STEPS) + ' steps)':<44}{'rows':>9}{'rows/s':>12}"
    )
    print(f"{'  SqlAuditSink, 10 concurrent runs':<44}{sink_rows:>9}{sink_rows / sink_s:>12,.0f}")
    print(f"{'  SqlAuditSink, 1 run at a time':<44}{seq_rows:>9}{seq_rows / seq_s:>12,.0f}")
    print(
        f"{'  raw aiosqlite executemany (floor)':<44}{floor_rows:>9}{floor_rows / floor_s:>12,.0f}"
    )
    print(
        f"{'  sink cost per step (4 rows), 10 / 1 runs':<44}{'':>9}"
        f"{sink_s / sink_steps * 1e6:>6,.0f} / {seq_s / seq_steps * 1e6:,.0f} us"
    )
    share = (sink_rows / sink_s) / (floor_rows / floor_s)
    per_step_ms = seq_s / seq_steps * 1e3
    print(
        f"{'  10 concurrent runs / floor (goal >= 0.33)':<44}{'':>9}{share:>12.2f}"
        f"  {'met' if share >= 1 / 3 else 'MISSED'}"
    )
    print(
        f"{'  1 run: sink per step (goal <= 0.5 ms)':<44}{'':>9}{per_step_ms:>9.2f} ms"
        f"  {'met' if per_step_ms <= 0.5 else 'MISSED'}"
    )
    print()
    db_ms = path["real"] - path["floor"]
    print("a member's mention -> the model's request (chat flow + executor), median")
    print(f"{'  as build_app wires it, SQLite':<44}{'':>9}{path['real']:>9.2f} ms")
    print(f"{'  the same with in-memory ports (floor)':<44}{'':>9}{path['floor']:>9.2f} ms")
    print(
        f"{'  the database share (goal <= 3 ms)':<44}{'':>9}{db_ms:>9.2f} ms"
        f"  {'met' if db_ms <= 3 else 'MISSED'}"
    )
    for name, (median, mean) in path["parts"].items():
        print(f"{'    ' + name:<44}{'':>9}{median:>9.2f} ms (mean {mean:.2f})")
    print()
    print(f"{'budget reserve+settle':<44}{'':>9}{'pairs/s':>12}")
    print(f"{'  1 member':<44}{'':>9}{pairs_1:>12,.0f}")
    print(f"{'  50 concurrent members':<44}{'':>9}{pairs_50:>12,.0f}")
    print()
    print(
        f"budget check with {args.ledger_rows:,} ledger rows ({args.members:,} members, 30 days; filled in {check['fill_s']:.1f} s)"
    )
    print(
        f"{'  reserve (check + hold), p50 / p95':<44}{check['reserve_p50']:>8.2f} / {check['reserve_p95']:.2f} ms"
    )
    print(
        f"{'  status read, p50 / p95':<44}{check['status_p50']:>8.2f} / {check['status_p95']:.2f} ms"
    )
    ok_check = check["reserve_p95"] <= 10
    print()
    print(f"goal: budget check <= 10 ms p95 {'met' if ok_check else 'MISSED'}")


if __name__ == "__main__":
    asyncio.run(main())
