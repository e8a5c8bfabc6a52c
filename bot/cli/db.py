"""``coterie db upgrade|current|backup``: the schema and a live copy of the database."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "db",
        help="manage the database: upgrade, current, backup",
        description="The database named by DATABASE_URL (default ./data/coterie.db).",
    )
    verbs = p.add_subparsers(dest="db_command", metavar="VERB", required=True)

    up = verbs.add_parser("upgrade", help="bring the schema to the newest revision")
    up.add_argument("--revision", default="head", help="a revision to stop at (default: head)")
    up.set_defaults(handler=_upgrade)

    cur = verbs.add_parser("current", help="print the schema revision, and whether it is current")
    cur.set_defaults(handler=_current)

    bk = verbs.add_parser(
        "backup",
        help="copy the database consistently while the bot runs",
        description="A consistent copy of a live SQLite database (its online backup API). "
        "For PostgreSQL, prints the pg_dump command to use instead.",
    )
    bk.add_argument("path", help="the new file to write (never overwritten)")
    bk.set_defaults(handler=_backup)


def _open() -> Any:
    from adapters.storage.db import Database
    from bot.settings import Settings

    return Database.open(Settings().database_url)


async def _upgrade(args: argparse.Namespace) -> int:
    db = _open()
    try:
        before = (await db.current()).current
        version = await db.upgrade(args.revision)
    finally:
        await db.close()
    if before == version.current:
        print(f"{db.describe()}: already at revision {version.current}")
    else:
        print(f"{db.describe()}: upgraded from {before or '(empty)'} to {version.current}")
    return 0


async def _current(args: argparse.Namespace) -> int:
    db = _open()
    try:
        version = await db.current()
    finally:
        await db.close()
    if version.current is None:
        state = "empty: run `coterie db upgrade`"
    elif version.up_to_date:
        state = "up to date"
    else:
        state = f"behind (newest is {version.head}): run `coterie db upgrade`"
    print(f"{db.describe()}: revision {version.current or '(none)'}, {state}")
    return 0


async def _backup(args: argparse.Namespace) -> int:
    db = _open()
    try:
        dest = await db.backup(args.path)
    finally:
        await db.close()
    print(f"backed up {db.describe()} to {dest}")
    return 0
