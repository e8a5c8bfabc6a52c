"""Storage benchmark: the audit sink and the budget ledger on SQLite (WAL).

    .venv/bin/python benchmarks/storage.py [--runs 400] [--ledger-rows 1000000]
                                           [--before REV]

Prints, side by side in one run:

* audit rows per second through ``SqlAuditSink``, 10 concurrent runs, versus a raw
  ``aiosqlite`` batched ``executemany`` of the same rows (the floor) and versus the
  sink's own transactions for ten runs at once with prebuilt rows through ``sqlite3``
  (the floor under the crash rules); the sink's cost per run step, one run at a time,
  beside the same transactions (two commits a step) likewise (that case's floor);
* the database's share of a member's message before the model request: the chat
  flow and executor as ``build_app`` wires them on SQLite, beside the same path with
  in-memory ports, and which parts took it;
* budget reserve+settle pairs per second with 1 and with 50 concurrent members;
* the p50/p95 of a budget check (a reservation, and a status read) with 1,000,000
  rows in the ledger.

Goals (issue 19): audit with 10 concurrent runs >= 1/3 of the floor, one run at a
time <= 0.5 ms of sink per step; the database's share of a message <= 3 ms; budget
check <= 5 ms p95 at 1M ledger rows.

``--before REV`` measures the code of commit ``REV`` too (``git archive`` into a
temporary directory, run there by this same script in a child process: the worktree
is left alone), and prints its figures in a column beside today's: both in one run,
on the same machine at the same load. ``--json`` prints the figures as JSON
(``--root DIR``: of the code in DIR), which is how the column is made.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _revision import checkout

# Why before the imports: --root DIR measures the code in DIR (see --before).
_ROOT = Path(__file__).resolve().parents[1]
if "--root" in sys.argv:
    _ROOT = Path(sys.argv[sys.argv.index("--root") + 1]).resolve()
sys.path.insert(0, str(_ROOT))

from adapters.storage.audit_sink import SqlAuditSink  # noqa: E402
from adapters.storage.budget import SqlBudgetLedger  # noqa: E402
from adapters.storage.db import Database  # noqa: E402
from executor.agent import Caller, RunResult, RunStatus  # noqa: E402
from executor.events import (  # noqa: E402
    ModelAttemptEvent,
    ModelRequestEvent,
    RunEvent,
    RunFinished,
    RunStarted,
    StepFinished,
    ToolCallFinished,
)
from executor.messages import Usage  # noqa: E402
from executor.models.base import Attempt  # noqa: E402

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


async def bench_commit_floor(directory: Path, runs: int, group: int = 1) -> tuple[float, float]:
    """The sink's floor under its crash rules: the transactions the sink writes for
    ``group`` runs going at once (each commit holds every run's rows of that moment:
    the run rows, then per step the request with the step and tool call before it,
    then the answered attempt, then the closing), with the same rows built
    beforehand, through ``sqlite3`` on this thread: no sink, no asyncio, no bind
    processors. Seconds a step (of one run), and rows (events) a second."""
    db = await fresh_db(directory, f"commits-{group}.db")
    path = db.sqlite_path
    await db.close()
    conn = sqlite3.connect(str(path), isolation_level=None)
    for pragma in (
        "PRAGMA foreign_keys=ON",
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=NORMAL",
    ):
        conn.execute(pragma)
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    data = '{"message_count": 2, "input_tokens": 1200, "unanswered_micros": 3600, "attempts_before": 0}'
    arguments = '{"url": "https://example.com/page", "api_key": "[redacted]"}'
    result = "Example Domain. This domain is for use in examples. " * 8
    counts = (0, 0, 0, 0, 20_000, "summarise this page", "")
    insert_step = (
        "INSERT INTO audit_steps (run_id, step, model, stop_reason, input_tokens,"
        " output_tokens, cost_micros, tool_calls, text_excerpt, at)"
        " VALUES (?,?,?,?,?,?,?,?,?,?)"
    )
    insert_tool = (
        "INSERT INTO audit_tool_calls (run_id, step, call_id, name, arguments,"
        " result_excerpt, is_error, duration_ms, at) VALUES (?,?,?,?,?,?,?,?,?)"
    )

    def step_rows(ids: list[str], step: int) -> list[tuple[Any, ...]]:
        return [(rid, step, "a:m", "tool_use", 1200, 80, 900, 1, "let me look", now) for rid in ids]

    def tool_rows(ids: list[str], step: int) -> list[tuple[Any, ...]]:
        return [(rid, step, "call", "web_fetch", arguments, result, 0, 120.0, now) for rid in ids]

    t = time.perf_counter()
    for first in range(0, runs, group):
        ids = [f"r{r}" for r in range(first, min(first + group, runs))]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO audit_runs (run_id, trigger, user_id, user_name, guild_id, channel_id,"
            " agent, tier, status, started_at, steps, input_tokens, output_tokens, cost_micros,"
            " estimate_micros, prompt_excerpt, output_excerpt)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    rid,
                    "chat",
                    "u1",
                    "",
                    "g1",
                    "c1",
                    "assistant",
                    "standard",
                    "running",
                    now,
                    *counts,
                )
                for rid in ids
            ],
        )
        conn.execute("COMMIT")
        for step in range(1, STEPS + 1):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO audit_events (run_id, kind, step, cost_micros, data, at)"
                " VALUES (?,?,?,?,?,?)",
                [(rid, "model_request", step, 0, data, now) for rid in ids],
            )
            if step > 1:  # the step and tool call before this request
                conn.executemany(insert_step, step_rows(ids, step - 1))
                conn.executemany(insert_tool, tool_rows(ids, step - 1))
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO audit_model_attempts (run_id, step, model, latency_ms, error,"
                " error_kind, input_tokens, output_tokens, cost_micros, at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                [(rid, step, "a:m", 812.5, None, None, 1200, 80, 900, now) for rid in ids],
            )
            conn.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(insert_step, step_rows(ids, STEPS))
        conn.executemany(insert_tool, tool_rows(ids, STEPS))
        conn.executemany(
            "UPDATE audit_runs SET status = 'ok', ended_at = ?, steps = ? WHERE run_id = ?",
            [(now, STEPS, rid) for rid in ids],
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t
    conn.close()
    # Rows as the sink's figures count them: an event each (the run's two included).
    return elapsed / (runs * STEPS), runs * (2 + 4 * STEPS) / elapsed


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
    from executor.events import ModelRequestEvent, RunStarted
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
        record = timed("run start (audit)", audit.record, only=lambda e: isinstance(e, RunStarted))
        audit.record = timed(  # type: ignore[method-assign]
            "first model request (audit)",
            record,
            only=lambda e: isinstance(e, ModelRequestEvent) and e.step == 1,
        )
        # Runs that resume (issue 18) save a chat run's conversation before its first
        # request; a commit older than them has no checkpoints.
        checkpoints = getattr(app.executor, "checkpoints", None)
        if checkpoints is not None:
            checkpoints.save = timed(  # type: ignore[method-assign]
                "first checkpoint (resume)", checkpoints.save, only=lambda c: c.step == 0
            )
        real = await path(messages)
        # The floor: the same flow and executor with in-memory ports.
        app.chat.personas = _DictPersonas(personas.builtins)  # type: ignore[assignment]
        app.chat.guild_settings = InMemoryGuildSettings()
        app.chat.threads = InMemoryThreadStore()
        app.executor.audit, app.executor.budget = InMemoryAuditSink(), UnlimitedBudget()
        if checkpoints is not None:
            from executor.ports import InMemoryCheckpoints

            app.executor.checkpoints = InMemoryCheckpoints()
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


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every figure, as numbers (the printer formats them)."""
    with tempfile.TemporaryDirectory(prefix="coterie-bench-") as tmp:
        d = Path(tmp)
        sink_s, sink_rows, sink_steps = await bench_audit_sink(d, args.runs, concurrency=10)
        seq_s, seq_rows, seq_steps = await bench_audit_sink(d / "seq", args.runs, concurrency=1)
        floor_s, floor_rows = await bench_raw_floor(d, args.runs)
        commit_floor_s, _ = await bench_commit_floor(d, args.runs)
        _, group_floor = await bench_commit_floor(d, args.runs, group=10)
        path = await bench_message_path(d / "path")
        pairs_1 = await bench_budget_pairs(d, members=1, pairs_per_member=500)
        pairs_50 = await bench_budget_pairs(d, members=50, pairs_per_member=20)
        check = await bench_budget_check(d, args.ledger_rows, args.members, args.samples)
    parts = path["parts"]
    return {
        "sink_10": sink_rows / sink_s,
        "sink_1": seq_rows / seq_s,
        "floor": floor_rows / floor_s,
        "step_10_us": sink_s / sink_steps * 1e6,
        "step_1_us": seq_s / seq_steps * 1e6,
        "step_floor_us": commit_floor_s * 1e6,
        "group_floor": group_floor,
        "path_real": path["real"],
        "path_floor": path["floor"],
        "path_share": path["real"] - path["floor"],
        "path_parts": sum(median for median, _ in parts.values()),
        "parts": {name: median for name, (median, _) in parts.items()},
        "pairs_1": pairs_1,
        "pairs_50": pairs_50,
        **check,
    }


