"""``coterie forget USER_ID``: delete what coterie keeps about a member (the operator's
``/forgetme``), through the same orchestrator, and say what each part did.
``coterie export-member USER_ID``: everything coterie keeps about them, as JSON (the
operator's ``/mydata``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "forget",
        help="delete what coterie keeps about a member",
        description="Deletes a member's personas, skills and schedules, memory notes, "
        "thread bindings and budget warnings; anonymises their audit runs and the admin "
        "actions naming them (kept for accounting). Their budget is not reset: charges in "
        "the 7-day window, a limit an admin set and grants not yet expired stay under their "
        "id (amounts and times only) until they leave the window. The same as /forgetme "
        "in Discord.",
    )
    p.add_argument("user_id", help="the member's Discord user id")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.set_defaults(handler=_forget)
    e: argparse.ArgumentParser = sub.add_parser(
        "export-member",
        help="everything coterie keeps about a member, as JSON",
        description="Writes what every part of coterie keeps about a member (memory "
        "notes, their runs and tool calls as the audit has them, budget, personas, "
        "skills, schedules, ...) as one JSON document. The same as /mydata in Discord.",
    )
    e.add_argument("user_id", help="the member's Discord user id")
    e.add_argument(
        "--output", "-o", default="-", help="a new file to write, owner-only (default: stdout)"
    )
    e.set_defaults(handler=_export)


def _forget(args: argparse.Namespace) -> Any:
    """Ask first (before any event loop), then forget."""
    if not args.yes:
        if not sys.stdin.isatty():
            print("coterie: add --yes to forget a member without a terminal", file=sys.stderr)
            return 2
        answer = input(
            f"Forget what coterie keeps about {args.user_id} (their budget is not reset: "
            "its last 7 days' charges and limit stay)? [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing was deleted", file=sys.stderr)
            return 1
    return _do_forget(args)


async def _do_forget(args: argparse.Namespace) -> int:
    from adapters.services.deletion import DeletionFailed
    from bot.app import build_app
    from bot.cli.tables import table
    from bot.settings import Settings

    # Why registered (as ``ask`` is): on PostgreSQL that connects this process to the
    # others' LISTEN/NOTIFY, so what it deletes leaves their caches at once (a persona
    # the member made would otherwise be served from a cache for up to its TTL).
    app = await build_app(Settings(), instance="cli")
    try:
        try:
            report = await app.deletion.forget(args.user_id)
        except DeletionFailed as exc:
            report = exc.report
        # Why no id: the admin log must not keep the id of the member who was forgotten.
        await app.admin.record(
            app.operator(),
            "forget",
            guild_id=None,
            detail={"rows": report.total, "failed": sorted(report.failed)},
        )
    finally:
        await app.close()
    print(table(("part", "rows"), [(name, n) for name, n in report.counts.items()]))
    print(
        "kept: the budget's charges in the 7-day window, a limit an admin set and grants "
        "not yet expired, under the member's id with amounts and times only, until they "
        "leave the window"
    )
    for name, error in report.failed.items():
        print(f"coterie: could not delete {name}: {error}", file=sys.stderr)
    return 1 if report.failed else 0


def _export(args: argparse.Namespace) -> Any:
    """Refuse an existing file first (before any event loop), then export."""
    if args.output != "-" and os.path.exists(args.output):
        print(f"coterie: {args.output} exists; name a new file", file=sys.stderr)
        return 2
    return _do_export(args)


async def _do_export(args: argparse.Namespace) -> int:
    from adapters.services.deletion import ExportFailed
    from bot.app import build_app
    from bot.settings import Settings

    app = await build_app(Settings())
    try:
        try:
            data = await app.deletion.export(args.user_id)
        except ExportFailed as exc:
            print(f"coterie: {exc}", file=sys.stderr)
            return 1
        await app.admin.record(
            app.operator(),
            "member.export",
            guild_id=None,
            target_id=args.user_id,
            detail={"parts": sorted(data["data"])},
        )
    finally:
        await app.close()
    text = json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    # Why O_EXCL and 0600: it holds a member's notes and conversations' excerpts.
    fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0
