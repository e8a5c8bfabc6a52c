"""Memory benchmark: the notes a prompt gets, at 100,000 notes from 1,000 members.

    .venv/bin/python benchmarks/memory.py [--notes 100000] [--members 1000] [--queries 300]
    COTERIE_BENCH_POSTGRES_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/test  (optional)

Prints, side by side in one run, per database, the p50/p95 (wall time, and the
process's CPU time, which a loaded machine inflates less) of:

- a trivial statement in a session (``SELECT 1``): the floor on this machine;
- ``recall_for_prompt``: what a member's message costs before the model request (the
  opt-out, the scope's notes newest first and the persona's lore in one statement;
  the matches ranked among those notes);
- the first version's reads: the opt-out, the newest notes, the full-text search and
  the lore, each in its own session;
- the full-text search alone (``SqlNoteStore.search``, the ``recall`` tool), beside
  the same selection without the full-text index (a ``LIKE`` per word over the
  member's notes, found by the scope index);
- ``MemoryService.prepare`` (the whole addition to a message's path: the guild's
  settings through their cache, the read, the prompt section) and ``saved_in`` (the
  read at the end of a run for its "Saved:" line).

Goal: <= 5 ms p95, and no more than 2 ms added to a message's path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text
from sqlalchemy.engine import make_url

from adapters.services.memory import MemoryService
from adapters.storage.db import Database
from adapters.storage.guild_settings import SqlGuildSettings
from executor.agent import Caller, RunnableAgent
from memory import MEMORY_TOOLS, Scope, SqlNoteStore, place_of, recall_for_prompt
from memory.store import query_words, scope_tokens

WORDS = [
    "jazz",
    "cello",
    "piano",
    "guitar",
    "hiking",
    "climbing",
    "tea",
    "coffee",
    "chess",
    "portuguese",
    "spanish",
    "german",
    "python",
    "rust",
    "garden",
    "cats",
    "dogs",
    "sushi",
    "ramen",
    "running",
    "cycling",
    "painting",
    "poetry",
    "movies",
    "anime",
    "birthday",
    "sister",
    "brother",
    "vegan",
    "allergic",
    "peanuts",
    "berlin",
    "tokyo",
    "lisbon",
    "night",
    "shift",
    "student",
    "teacher",
    "nurse",
    "engineer",
    "exam",
    "deadline",
    "project",
    "wedding",
    "travel",
    "camera",
    "vinyl",
    "football",
]
PERSONAS = ("assistant", "researcher", "coach")


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize()


async def seed(db: Database, notes: int, members: int) -> None:
    rng = random.Random(7)
    rows = []
    for i in range(notes):
        member = i % members
        persona = PERSONAS[i % len(PERSONAS)]
        place = place_of(f"g{member % 5}")
        rows.append(
            {
                "scope": scope_tokens(f"u{member}", place, persona),
                "kind": "note",
                "user_id": f"u{member}",
                "persona": persona,
                "place": place,
                "text": sentence(rng),
                "created_by": f"u{member}",
                "run_id": "",
            }
        )
    async with db.engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            await conn.execute(
                text(
                    "INSERT INTO memory_notes (kind, user_id, persona, place, text, created_at,"
                    " created_by, run_id, scope) VALUES (:kind, :user_id, :persona, :place,"
                    " :text, CURRENT_TIMESTAMP, :created_by, :run_id, :scope)"
                ),
                rows[start : start + 5000],
            )


async def unindexed(db: Database, scope: Scope, message: str) -> int:
    """The same selection without the full-text index: newest, then a LIKE per word."""
    words = query_words(message)
    like = " OR ".join(f"lower(text) LIKE :w{i}" for i in range(len(words)))
    params = {f"w{i}": f"%{w}%" for i, w in enumerate(words)}
    async with db.sessions() as session:
        newest = await session.execute(
            text(
                "SELECT id FROM memory_notes WHERE kind='note' AND user_id=:u AND place=:p "
                "AND persona=:s ORDER BY created_at DESC, id DESC LIMIT 3"
            ),
            {"u": scope.user_id, "p": scope.place, "s": scope.persona},
        )
        found = await session.execute(
            text(
                "SELECT id FROM memory_notes WHERE kind='note' AND user_id=:u AND place=:p "
                f"AND persona=:s AND ({like}) ORDER BY created_at DESC LIMIT 8"
            ),
            {"u": scope.user_id, "p": scope.place, "s": scope.persona, **params},
        )
        return len(newest.all()) + len(found.all())


async def separate_sessions(store: SqlNoteStore, scope: Scope, message: str) -> int:
    """The first version's reads: each in its own session."""
    assert scope.persona is not None
    off = await store.is_off(scope.user_id)
    newest = await store.newest(scope, 3)
    found = await store.search(scope, message, 8)
    lore = await store.lore(scope.place, scope.persona)
    return int(off) + len(newest) + len(found) + len(lore)


