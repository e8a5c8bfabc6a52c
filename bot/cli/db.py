"""``coterie db upgrade|current|backup``: the schema and a live copy of the database."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
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
        "PATH is a new file, or a directory (ending in /, or existing) in which the copy is "
        "named coterie-YYYYmmdd-HHMMSS.db. For PostgreSQL, prints the pg_dump command to use.",
    )
    bk.add_argument("path", help="a new file (never overwritten) or a directory")
    bk.add_argument(
        "--keep",
        type=_positive,
        metavar="N",
        help="in a directory: keep only the newest N coterie-*.db copies (older ones are deleted)",
    )
    bk.set_defaults(handler=_backup)


BACKUP_PREFIX = "coterie-"
BACKUP_SUFFIX = ".db"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _open(*, create: bool = True) -> Any:
    """The database; ``create=False`` for a verb that only reads: a SQLite file that
    is not there is one line saying so, and nothing is created."""
    from adapters.storage.db import Database
    from bot.cli._common import load_settings

    return Database.open(load_settings().database_url, create=create)


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
    db = _open(create=False)
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


def _destination(path: str) -> tuple[Path, Path | None]:
    """The file to write and, when ``path`` is a directory, that directory."""
    target = Path(path).expanduser()
    if path.endswith(("/", os.sep)) or target.is_dir():
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        name = f"{BACKUP_PREFIX}{stamp}{BACKUP_SUFFIX}"
        n = 1
        while (target / name).exists():  # two backups in one second
            n += 1
            name = f"{BACKUP_PREFIX}{stamp}-{n}{BACKUP_SUFFIX}"
        return target / name, target
    return target, None


def prune(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` coterie-*.db copies in ``directory``."""
    copies = sorted(
        (p for p in directory.glob(f"{BACKUP_PREFIX}*{BACKUP_SUFFIX}") if p.is_file()),
        key=lambda p: (p.stat().st_mtime, p.name),
    )
    gone = copies[:-keep] if len(copies) > keep else []
    for old in gone:
        old.unlink()
    return gone


async def _backup(args: argparse.Namespace) -> int:
    from bot.cli._common import fail

    dest, directory = _destination(args.path)
    if args.keep and directory is None:
        return fail("--keep needs a directory to back up into (end PATH with /)")
    db = _open(create=False)
    try:
        written = await db.backup(dest)
    finally:
        await db.close()
    print(f"backed up {db.describe()} to {written}")
    if args.keep and directory is not None:
        for old in prune(directory, args.keep):
            print(f"removed the old copy {old}")
    return 0
