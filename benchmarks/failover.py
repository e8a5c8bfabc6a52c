"""How long a hung provider holds up an answer, on the default tiers.

Anthropic (every default tier's first candidate) talks to a loopback server that
accepts the request and hangs: ``silent`` sends nothing back, ``headers`` sends a 200
event stream's headers and then nothing, ``after_text`` streams the start of a message
and a few words, then nothing. OpenAI (the second candidate) talks to a loopback
server that answers. The figure is the time from the request to the fallback's whole
answer, printed beside its baseline, the tier's timeout that applies (first-token; idle
after text; goal: at most 1 s over it), and beside the attempt deadline that was the
only limit before (30, 90, 180 s). The real SDKs over TCP, the real clock, the real
tiers (``TierResolver`` over the default config).

Run: ``.venv/bin/python benchmarks/failover.py`` (about 40 s: the tiers and modes run
side by side, each waiting out its own timeout). A script that prints figures, not a
timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from executor import (
    DEFAULT_TIERS,
    Message,
    ModelRequest,
    ProviderRegistry,
    ProviderSettings,
    TierResolver,
    load_tier_config,
)
from tests.executor.models.loopback import (
    PARTIAL_TEXT,
    AnsweringServer,
    HangingServer,
    HangMode,
)

REQ = ModelRequest(messages=[Message.user("Capital of France?")], max_tokens=64)
ANSWER = "Paris, from the fallback."


@dataclass
class Figure:
    tier: str
    mode: HangMode
    limit: str  # the timeout that applies
    limit_s: float
    deadline_s: float
    answered_s: float  # request (the partial text, after_text) -> the fallback's answer
    fallback_asked_s: float  # request -> the fallback's server got its request
    error: str


async def measure(tier: str, mode: HangMode) -> Figure:
    hang, answer = HangingServer(mode), AnsweringServer(ANSWER)
    await hang.start()
    await answer.start()
    registry = ProviderRegistry(
        ProviderSettings(
            anthropic_api_key="sk-ant-bench",
            anthropic_base_url=hang.url,
            openai_api_key="sk-bench",
            openai_base_url=answer.url + "/v1",
        )
    )
    tiers = TierResolver(load_tier_config(None, {}), registry)
    cfg = tiers.tier(tier)
    model = tiers.resolve(tier)
    started = time.perf_counter()
    try:
        events = []
        async for event in model.stream(REQ):
            events.append(event)
            if mode == "after_text" and getattr(event, "text", None) == PARTIAL_TEXT:
                # Why from here: the idle timeout counts from the last event, and the
                # Anthropic SDK's first request (its types built) is not a stall.
                started = time.perf_counter()
        answered = time.perf_counter() - started
        done = getattr(events[-1], "response", None)  # a stream ends with ResponseDone
    finally:
        await registry.aclose()
        await hang.stop()
        await answer.stop()
    assert done is not None and done.text == ANSWER, done
    first = done.attempts[0]
    return Figure(
        tier=tier,
        mode=mode,
        limit="idle" if mode == "after_text" else "first-token",
        limit_s=cfg.idle_s if mode == "after_text" else cfg.first_token_s,
        deadline_s=cfg.timeout_s,
        answered_s=answered,
        fallback_asked_s=(answer.first_request_at or float("nan")) - started,
        error=f"{first.error_kind}: {first.error}",
    )


async def warm(answer: AnsweringServer) -> float:
    """Build both SDKs' clients and types once, as a running bot already has."""
    registry = ProviderRegistry(
        ProviderSettings(openai_api_key="sk-bench", openai_base_url=answer.url + "/v1")
    )
    started = time.perf_counter()
    try:
        import anthropic  # noqa: F401  (imported by the tier anyway: not what we measure)

        await registry.model("openai:gpt-5-mini").generate(REQ)
    finally:
        await registry.aclose()
    return time.perf_counter() - started


async def main(tiers: list[str], modes: list[HangMode]) -> None:
    answer = AnsweringServer(ANSWER)
    await answer.start()
    try:
        warm_s = await warm(answer)
    finally:
        await answer.stop()
    # Why side by side: each waits out its own timeout; one after another, 2 x 60 s.
    figures = await asyncio.gather(*(measure(t, m) for t in tiers for m in modes))
    print(f"warm-up (SDK imports and the first request, not counted): {warm_s:.2f} s\n")
    print(
        "| tier | hang | baseline: the timeout | hang -> fallback asked "
        "| hang -> fallback's whole answer | over the timeout (goal <= 1 s) "
        "| before: the attempt deadline |"
    )
    print("|---|---|---|---|---|---|---|")
    for f in figures:
        print(
            f"| {f.tier} | {f.mode} | {f.limit} {f.limit_s:g} s | {f.fallback_asked_s:.2f} s "
            f"| {f.answered_s:.2f} s | {f.answered_s - f.limit_s:+.2f} s "
            f"| {f.deadline_s:g} s |"
        )
    print()
    for f in figures:
        print(f"{f.tier}/{f.mode}: the first attempt: {f.error}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiers", default=",".join(DEFAULT_TIERS), help="comma-separated")
    parser.add_argument("--modes", default="silent,headers,after_text", help="comma-separated")
    args = parser.parse_args()
    modes: list[HangMode] = []
    for m in args.modes.split(","):
        if m not in ("silent", "headers", "after_text"):
            parser.error(f"--modes: {m!r} is not silent, headers or after_text")
        modes.append(m)  # type: ignore[arg-type]
    asyncio.run(main(args.tiers.split(","), modes))
