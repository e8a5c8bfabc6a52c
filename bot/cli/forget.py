"""``coterie forget USER_ID``: delete what coterie keeps about a member (the operator's
``/forgetme``), through the same orchestrator, and say what each part did."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "forget",
        help="delete what coterie keeps about a member",
        description="Deletes a member's personas, skills and schedules, thread bindings "
        "and budget warnings; anonymises their audit runs and the admin actions naming "
        "them (kept for accounting). Their budget is not reset: charges in the 7-day "
        "window, a limit an admin set and grants not yet expired stay under their id "
        "(amounts and times only) until they leave the window. The same as /forgetme "
        "in Discord.",
    )
    p.add_argument("user_id", help="the member's Discord user id")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.set_defaults(handler=_forget)


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

    app = await build_app(Settings())
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
