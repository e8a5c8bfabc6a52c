"""A mention's first text under load, beside the same mention with no load, in one run;
with ``--before REV``, the same two measurements of an older commit's code beside.

    python benchmarks/delivery_load.py [--load 300] [--members 50] [--channels 5]
                                       [--before 465204f]

A real ``coterie run`` (``COTERIE_LANE_SLOTS`` at its default of 4) against the fake
Discord with Discord's published rate limits switched on (``RateLimits``: headers on
every answer, 429s past them: 5 posts per 5 s per channel, 5 webhook calls per 2 s per
webhook, 50 requests a second in all), and a loopback model that streams (first token
after 0.45 s, then 12 tokens 50 ms apart: about 1 s a run).

1. Baseline: ``--probes`` mentions from one member, one at a time, nothing else going on.
2. Load: ``--load`` mentions from ``--members`` members spread over ``--channels``
   channels within one minute (the issue's 200 mentions and 100 one-shot slots: a slot
   runs through the same runner, lanes and delivery as a mention), and the same probes
   from a member with nothing queued, every 2 s while the queue drains.

``--before REV`` runs both again with the code of commit ``REV`` (``git archive`` into a
temporary directory: the worktree is not touched), so old and new share the machine's
load of the moment.

Printed: the probes' time from mention to first visible text (median, p95, max) with
and without load, REST calls per answered message, 429s, how long delivery of the whole
load took, and whether every answer reached Discord exactly once (one message per
question, complete) and is recorded as delivered in the audit, and how often the
process logged "Task exception was never retrieved". Goal (issue 20): p95 <=
2 s under load; <= 5 REST calls per answer. Figures, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _revision import checkout

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.first_text import bench_env, shown  # noqa: E402
from benchmarks.stream_model import StreamingModel  # noqa: E402
from tests.fakediscord import Call, FakeDiscord, RateLimits, payloads  # noqa: E402
from tests.lifecycle.conftest import SHIM, Proc, query  # noqa: E402

# "<persona prefix>?<question's tag>: word0 ..." (the loopback model's first token)
_TAG = re.compile(r"^(?:\*\*[^*]+\*\*\n)?(\S+): word0")


def _world(fake: FakeDiscord, members: int, channels: int) -> tuple[list[str], list[int]]:
    guild = fake.guild
    names = []
    for i in range(members):
        name = f"member{i}"
        fake.users[name] = u = payloads.user(fake.snowflake(), name)
        guild.members[int(u["id"])] = payloads.member(u, [])
        names.append(name)
    ids = [guild.channel_id("general"), guild.channel_id("random")]
    for i in range(max(0, channels - 2)):
        ch = payloads.text_channel(fake.snowflake(), guild.id, f"busy-{i}", position=2 + i)
        guild.channels[ch["name"]] = ch
        fake.channels[int(ch["id"])] = ch
        ids.append(int(ch["id"]))
    return names, ids[:channels]


def _complete(calls: list[Call], text: str) -> set[str]:
    """Ids of the messages a post or edit left holding ``text``."""
    ids = set()
    for c in calls:
        if c.status == 200 and text in str((c.json or {}).get("content", "")):
            ids.add(c.path.rsplit("/", 1)[1] if c.method == "PATCH" else str(c.response["id"]))
    return ids


async def probe(
    fake: FakeDiscord, model: StreamingModel, prompt: str, channel: int
) -> tuple[float, float]:
    """(mention -> first visible text, mention -> the model's first token)."""
    since = len(fake.calls)
    t0 = time.monotonic()
    await fake.dispatch_message(
        f"<@{fake.bot_user['id']}> {prompt}", author="alice", channel_id=channel, mentions=["bot"]
    )
    first = await shown(fake, f"{prompt.split()[-1]}: word0", since, timeout=180)
    token = next(t for k, t in model.first_token_at.items() if k.endswith(prompt))
    return first.at - t0, token - t0


def _once(fake: FakeDiscord, tags: list[str], last: str) -> tuple[int, int, int]:
    """(questions answered by exactly one complete message, missing, duplicated):
    every message that starts an answer counts, complete or not."""
    seen: Counter[str] = Counter()
    complete: set[str] = set()
    for messages in fake.messages.values():
        for m in messages:
            content = str(m.get("content") or "")
            if (tag := _TAG.match(content)) is not None:
                seen[tag[1]] += 1
                if last in content:
                    complete.add(tag[1])
    once = sum(1 for t in tags if seen[t] == 1 and t in complete)
    missing = sum(1 for t in tags if t not in complete)
    duplicated = sum(1 for t in tags if seen[t] > 1)
    return once, missing, duplicated


async def run(args: argparse.Namespace, code: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        async with FakeDiscord() as fake, StreamingModel() as model:
            fake.rate_limits = RateLimits()
            members, channels = _world(fake, args.members, args.channels)
            env = bench_env(
                tmp,
                fake,
                model,
                PYTHONPATH=os.pathsep.join([str(SHIM), str(code)]),
                COTERIE_LANE_SLOTS=str(args.slots),
            )
            proc = await Proc.start("run", env=env, cwd=tmp)
            try:
                await proc.wait_for("coterie ready as", timeout=60)
                for c in channels:  # webhooks made, SDK imported
                    await probe(fake, model, f"warm w{c}", c)
                    await asyncio.sleep(1.5)
                baseline = []
                for i in range(args.probes):
                    c = channels[i % len(channels)]
                    baseline.append((await probe(fake, model, f"alone a{i}", c))[0])
                    await asyncio.sleep(1.5)

                since = len(fake.calls)
                limited_before = len(fake.rate_limited)
                loaded: list[float] = []
                tokens: list[float] = []
                trace: list[tuple[float, float, float]] = []
                start = time.monotonic()

                async def load() -> None:
                    gap = 60.0 / args.load
                    n = len(members)
                    for i in range(args.load):
                        await fake.dispatch_message(
                            f"<@{fake.bot_user['id']}> load {i}",
                            # The issue's one-shot slots run as their owner: one lane.
                            author="owner" if i % 3 == 2 and args.issue_mix else members[i % n],
                            channel_id=channels[i % len(channels)],
                            mentions=["bot"],
                        )
                        await asyncio.sleep(gap)

                async def probes() -> None:
                    for i in range(args.probes):
                        await asyncio.sleep(2.0)
                        c = channels[i % len(channels)]
                        at = time.monotonic() - start
                        visible, token = await probe(fake, model, f"busy b{i}", c)
                        loaded.append(visible)
                        tokens.append(token)
                        trace.append((at, visible, token))

                await asyncio.gather(load(), probes())
                # Every answer complete: as many messages show the last token as were asked.
                last = f"word{model.tokens - 1}"
                while len(_complete(fake.calls[since:], last)) < args.load + args.probes:
                    await shown(fake, last, len(fake.calls), timeout=300)
                drained = time.monotonic() - start
                calls = fake.calls[since:]
                tags = [str(i) for i in range(args.load)] + [f"b{i}" for i in range(args.probes)]
                once = _once(fake, tags, last)
                proc.signal()
                await proc.exit_code()
            finally:
                await proc.kill()
            unretrieved = sum("Task exception was never retrieved" in line for line in proc.err)
            db = tmp / "data" / "coterie.db"
            [(runs, delivered)] = query(
                db, "SELECT COUNT(*), COALESCE(SUM(delivered = 1), 0) FROM audit_runs"
            )
    return {
        "baseline": baseline,
        "loaded": loaded,
        "tokens": tokens,
        "trace": trace,
        "per_answer": len(calls) / (args.load + args.probes),
        "calls": len(calls),
        "429s": len(fake.rate_limited) - limited_before,
        "drained": drained,
        "once": once,
        "audit": (runs, delivered),
        "unretrieved": unretrieved,
    }


def _p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20, method="inclusive")[-1] if len(xs) >= 2 else xs[0]


def _row(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} / {_p95(xs):.2f} / {max(xs):.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--load", type=int, default=300)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--channels", type=int, default=5)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--before", metavar="REV", help="also measure this commit's code")
    parser.add_argument("--verbose", action="store_true", help="every probe under load")
    parser.add_argument("--slots", type=int, default=4, help="COTERIE_LANE_SLOTS")
    parser.add_argument(
        "--issue-mix",
        action="store_true",
        help="a third of the load from one member (the issue's 100 one-shot slots of one owner)",
    )
    args = parser.parse_args()
    figures: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as old:
        if args.before:
            figures[f"before ({args.before})"] = asyncio.run(
                run(args, checkout(args.before, Path(old)))
            )
        figures["now"] = asyncio.run(run(args, ROOT))
    print(
        f"load: {args.load} mentions from {args.members} members"
        + (" (a third of them from one more)" if args.issue_mix else "")
        + f" in {args.channels} channels within a minute; {args.slots} lane slots;"
        " Discord's rate limits on"
    )
    width = 26
    print(f"{'':<44}" + "".join(f"{name:>{width}}" for name in figures))
    lines: list[tuple[str, Any]] = [
        ("mention -> first text (median / p95 / max)", lambda f: ""),
        ("  no load (baseline)", lambda f: _row(f["baseline"])),
        ("  under load (goal: p95 <= 2 s)", lambda f: _row(f["loaded"])),
        ("  ... of which to the model's first token", lambda f: _row(f["tokens"])),
        (
            "REST calls per answer (goal <= 5)",
            lambda f: f"{f['per_answer']:.2f} ({f['calls']} calls)",
        ),
        ("429 answers during the load", lambda f: str(f["429s"])),
        ("first load mention -> last answer done", lambda f: f"{f['drained']:.1f} s"),
        (
            "answered once / missing / twice",
            lambda f: " / ".join(str(n) for n in f["once"]),
        ),
        ("audit: runs / recorded as delivered", lambda f: "{} / {}".format(*f["audit"])),
        ('"Task exception was never retrieved"', lambda f: str(f["unretrieved"])),
    ]
    for label, value in lines:
        print(f"{label:<44}" + "".join(f"{value(f):>{width}}" for f in figures.values()))
    if args.verbose:
        for name, f in figures.items():
            print(f"{name}: probes under load (s into the load: first text, first token)")
            print("  " + ", ".join(f"{a:.0f}: {v:.2f}/{t:.2f}" for a, v, t in f["trace"]))


if __name__ == "__main__":
    main()