async def floor(db: Database) -> None:
    async with db.sessions() as session:
        (await session.execute(text("SELECT 1"))).all()


async def measure(
    db: Database, members: int, queries: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    store = SqlNoteStore(db.sessions)
    memory = MemoryService(store, guild_settings=SqlGuildSettings(db.sessions))
    rng = random.Random(11)
    keys = ("floor", "folded", "separate", "search", "scan", "prepare", "saved_in")
    times: dict[str, list[float]] = {k: [] for k in keys}
    cpu: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(queries):
        member = rng.randrange(members)
        persona = PERSONAS[rng.randrange(3)]
        scope = Scope(f"u{member}", persona, place_of(f"g{member % 5}"))
        message = "what about " + " ".join(rng.choice(WORDS) for _ in range(6)) + "?"
        caller = Caller(user_id=f"u{member}", display_name="m", guild_id=f"g{member % 5}")
        agent = RunnableAgent(name=persona, persona=persona, tools=MEMORY_TOOLS)
        steps: dict[str, Awaitable[Any]] = {
            "floor": floor(db),
            "folded": recall_for_prompt(store, scope, message, lore_persona=persona),
            "separate": separate_sessions(store, scope, message),
            "search": store.search(scope, message, 8),
            "scan": unindexed(db, scope, message),
            "prepare": memory.prepare(caller, agent, message),
            "saved_in": memory.saved_in(caller.user_id, "no-such-run"),
        }
        for name, step in steps.items():  # each coroutine starts when awaited
            t, c = time.perf_counter(), time.process_time()
            await step
            times[name].append((time.perf_counter() - t) * 1000)
            cpu[name].append((time.process_time() - c) * 1000)
    return times, cpu


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


async def bench(label: str, url: str, args: argparse.Namespace) -> None:
    db = Database.open(url)
    try:
        await db.upgrade()
        t = time.perf_counter()
        await seed(db, args.notes, args.members)
        seeded = time.perf_counter() - t
        await measure(db, args.members, 20)  # warm the pool and the caches
        times, cpu = await measure(db, args.members, args.queries)
    finally:
        await db.close()
    labels = {
        "floor": "SELECT 1 in a session (the floor)",
        "folded": "recall_for_prompt (one statement)",
        "separate": "first version: 4 reads, 4 sessions",
        "search": "full-text search (recall tool)",
        "scan": "the same without the index (LIKE)",
        "prepare": "MemoryService.prepare (message path)",
        "saved_in": "saved_in (end of a run)",
    }
    print(f"{label}: seeded {args.notes:,} notes in {seeded:.1f} s; goal p95 <= 5 ms")
    print(f"  {'':<40} {'wall p50':>9} {'p95':>7}   {'cpu p50':>8} {'p95':>7}  (ms)")
    for key, name in labels.items():
        w, c = times[key], cpu[key]
        print(f"  {name:<40} {p(w, 50):9.2f} {p(w, 95):7.2f}   {p(c, 50):8.2f} {p(c, 95):7.2f}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--notes", type=int, default=100_000)
    parser.add_argument("--members", type=int, default=1_000)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        await bench("SQLite", f"sqlite+aiosqlite:///{d}/memory.db", args)
    base = os.environ.get("COTERIE_BENCH_POSTGRES_URL")
    if not base:
        print("PostgreSQL: set COTERIE_BENCH_POSTGRES_URL to measure it too")
        return
    import asyncpg

    name = f"coterie_bench_{uuid.uuid4().hex[:8]}"
    admin = make_url(base).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    try:
        await bench(
            "PostgreSQL",
            make_url(base).set(database=name).render_as_string(hide_password=False),
            args,
        )
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
