"""``coterie ask "PROMPT"``: one prompt through the executor, streamed to stdout."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from executor.ports import Delivery

if TYPE_CHECKING:
    from executor.agent import RunResult


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "ask",
        help="run one prompt through the executor and print the answer",
        description="Run one prompt with the configured providers and the built-in tools.",
    )
    p.add_argument("prompt", help="what to ask")
    p.add_argument("--tier", help="the model tier (default: the configured default tier)")
    p.add_argument("--system", help="a system prompt instead of the general assistant's")
    p.add_argument(
        "--json",
        action="store_true",
        help="print only one JSON object (run_id, status, output, model, attempts, usage, cost_usd)",
    )
    p.set_defaults(handler=_ask, quick_exit=True, defer_gc=True)


class StdoutDelivery(Delivery):
    """Streams deltas to stdout; status lines and notes to stderr."""

    def __init__(self) -> None:
        self.wrote = False

    async def start(self) -> None:
        return None

    async def text(self, delta: str) -> None:
        sys.stdout.write(delta)
        sys.stdout.flush()
        self.wrote = True

    async def reset(self) -> None:
        if self.wrote:
            sys.stdout.write("\n[the model failed mid-answer; another one starts over]\n")
            sys.stdout.flush()

    async def status(self, line: str) -> None:
        print(f"[{line}]", file=sys.stderr, flush=True)

    async def finish(self, result: RunResult) -> None:
        if self.wrote:
            sys.stdout.write("\n")
            sys.stdout.flush()
        if result.note:
            print(f"coterie: {result.note}", file=sys.stderr, flush=True)


#: Optional transports the provider SDKs load at import when they are installed, which
#: coterie never uses (each SDK talks through its default httpx client).
SDK_EXTRAS = ("aiohttp",)


@contextlib.contextmanager
def sdk_extras_refused() -> Iterator[None]:
    """While inside, importing :data:`SDK_EXTRAS` fails (unless one is loaded already);
    after, it works again.

    Why: ``import anthropic`` (and ``openai``) tries its optional aiohttp transport
    (the SDKs' ``[aiohttp]`` extra) and loads aiohttp when it is installed, as it is
    here for discord.py: 0.75 G of the import's 5.7 G instructions (0.2-0.3 s). Both
    SDKs catch the ImportError and go on without that transport, as where the extra is
    not installed. ``ask`` imports its SDK in here, then lets the import work again."""
    refused = [name for name in SDK_EXTRAS if name not in sys.modules]
    for name in refused:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in refused:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


# How much of a provider's error text the JSON keeps (the audit keeps the same excerpt).
ERROR_CHARS = 500


def result_json(result: RunResult) -> dict[str, Any]:
    """The run as one JSON object. Error texts go through the audit's scrubber: a
    provider (or a proxy in front of one) may echo the request's credential."""
    from executor.redaction import excerpt

    return {
        "run_id": result.run_id,
        "status": result.status.value,
        "output": result.output,
        "model": result.model,
        "attempts": [
            {
                "model": a.model,
                "latency_ms": round(a.latency_ms, 1),
                "error": excerpt(a.error, ERROR_CHARS) if a.error else None,
            }
            for a in result.attempts
        ],
        "usage": {
            "input_tokens": result.usage.input_tokens,
            "output_tokens": result.usage.output_tokens,
            "cache_read_tokens": result.usage.cache_read_tokens,
            "cache_write_tokens": result.usage.cache_write_tokens,
        },
        "cost_usd": result.usage.cost_micros / 1_000_000,
        "error": excerpt(result.error, ERROR_CHARS * 4) if result.error else None,
    }


async def _ask(args: argparse.Namespace) -> int:
    from bot.cli._common import load_settings
    from bot.cli._logging import setup_logging
    from bot.lifecycle import Stopped, cancel_on_sigterm

    settings = load_settings()
    # Why WARNING: stdout is the answer; stderr keeps only what needs a look.
    setup_logging(settings, level="DEBUG" if settings.log_level == "DEBUG" else "WARNING")
    try:
        return await cancel_on_sigterm(_ask_with(args, settings))
    except Stopped as stop:
        print(
            f"coterie: {stop}; the run was closed as cancelled and its budget settled",
            file=sys.stderr,
        )
        return stop.code


async def _ask_with(args: argparse.Namespace, settings: Any) -> int:
    from bot.app import build_app
    from bot.cli._common import started
    from bot.cli._preflight import check_tools
    from executor.agent import Invocation, RunnableAgent
    from executor.messages import Message

    # Why only this tier's SDKs: the others are never used by this one run.
    with sdk_extras_refused():
        app = await build_app(settings, instance="cli", warm=[args.tier or None], scheduler=False)
        try:
            check_tools(settings.enabled_tools, list(app.tools.names))
            await app.warm_models()
        except BaseException:
            await app.close()
            raise
    try:
        tier = args.tier or getattr(app.resolver, "default_tier", settings.default_tier)
        started()
        # Fail before any run row when the tier is unknown or has no usable key.
        app.resolver.resolve(tier)
        agent = RunnableAgent(
            name="ask",
            system_prompt=args.system
            or "You are a helpful, precise assistant. Answer directly; use tools when they help.",
            tier=tier,
            tools=tuple(app.tools.enabled_names),
        )
        delivery = None if args.json else StdoutDelivery()
        result = await app.executor.run(
            agent,
            Invocation(
                messages=[Message.user(args.prompt)],
                caller=app.operator(),
                trigger="cli",
                delivery=delivery,
            ),
        )
        if args.json:
            print(json.dumps(result_json(result), ensure_ascii=False))
        elif (
            result.model
            and app.providers is not None
            and not app.providers.prices.is_priced(result.model)
        ):
            print(
                f"coterie: no price is known for {result.model}; its cost was counted as $0",
                file=sys.stderr,
            )
        return 0 if result.ok else 1
    finally:
        await app.close()