def _before(rev: str, args: argparse.Namespace) -> dict[str, Any]:
    """This script's figures for the code of ``rev``, measured in a child process."""
    with tempfile.TemporaryDirectory(prefix="coterie-before-") as old:
        root = checkout(rev, Path(old))
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--root",
                str(root),
                "--json",
                "--runs",
                str(args.runs),
                "--ledger-rows",
                str(args.ledger_rows),
                "--members",
                str(args.members),
                "--samples",
                str(args.samples),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def _print(columns: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    names = list(columns)
    now = columns["now"]
    width = 22

    def row(label: str, fmt: Any, goal: str = "") -> None:
        cells = "".join(f"{fmt(columns[n]):>{width}}" for n in names)
        print(f"{label:<52}{cells}  {goal}")

    def parts(name: str) -> Any:
        return lambda f: f"{f['parts'][name]:.2f} ms" if name in f["parts"] else "-"

    print(
        f"SQLite {sqlite3.sqlite_version}, WAL, synchronous=NORMAL; Python {sys.version.split()[0]}"
    )
    print(f"{'':<52}" + "".join(f"{n:>{width}}" for n in names) + "  goal")
    print(f"audit ({args.runs} runs x {STEPS} steps, 4 rows a step)")
    row("  raw aiosqlite executemany: the floor, rows/s", lambda f: f"{f['floor']:,.0f}")
    row("  SqlAuditSink, 10 concurrent runs, rows/s", lambda f: f"{f['sink_10']:,.0f}")
    row(
        "  ... share of the floor",
        lambda f: f"{f['sink_10'] / f['floor']:.2f}",
        ">= 0.33 " + ("met" if now["sink_10"] / now["floor"] >= 1 / 3 else "MISSED"),
    )
    row(
        "  ... its floor: the same commits, raw sqlite3, rows/s",
        lambda f: f"{f['group_floor']:,.0f}" if "group_floor" in f else "-",
    )
    row(
        "  ... that floor's share of the floor",
        lambda f: f"{f['group_floor'] / f['floor']:.2f}" if "group_floor" in f else "-",
    )
    row(
        "  ... the sink's share of that floor",
        lambda f: f"{f['sink_10'] / f['group_floor']:.2f}" if "group_floor" in f else "-",
    )
    row("  SqlAuditSink, 1 run at a time, rows/s", lambda f: f"{f['sink_1']:,.0f}")
    row(
        "  sink per step, 1 run at a time",
        lambda f: f"{f['step_1_us'] / 1000:.2f} ms",
        "<= 0.5 ms " + ("met" if now["step_1_us"] <= 500 else "MISSED"),
    )
    row(
        "  ... its floor: the same 2 commits a step, raw sqlite3",
        lambda f: f"{f['step_floor_us'] / 1000:.2f} ms" if "step_floor_us" in f else "-",
    )
    row("  sink per step, 10 concurrent runs", lambda f: f"{f['step_10_us'] / 1000:.2f} ms")
    print("a member's mention -> the model's request (chat flow + executor), medians")
    row("  the same path on in-memory ports: the floor", lambda f: f"{f['path_floor']:.2f} ms")
    row("  as build_app wires it, SQLite", lambda f: f"{f['path_real']:.2f} ms")
    row("  the database's share (difference)", lambda f: f"{f['path_share']:.2f} ms")
    row(
        "  the database's share (sum of its parts)",
        lambda f: f"{f['path_parts']:.2f} ms",
        "<= 3 ms " + ("met" if now["path_parts"] <= 3 else "MISSED"),
    )
    for name in ("persona lookup", "budget reservation", "run start (audit)"):
        row(f"    {name}", parts(name))
    row("    first model request (audit)", parts("first model request (audit)"))
    row("    first checkpoint (resume)", parts("first checkpoint (resume)"))
    print("budget reserve + settle, pairs/s")
    row("  1 member", lambda f: f"{f['pairs_1']:,.0f}")
    row("  50 concurrent members", lambda f: f"{f['pairs_50']:,.0f}")
    print(f"budget check at {args.ledger_rows:,} ledger rows ({args.members:,} members, 30 days)")
    row(
        "  reserve (check + hold), p50 / p95",
        lambda f: f"{f['reserve_p50']:.2f} / {f['reserve_p95']:.2f} ms",
        "p95 <= 5 ms " + ("met" if now["reserve_p95"] <= 5 else "MISSED"),
    )
    row(
        "  status read, p50 / p95",
        lambda f: f"{f['status_p50']:.2f} / {f['status_p95']:.2f} ms",
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400, help="audited runs (10 steps each)")
    parser.add_argument("--ledger-rows", type=int, default=1_000_000)
    parser.add_argument("--members", type=int, default=1_000, help="members in the big ledger")
    parser.add_argument("--samples", type=int, default=500, help="budget checks timed")
    parser.add_argument("--before", metavar="REV", help="also measure this commit's code")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.json:
        print(json.dumps(await measure(args)))
        return
    columns: dict[str, dict[str, Any]] = {}
    if args.before:
        columns[f"before ({args.before})"] = _before(args.before, args)
    columns["now"] = await measure(args)
    _print(columns, args)


if __name__ == "__main__":
    asyncio.run(main())
