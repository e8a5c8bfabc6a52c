"""The composition root: everything is built here, once, at start-up.

``build_app(settings)`` reads the tiers, builds the provider registry (SDKs are
imported only when a tier is first resolved), the tool registry, the database
(upgraded to the newest schema, crashed runs closed), the audit sink and the
budget ledger, the persona store, lanes and critic, the executor and the chat
service. ``await app.close()`` flushes and closes all of it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bot.settings import Settings
from executor.agent import Caller, Privilege
from executor.errors import ConfigError
from executor.models.config import ModelsConfig, load_tier_config
from executor.models.providers import ProviderRegistry, ProviderSettings
from executor.models.tiers import TierResolver
from executor.run import Executor, ModelResolver
from executor.tools.registry import ToolRegistry

__all__ = ["App", "build_app", "build_resolver", "load_environ"]

log = logging.getLogger("coterie")


def load_environ(settings: Settings) -> dict[str, str]:
    """The process environment over the ``.env`` file (the environment wins)."""
    from dotenv import dotenv_values

    env_file = settings.model_config.get("env_file") or ".env"
    merged: dict[str, str] = {}
    if isinstance(env_file, str | Path) and Path(env_file).is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ)
    return merged


def _provider_settings(settings: Settings, environ: Mapping[str, str]) -> ProviderSettings:
    def secret(v: Any) -> str | None:
        return v.get_secret_value() if v is not None else None

    # Why replace: every other field (and any added later) comes from the environment.
    base = ProviderSettings.from_environ(environ)
    return replace(
        base,
        anthropic_api_key=secret(settings.anthropic_api_key) or base.anthropic_api_key,
        anthropic_base_url=settings.anthropic_base_url or base.anthropic_base_url,
        openai_api_key=secret(settings.openai_api_key) or base.openai_api_key,
        openai_base_url=settings.openai_base_url or base.openai_base_url,
    )


def build_resolver(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> tuple[ModelsConfig, ProviderRegistry, TierResolver]:
    """Tiers from ``coterie.toml`` (when it exists) and the environment."""
    environ = environ if environ is not None else load_environ(settings)
    path = settings.config_file if settings.config_file.is_file() else None
    if path is None and "COTERIE_CONFIG_FILE" in environ:
        raise ConfigError(f"the config file {settings.config_file} does not exist")
    config = load_tier_config(path, environ)
    registry = ProviderRegistry(
        _provider_settings(settings, environ),
        providers=config.providers,
        prices=config.price_table(),
    )
    return config, registry, TierResolver(config, registry)


@dataclass
class App:
    """Everything the bot, the CLI and the cogs use, built once."""

    settings: Settings
    executor: Executor
    tools: ToolRegistry
    resolver: ModelResolver
    models_config: ModelsConfig | None = None
    providers: ProviderRegistry | None = None
    db: Any = None
    audit: Any = None
    budget: Any = None
    personas: Any = None
    channel_defaults: Any = None
    threads: Any = None
    lanes: Any = None
    critic: Any = None
    chat: Any = None
    extras: dict[str, Any] = field(default_factory=dict)
    _closers: list[Any] = field(default_factory=list)

    def operator(self) -> Caller:
        """The person at the terminal: the operator, with owner privilege."""
        return Caller(
            user_id=self.settings.operator_user_id,
            display_name="operator",
            privilege=Privilege.OWNER,
        )

    async def start(self) -> None:
        """Background services (called from the bot's setup_hook)."""
        return None

    async def close(self) -> None:
        while self._closers:
            closer = self._closers.pop()
            try:
                await closer()
            except Exception:  # close everything even if one part fails
                log.exception("error while closing %r", closer)


class LoggingEscalator:
    """Stops and kills go to the log until the Discord client replaces the target."""

    def __init__(self) -> None:
        self.target: Any = None  # an Escalator set by the Discord host (admin channel)

    async def escalate(self, escalation: Any) -> None:
        log.warning(
            "critic %s run %s (%s, %s): %s",
            escalation.action,
            escalation.run_id,
            escalation.agent,
            escalation.caller.user_id,
            escalation.reason,
        )
        if self.target is not None:
            await self.target.escalate(escalation)


async def build_app(
    settings: Settings,
    *,
    resolver: ModelResolver | None = None,
    environ: Mapping[str, str] | None = None,
    upgrade: bool = True,
    recover: bool = False,
    clock: Any = None,
) -> App:
    """Build the whole app. ``resolver`` replaces the configured tiers (tests, demos).

    ``recover`` closes runs left ``running`` as ``interrupted`` and settles every
    open reservation: only the bot process (``coterie run``) may do that at its
    start, never a ``coterie ask`` or ``coterie chat`` beside a running bot.
    """
    from adapters.approval import DeliveryApprover
    from adapters.audit import SqlAuditSink
    from adapters.budget import SqlBudgetLedger
    from adapters.channel_defaults import SqlChannelDefaults
    from adapters.chat import ChatService
    from adapters.conversation import HistoryLimits
    from adapters.db import Database
    from adapters.threads import SqlThreadStore
    from executor.budget import dollars_to_micros
    from executor.compaction import CompactionHook
    from executor.critic import CriticConfig, WatchdogCritic
    from executor.guard import DispatchGuard
    from executor.lanes import Lanes
    from executor.ports import RealClock
    from executor.tools.builtin import default_registry
    from personas.markdown import load_builtins
    from personas.store import PersonaStore

    closers: list[Any] = []
    models_config: ModelsConfig | None = None
    providers: ProviderRegistry | None = None
    if resolver is None:
        models_config, providers, resolver = build_resolver(settings, environ)
        closers.append(providers.aclose)
    clock = clock or RealClock()

    tools = default_registry(settings.enabled_tools)

    db = Database.open(settings.database_url)
    closers.append(db.close)
    try:
        if upgrade:
            await db.upgrade()
        audit = SqlAuditSink(db.sessions)
        closers.append(audit.close)
        budget = SqlBudgetLedger(
            db.sessions, default_limit_micros=dollars_to_micros(settings.budget_default_usd)
        )
        if recover:
            from adapters.recovery import recover_interrupted_runs

            closed = await recover_interrupted_runs(db.sessions, budget)
            if closed:
                log.warning("closed %d run(s) left running by a crash as interrupted", closed)
    except BaseException:
        for c in reversed(closers):
            await c()
        raise

    escalator = LoggingEscalator()
    critic = WatchdogCritic(
        CriticConfig(
            soft_runtime_s=settings.critic_soft_runtime_s,
            soft_steps=settings.critic_soft_steps,
            hard_factor=settings.critic_hard_factor,
            judge=settings.critic_judge_tier,
        ),
        clock=clock,
        escalator=escalator,
        resolver=resolver,
    )
    hooks = [
        DispatchGuard(),
        CompactionHook(
            settings.compaction_tier,
            resolver=resolver,
            trigger_share=settings.compaction_share,
            clock=clock,
        ),
    ]
    executor = Executor(
        models=resolver,
        tools=tools,
        audit=audit,
        budget=budget,
        critic=critic,
        approver=DeliveryApprover(),
        clock=clock,
        hooks=hooks,
    )
    tiers = list(getattr(resolver, "tiers", None) or (models_config.tiers if models_config else []))
    personas = (
        PersonaStore(db.sessions, load_builtins(), tools=tools, tiers=tiers)
        if tiers
        else PersonaStore(db.sessions, load_builtins(), tools=tools)
    )
    channel_defaults = SqlChannelDefaults(db.sessions)

    async def guild_default(guild_id: str) -> str | None:
        return await channel_defaults.resolve(guild_id, None)

    threads = SqlThreadStore(db.sessions)
    lanes = Lanes(slots=settings.lane_slots)
    chat = ChatService(
        executor=executor,
        personas=personas,
        channel_defaults=channel_defaults,
        guild_default=guild_default,
        threads=threads,
        lanes=lanes,
        limits=HistoryLimits(
            max_messages=settings.history_max_messages, max_chars=settings.history_max_chars
        ),
    )
    app = App(
        settings=settings,
        executor=executor,
        tools=tools,
        resolver=resolver,
        models_config=models_config,
        providers=providers,
        db=db,
        audit=audit,
        budget=budget,
        personas=personas,
        channel_defaults=channel_defaults,
        threads=threads,
        lanes=lanes,
        critic=critic,
        chat=chat,
    )
    app.extras["escalator"] = escalator
    app._closers.extend(closers)
    return app
