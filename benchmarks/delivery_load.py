"""A mention's first text under load, beside the same mention with no load, in one run.

    python benchmarks/delivery_load.py [--load 300] [--members 50] [--channels 5]

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

Printed: the probes' time from mention to first visible text (median, p95, max) with
and without load, REST calls per answered message, 429s, and how long delivery of the
whole load took. Goal (issue 20): p95 <= 2 s under load; <= 5 REST calls per answer.
Before: ~10,000 edits for ~480 messages, delivery stalled 20-60 s at a time, p95
0.55-8.6 s, max 10-40 s. Figures, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.first_text import bench_env, shown  # noqa: E402
from benchmarks.stream_model import StreamingModel  # noqa: E402
from tests.fakediscord import Call, FakeDiscord, RateLimits, payloads  # noqa: E402
from tests.lifecycle.conftest import Proc  # noqa: E402


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


async def probe(fake: FakeDiscord, prompt: str, channel: int) -> float:
    since = len(fake.calls)
    t0 = time.monotonic()
    await fake.dispatch_message(
        f"<@{fake.bot_user['id']}> {prompt}", author="alice", channel_id=channel, mentions=["bot"]
    )
    first = await shown(fake, f"{prompt.split()[-1]}: word0", since, timeout=180)
    return first.at - t0


async def run(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        async with FakeDiscord() as fake, StreamingModel() as model:
            fake.rate_limits = RateLimits()
            members, channels = _world(fake, args.members, args.channels)
            proc = await Proc.start("run", env=bench_env(tmp, fake, model), cwd=tmp)
            try:
                await proc.wait_for("coterie ready as", timeout=60)
                for c in channels:  # webhooks made, SDK imported
                    await probe(fake, f"warm w{c}", c)
                    await asyncio.sleep(1.5)
                baseline = []
                for i in range(args.probes):
                    baseline.append(await probe(fake, f"alone a{i}", channels[i % len(channels)]))
                    await asyncio.sleep(1.5)

                since = len(fake.calls)
                limited_before = len(fake.rate_limited)
                loaded: list[float] = []
                start = time.monotonic()

                async def load() -> None:
                    gap = 60.0 / args.load
                    for i in range(args.load):
                        await fake.dispatch_message(
                            f"<@{fake.bot_user['id']}> load {i}",
                            author=members[i % len(members)],
                            channel_id=channels[i % len(channels)],
                            mentions=["bot"],
                        )
                        await asyncio.sleep(gap)

                async def probes() -> None:
                    for i in range(args.probes):
                        await asyncio.sleep(2.0)
                        c = channels[i % len(channels)]
                        loaded.append(await probe(fake, f"busy b{i}", c))

                await asyncio.gather(load(), probes())
                # Every answer complete: as many messages show the last token as were asked.
                last = f"word{model.tokens - 1}"
                while len(_complete(fake.calls[since:], last)) < args.load + args.probes:
                    await shown(fake, last, len(fake.calls), timeout=300)
                drained = time.monotonic() - start
                calls = fake.calls[since:]
                proc.signal()
                await proc.exit_code()
            finally:
                await proc.kill()
    return {
        "baseline": baseline,
        "loaded": loaded,
        "per_answer": len(calls) / (args.load + args.probes),
        "calls": len(calls),
        "429s": len(fake.rate_limited) - limited_before,
        "drained": drained,
    }


def _p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20, method="inclusive")[-1] if len(xs) >= 2 else xs[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--load", type=int, default=300)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--channels", type=int, default=5)
    parser.add_argument("--probes", type=int, default=20)
    args = parser.parse_args()
    f = asyncio.run(run(args))
    base, loaded = f["baseline"], f["loaded"]
    assert isinstance(base, list) and isinstance(loaded, list)
    print(
        f"load: {args.load} mentions from {args.members} members in {args.channels} channels "
        "within a minute; Discord's rate limits on"
    )
    print(f"{'mention -> first text':<28} {'median':>8} {'p95':>8} {'max':>8}  goal")
    for label, xs, goal in (
        ("no load (baseline)", base, "-"),
        ("under load", loaded, "p95 <= 2 s"),
    ):
        print(
            f"{label:<28} {statistics.median(xs):>7.2f}s {_p95(xs):>7.2f}s {max(xs):>7.2f}s  {goal}"
        )
    print(f"REST calls per answered message: {f['per_answer']:.2f} ({f['calls']} calls; goal <= 5)")
    print(f"429 answers during the load: {f['429s']}")
    print(f"from the first load mention to the last answer complete: {f['drained']:.1f} s")


if __name__ == "__main__":
    main()
