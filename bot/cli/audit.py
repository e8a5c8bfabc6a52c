"""``coterie audit list|show|export|spend|actions``: read the audit trail from the terminal.

``show`` takes a run id or a unique prefix of one; ``export`` writes the JSON Lines
format of ``/audit export``; ``actions`` lists the admin log (settings, limits,
grants, exports, forgets, with who did them).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from executor.errors import ConfigError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "audit",
        help="list, show and export audited runs",
        description="The audit trail: every run, its steps, model attempts and tool calls.",
    )
    verbs = p.add_subparsers(dest="audit_command", metavar="VERB", required=True)

    ls = verbs.add_parser("list", help="runs, newest first")
    _filters(ls)
    ls.add_argument("--limit", type=int, default=20, help="runs per page (default 20)")
    ls.add_argument("--cursor", help="continue after a previous page (printed at its end)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(handler=_list)

    show = verbs.add_parser("show", help="one run with everything under it")
    show.add_argument("run_id", help="a run id, or a unique prefix of one (e.g. 7bb637b9)")
    show.add_argument("--json", action="store_true", help="print the run as one JSON object")
    show.set_defaults(handler=_show)

    ex = verbs.add_parser("export", help="export runs as JSON Lines, one run per line")
    _filters(ex)
    ex.add_argument("--output", "-o", default="-", help="a file to write (default: stdout)")
    ex.set_defaults(handler=_export)

    spend = verbs.add_parser("spend", help="spend per member per day (UTC days)")
    spend.add_argument("--member", help="one member's user id")
    spend.add_argument("--guild", help="one guild's id")
    spend.add_argument("--days", type=int, default=7, help="how many days back (default 7)")
    spend.set_defaults(handler=_spend)

    acts = verbs.add_parser("actions", help="the admin log: who changed what, newest first")
    acts.add_argument("--guild", help="one guild's actions")
    acts.add_argument("--action", help="config.set, budget.set, budget.grant, audit.export, forget")
    acts.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    acts.add_argument("--json", action="store_true", help="one JSON object per line")
    acts.set_defaults(handler=_actions)


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--member", help="the user id who started the run")
    p.add_argument("--guild", help="guild id")
    p.add_argument("--persona")
    p.add_argument("--skill")
    p.add_argument(
        "--status", help="ok, error, cancelled, timeout, budget_denied, interrupted, ..."
    )
    p.add_argument("--trigger", help="chat, slash, schedule, console, cli")
    p.add_argument("--since", type=_when, help="ISO date/time (UTC) or a span back: 2h, 7d")
    p.add_argument("--until", type=_when, help="ISO date/time (UTC) or a span back")


def _when(text: str) -> datetime:
    units = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    if text and text[-1] in units and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date, time or span: {text!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _filter(args: argparse.Namespace) -> Any:
    from adapters.storage.audit_queries import RunFilter

    return RunFilter(
        user_id=args.member,
        guild_id=args.guild,
        persona=args.persona,
        skill=args.skill,
        status=args.status,
        trigger=args.trigger,
        since=args.since,
        until=args.until,
    )


def _open() -> Any:
    """The database, read only: nothing is created where there is none."""
    from adapters.storage.db import Database
    from bot.cli._common import load_settings

    return Database.open(load_settings().database_url, create=False)


def _usd(micros: int) -> str:
    from executor.budget import format_usd

    return format_usd(micros)


async def _list(args: argparse.Namespace) -> int:
    from adapters.storage.audit_queries import AuditQueries

    db = _open()
    try:
        try:
            page = await AuditQueries(db.sessions).list_runs(
                _filter(args), limit=args.limit, cursor=args.cursor
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    finally:
        await db.close()
    if args.json:
        from adapters.storage.audit_queries import RunDetail

        for run in page.runs:
            row = RunDetail(run=run).to_dict()
            for key in ("steps", "attempts", "tool_calls", "events"):
                row.pop(key)
            print(json.dumps(row, ensure_ascii=False))
        return 0
    from bot.cli.tables import table

    print(
        table(
            (
                "started (UTC)",
                "run",
                "status",
                "trigger",
                "member",
                "where",
                "agent",
                "steps",
                "cost",
            ),
            [
                (
                    f"{run.started_at:%Y-%m-%d %H:%M:%S}",
                    run.run_id,
                    run.status,
                    run.trigger,
                    run.user_id,
                    f"{run.guild_id or 'dm'}/{run.channel_id or '-'}",
                    run.skill or run.persona or run.agent,
                    run.steps,
                    _usd(run.cost_micros),
                )
                for run in page.runs
            ],
        )
    )
    if page.next_cursor:
        print(f"-- more: --cursor {page.next_cursor}")
    return 0


async def _show(args: argparse.Namespace) -> int:
    from adapters.storage.audit_queries import AuditQueries

    db = _open()
    try:
        queries = AuditQueries(db.sessions)
        # A unique prefix is enough; RunNotFound says when none or several match.
        detail = await queries.get_run(await queries.resolve_run(args.run_id))
    finally:
        await db.close()
    if detail is None:
        print(f"coterie: no run {args.run_id!r} in the audit trail", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(detail.to_dict(), ensure_ascii=False, indent=2))
        return 0
    r = detail.run
    print(f"run       {r.run_id} ({r.status})")
    print(f"trigger   {r.trigger} by {r.user_id} {r.user_name} in {r.guild_id}/{r.channel_id}")
    print(f"agent     {r.agent} persona={r.persona} skill={r.skill} tier={r.tier} model={r.model}")
    if r.parent_run_id:
        print(f"parent    {r.parent_run_id}")
    if r.resumed_from:
        print(f"resumes   {r.resumed_from}")
    print(f"time      {r.started_at:%Y-%m-%d %H:%M:%S} -> {r.ended_at or '(running)'}")
    print(
        f"usage     steps={r.steps} in={r.input_tokens} out={r.output_tokens} "
        f"cost={_usd(r.cost_micros)} reserved={_usd(r.estimate_micros)}"
    )
    print(f"prompt    {r.prompt_excerpt}")
    print(f"output    {r.output_excerpt}")
    print(f"delivered {_delivered(r.delivered, r.delivery_error)}")
    if r.error:
        print(f"error     [{r.error_kind}] {r.error}")
    for s in detail.steps:
        print(
            f"  step {s.step}: {s.model} {s.stop_reason} in={s.input_tokens} "
            f"out={s.output_tokens} {_usd(s.cost_micros)} tools={s.tool_calls}"
        )
    for a in detail.attempts:
        print(f"  attempt step {a.step}: {a.model} {a.latency_ms:.0f} ms {a.error or 'ok'}")
    for t in detail.tool_calls:
        state = "error" if t.is_error else "ok"
        print(f"  tool step {t.step}: {t.name}({t.arguments}) {state} {t.duration_ms:.0f} ms")
        print(f"      -> {t.result_excerpt[:200]}")
    for e in detail.events:
        print(f"  event step {e.step}: {e.kind} {json.dumps(e.data, ensure_ascii=False)}")
    return 0


def _delivered(delivered: bool | None, error: str | None) -> str:
    """Whether the answer reached Discord (the same words as ``/audit show``)."""
    if delivered is None:
        return "not recorded"
    if delivered:
        return "yes"
    return f"no: {error}" if error else "no"


async def _export(args: argparse.Namespace) -> int:
    from adapters.storage.audit_queries import AuditQueries

    db = _open()
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: ASYNC230, SIM115
    count = 0
    try:
        async for detail in AuditQueries(db.sessions).iter_runs(_filter(args)):
            out.write(json.dumps(detail.to_dict(), ensure_ascii=False) + "\n")
            count += 1
    finally:
        if out is not sys.stdout:
            out.close()
        await db.close()
    print(f"exported {count} run(s)", file=sys.stderr)
    return 0


async def _spend(args: argparse.Namespace) -> int:
    from adapters.storage.audit_queries import AuditQueries

    db = _open()
    since = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
        days=max(args.days - 1, 0)
    )
    try:
        rows = await AuditQueries(db.sessions).spend_per_day(
            since=since, user_id=args.member, guild_id=args.guild
        )
    finally:
        await db.close()
    from bot.cli.tables import table

    print(
        table(
            ("day (UTC)", "member", "runs", "tokens in", "tokens out", "cost"),
            [
                (
                    row.day,
                    row.user_id,
                    row.runs,
                    row.input_tokens,
                    row.output_tokens,
                    _usd(row.cost_micros),
                )
                for row in rows
            ],
        )
    )
    return 0


async def _actions(args: argparse.Namespace) -> int:
    from adapters.services.admin import describe
    from adapters.storage.admin import SqlAdminLog
    from bot.cli.tables import table

    db = _open()
    try:
        page = await SqlAdminLog(db.sessions).list(
            guild_id=args.guild, action=args.action, limit=max(args.limit, 1)
        )
    finally:
        await db.close()
    if args.json:
        for e in page.entries:
            row = {
                "id": e.id,
                "at": e.at.isoformat(),
                "guild_id": e.guild_id,
                "actor_id": e.actor_id,
                "actor_name": e.actor_name,
                "action": e.action,
                "target_id": e.target_id,
                "detail": e.detail,
            }
            print(json.dumps(row, ensure_ascii=False))
        return 0
    print(
        table(
            ("at (UTC)", "guild", "by", "action", "member", "what"),
            [
                (
                    f"{e.at:%Y-%m-%d %H:%M:%S}",
                    e.guild_id or "-",
                    f"{e.actor_id} {e.actor_name}".strip(),
                    e.action,
                    e.target_id or "-",
                    describe(e),
                )
                for e in page.entries
            ],
        )
    )
    return 0
