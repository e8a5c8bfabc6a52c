"""Memory benchmark: the notes a prompt gets, at 100,000 notes from 1,000 members.

    .venv/bin/python benchmarks/memory.py [--notes 100000] [--members 1000] [--queries 300]
    COTERIE_BENCH_POSTGRES_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/test  (optional)

Prints, side by side in one run, per database: the p50/p95 of
``recall_for_prompt`` (the newest notes + the best full-text matches for a message,
what a member's message costs before the model request) through ``SqlNoteStore``,
beside the same selection done without the index: a ``LIKE`` scan of the member's
notes for each word. Goal: <= 5 ms p95, and no more than 2 ms added to a message's path.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text
from sqlalchemy.engine import make_url

from adapters.storage.db import Database
from memory import Scope, SqlNoteStore, place_of, recall_for_prompt
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


async def measure(db: Database, members: int, queries: int) -> tuple[list[float], list[float]]:
    store = SqlNoteStore(db.sessions)
    rng = random.Random(11)
    indexed: list[float] = []
    scan: list[float] = []
    for _ in range(queries):
        member = rng.randrange(members)
        scope = Scope(f"u{member}", PERSONAS[rng.randrange(3)], place_of(f"g{member % 5}"))
        message = "what about " + " ".join(rng.choice(WORDS) for _ in range(6)) + "?"
        t = time.perf_counter()
        await recall_for_prompt(store, scope, message, lore_persona=scope.persona)
        indexed.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        await unindexed(db, scope, message)
        scan.append((time.perf_counter() - t) * 1000)
    return indexed, scan


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


async def bench(label: str, url: str, args: argparse.Namespace) -> None:
    db = Database.open(url)
    try:
        await db.upgrade()
        t = time.perf_counter()
        await seed(db, args.notes, args.members)
        seeded = time.perf_counter() - t
        indexed, scan = await measure(db, args.members, args.queries)
    finally:
        await db.close()
    print(
        f"{label:<11} seeded {args.notes:,} notes in {seeded:.1f} s | "
        f"recall_for_prompt p50 {p(indexed, 50):.2f} ms p95 {p(indexed, 95):.2f} ms | "
        f"without the index (LIKE scan) p50 {p(scan, 50):.2f} ms p95 {p(scan, 95):.2f} ms"
        f" | goal p95 <= 5 ms"
    )


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
