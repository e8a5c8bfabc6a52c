"""``coterie budget show|set|grant|top``: members' rolling 7-day budgets from the terminal.

The same levers as ``/budget`` in Discord, through the same service: a limit or a
grant set here is recorded in the admin log as the operator's
(``COTERIE_OPERATOR_USER_ID``).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "budget",
        help="members' 7-day budgets: show, set, grant, top",
        description="Members' rolling 7-day budgets (per Discord user id, across servers).",
    )
    verbs = p.add_subparsers(dest="budget_command", metavar="VERB", required=True)

    show = verbs.add_parser("show", help="a member's budget now, with their active grants")
    show.add_argument("user_id", help="the member's Discord user id")
    show.add_argument("--guild", help="the server whose default and role budgets apply")
    show.set_defaults(handler=_show)

    st = verbs.add_parser("set", help="a member's own limit, in dollars (or 'default')")
    st.add_argument("user_id")
    st.add_argument("limit", help="dollars per 7 days, e.g. 10 or 2.50; 'default' removes it")
    st.set_defaults(handler=_set)

    gr = verbs.add_parser("grant", help="a one-off addition for the next 7 days")
    gr.add_argument("user_id")
    gr.add_argument("amount", help="dollars, e.g. 5")
    gr.add_argument("--reason", default="", help="why (kept in the admin log)")
    gr.set_defaults(handler=_grant)

    top = verbs.add_parser("top", help="members by what their runs cost")
    top.add_argument("--days", type=int, default=7, help="how many days back (default 7)")
    top.add_argument("--guild", help="one server's runs only")
    top.add_argument("--limit", type=int, default=20, help="how many members (default 20)")
    top.set_defaults(handler=_top)


async def _app() -> Any:
    from bot.app import build_app
    from bot.settings import Settings

    return await build_app(Settings())


def _dollars(text: str) -> int | None:
    from adapters.services.errors import InvalidSetting
    from executor.errors import ConfigError

    value = text.strip().lower().replace(",", "").removeprefix("$")
    if value == "default":
        return None
    try:
        dollars = float(value)
    except ValueError:
        raise ConfigError(f"not an amount in dollars: {text}") from None
    if not 0 <= dollars <= 1_000_000:
        raise InvalidSetting("an amount must be between $0 and $1,000,000")
    return round(dollars * 1_000_000)


def _print_status(user_id: str, status: Any, grants: list[Any]) -> None:
    from bot.cli.tables import table
    from executor.budget import format_usd

    base = "own limit" if status.overridden else "default"
    rows = [
        ("spent (7 days)", format_usd(status.spent_micros)),
        ("reserved now", format_usd(status.reserved_micros)),
        (f"limit ({base})", format_usd(status.base_limit_micros, 2)),
        ("granted", format_usd(status.granted_micros, 2)),
        ("limit in all", format_usd(status.limit_micros, 2)),
        ("left", format_usd(max(status.available_micros, 0))),
    ]
    print(f"member {user_id}")
    print(table(("", "USD"), rows))
    if grants:
        print()
        print(
            table(
                ("grant", "by", "until", "reason"),
                [
                    (
                        format_usd(g.amount_micros, 2),
                        g.granted_by or "-",
                        f"{g.expires_at:%Y-%m-%d %H:%M}",
                        g.note,
                    )
                    for g in grants
                ],
            )
        )


async def _show(args: argparse.Namespace) -> int:
    from executor.agent import Caller

    app = await _app()
    try:
        context = Caller(user_id=args.user_id, guild_id=args.guild) if args.guild else None
        status = await app.budget.status(args.user_id, context=context)
        grants = await app.budget.active_grants(args.user_id)
    finally:
        await app.close()
    _print_status(args.user_id, status, grants)
    return 0


async def _set(args: argparse.Namespace) -> int:
    from executor.budget import format_usd

    micros = _dollars(args.limit)
    app = await _app()
    try:
        await app.admin.set_limit(app.operator(), args.user_id, micros, guild_id=None)
        status = await app.budget.status(args.user_id)
        grants = await app.budget.active_grants(args.user_id)
    finally:
        await app.close()
    said = f"own limit {format_usd(micros, 2)}" if micros is not None else "the default limit"
    print(f"member {args.user_id} now has {said}", file=sys.stderr)
    _print_status(args.user_id, status, grants)
    return 0


async def _grant(args: argparse.Namespace) -> int:
    from executor.budget import format_usd
    from executor.errors import ConfigError

    micros = _dollars(args.amount)
    if not micros:
        raise ConfigError("a grant must be more than $0")
    app = await _app()
    try:
        await app.admin.grant(
            app.operator(), args.user_id, micros, reason=args.reason, guild_id=None
        )
        status = await app.budget.status(args.user_id)
        grants = await app.budget.active_grants(args.user_id)
    finally:
        await app.close()
    print(f"granted {format_usd(micros, 2)} to {args.user_id} for 7 days", file=sys.stderr)
    _print_status(args.user_id, status, grants)
    return 0


async def _top(args: argparse.Namespace) -> int:
    from bot.cli.tables import table
    from executor.budget import format_usd

    app = await _app()
    try:
        since = datetime.now(UTC) - timedelta(days=max(args.days, 1))
        rows = await app.audit_queries.top_spenders(
            since=since, guild_id=args.guild, limit=max(args.limit, 1)
        )
        limits = {r.user_id: (await app.budget.status(r.user_id)).limit_micros for r in rows}
    finally:
        await app.close()
    if not rows:
        print(f"nobody spent anything in the last {args.days} day(s)")
        return 0
    print(
        table(
            ("member", "name", "runs", "spent", "limit now"),
            [
                (
                    r.user_id,
                    r.user_name or "-",
                    r.runs,
                    format_usd(r.cost_micros),
                    format_usd(limits[r.user_id], 2),
                )
                for r in rows
            ],
        )
    )
    return 0
