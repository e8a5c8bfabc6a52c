"""A mention's first visible text, beside the model's first token, in the same run.

    python benchmarks/first_text.py [--mentions 10] [--first-token 0.45]

A real ``coterie run`` process talks to the fake Discord (``tests/fakediscord``,
through ``tests/lifecycle/shim``) and to a loopback OpenAI-compatible model that
streams (:mod:`benchmarks.stream_model`: first token after ``--first-token`` s, then
a token every 50 ms). Each mention is sent alone, and timed from the moment its
MESSAGE_CREATE went out:

* the model's first token (when the loopback wrote it);
* the first REST call that put the answer's words on Discord (a webhook post or edit
  whose content holds the first token).

Goal (issue 19): first visible text <= the model's first token + 0.3 s. Before, the
"…" placeholder posted ~10 ms after the mention started the 1 s edit throttle, so the
first words waited: first token at 451 ms, first edit at 1,004 ms. Figures, not a
test: nothing here asserts. Needs the dev extras (aiohttp for the fakes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.stream_model import StreamingModel, model_env  # noqa: E402
from tests.fakediscord import Call, FakeDiscord  # noqa: E402
from tests.lifecycle.conftest import SHIM, Proc  # noqa: E402

CONTENT = r"/webhooks/{id}/{token}(/messages/{m})?"


def bench_env(tmp: Path, fake: FakeDiscord, model: StreamingModel, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COTERIE_", "ANTHROPIC_", "OPENAI_", "DISCORD_"))
        and k not in ("DATABASE_URL", "PYTHONPATH")
    }
    env.update(
        DATABASE_URL=f"sqlite:///{tmp / 'data' / 'coterie.db'}",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join([str(SHIM), str(ROOT)]),
        DISCORD_TOKEN=fake.token,
        COTERIE_TEST_DISCORD_API=fake.api_base,
        COTERIE_TEST_DISCORD_GATEWAY=fake.gateway_url,
        COTERIE_BUDGET_DEFAULT_USD="1000",
        **model_env(model),
    )
    env.update(extra)
    return env


async def shown(fake: FakeDiscord, text: str, since: int, timeout: float = 60) -> Call:
    """The first webhook post or edit (from ``since``) whose content holds ``text``."""

    def holds(c: Call) -> bool:
        return text in str((c.json or {}).get("content", ""))

    waits = [
        asyncio.ensure_future(fake.wait_for_call(m, CONTENT, holds, since=since, timeout=timeout))
        for m in ("POST", "PATCH")
    ]
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for w in pending:
        w.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return min((w.result() for w in done), key=lambda c: c.at)


async def run(mentions: int, first_token: float) -> tuple[list[float], list[float]]:
    visible, model_first = [], []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        async with FakeDiscord() as fake, StreamingModel(first_token_s=first_token) as model:
            proc = await Proc.start("run", env=bench_env(tmp, fake, model), cwd=tmp)
            try:
                await proc.wait_for("coterie ready as", timeout=60)
                for i in range(mentions + 1):  # the first warms up (webhook, SDK import)
                    since = len(fake.calls)
                    prompt = f"question q{i}"
                    t0 = time.monotonic()
                    await fake.dispatch_message(
                        f"<@{fake.bot_user['id']}> {prompt}", mentions=["bot"]
                    )
                    first = await shown(fake, f"q{i}: word0", since)
                    token = next(t for k, t in model.first_token_at.items() if prompt in k)
                    if i:
                        visible.append(first.at - t0)
                        model_first.append(token - t0)
                    # Let the answer finish before the next mention.
                    await shown(fake, f"word{model.tokens - 1}", since)
                proc.signal()
                await proc.exit_code()
            finally:
                await proc.kill()
    return visible, model_first


def _p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20, method="inclusive")[-1] if len(xs) >= 2 else xs[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mentions", type=int, default=10)
    parser.add_argument("--first-token", type=float, default=0.45)
    args = parser.parse_args()
    visible, model_first = asyncio.run(run(args.mentions, args.first_token))
    gaps = [v - m for v, m in zip(visible, model_first, strict=True)]
    rows = [
        ("model's first token (baseline)", statistics.median(model_first), _p95(model_first), "-"),
        ("first visible text", statistics.median(visible), _p95(visible), "<= baseline + 0.3 s"),
        ("gap: visible - first token", statistics.median(gaps), _p95(gaps), "<= 0.3 s"),
    ]
    print(f"{args.mentions} mentions, one at a time, through `coterie run` and the fake Discord")
    print(f"{'from the mention to':<32} {'median':>8} {'p95':>8}  goal")
    for label, med, p95, goal in rows:
        print(f"{label:<32} {med * 1000:>6.0f}ms {p95 * 1000:>6.0f}ms  {goal}")


if __name__ == "__main__":
    main()
