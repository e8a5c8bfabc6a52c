"""``coterie status [--json]``: the ``coterie run`` processes alive on the database.

Each one as its last heartbeat left it: host, pid, the Discord shards it serves,
whether it leads the scheduler, how long ago it beat, its runs in flight. A process
whose lease has expired is not listed (another one takes over what it had).

JSON: ``{"instances": [{"id", "host", "pid", "shards", "leader", "heartbeat_age_s",
"runs"}]}``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "status",
        help="the coterie run processes alive on the database",
        description="The `coterie run` processes alive on the database (several on "
        "PostgreSQL): host, pid, shards, scheduler leader, heartbeat age, runs in flight.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_status)


async def _status(args: argparse.Namespace) -> int:
    from adapters.storage.db import Database
    from adapters.storage.instances import SqlInstances
    from bot.cli._common import fail, load_settings

    db = Database.open(load_settings().database_url, create=False)
    try:
        version = await db.current()
        if not version.up_to_date:
            return fail(
                f"the database is at revision {version.current or 'none'}, not {version.head}: "
                "`coterie run` upgrades it at start (or run `coterie db upgrade`)",
                1,
            )
        live = await SqlInstances(db.sessions).live(kind="bot")
    finally:
        await db.close()
    if args.json:
        rows = [
            {
                "id": i.id,
                "host": i.host,
                "pid": i.pid,
                "shards": list(i.shards),
                "leader": i.leader,
                "heartbeat_age_s": round(i.heartbeat_age_s, 3),
                "runs": i.runs,
            }
            for i in live
        ]
        print(json.dumps({"instances": rows}))
        return 0
    if not live:
        print("no coterie run is alive on this database")
        return 0
    from bot.cli.tables import table

    print(
        table(
            ["instance", "host", "pid", "shards", "leader", "heartbeat", "runs"],
            [
                [
                    i.id,
                    i.host,
                    i.pid,
                    _shards(i.shards, i.shard_count),
                    "yes" if i.leader else "",
                    f"{i.heartbeat_age_s:.1f}s ago",
                    i.runs,
                ]
                for i in live
            ],
        )
    )
    return 0


def _shards(shards: tuple[int, ...], count: int | None) -> str:
    if not shards:
        return "none" if count else "-"
    return ",".join(map(str, shards)) + (f" of {count}" if count else "")
