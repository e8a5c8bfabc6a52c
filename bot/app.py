"""The composition root: everything is built here, once, at start-up.

``build_app(settings)`` reads the tiers, builds the provider registry (SDKs are
imported only when a tier is first resolved), the tool registry, the database
(upgraded to the newest schema, crashed runs closed), the audit sink and the
budget ledger, the run checkpoints, the persona store, lanes and critic, the executor,
the chat service and the offers to resume interrupted runs. ``await app.close()``
flushes and closes all of it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.settings import Settings
from executor.agent import Caller, Privilege, RunnableAgent
from executor.errors import ConfigError
from executor.models.config import ModelsConfig, load_tier_config
from executor.models.providers import ProviderRegistry, ProviderSettings
from executor.models.tiers import TierResolver
from executor.ports import Clock
from executor.run import Executor, ModelResolver
from executor.tools.registry import ToolRegistry

if TYPE_CHECKING:
    from adapters.services.admin import AdminService
    from adapters.services.audit import AuditService
    from adapters.services.budget_alerts import BudgetAlerts
    from adapters.services.budgets import BudgetService
    from adapters.services.chat import ChatService
    from adapters.services.deletion import DataDeletion
    from adapters.services.escalation import Escalations
    from adapters.services.resume import ResumeService
    from adapters.services.runner import Runner
    from adapters.services.skills import SkillService
    from adapters.storage.admin import SqlAdminLog, SqlAlertStore
    from adapters.storage.audit_queries import AuditQueries
    from adapters.storage.audit_sink import SqlAuditSink
    from adapters.storage.budget import SqlBudgetLedger
    from adapters.storage.checkpoints import SqlCheckpoints
    from adapters.storage.db import Database
    from adapters.storage.guild_settings import SqlGuildSettings
    from adapters.storage.threads import SqlThreadStore
    from executor.critic import WatchdogCritic
    from executor.lanes import Lanes
    from personas.model import Persona
    from personas.store import PersonaStore
    from skills.scheduler import SkillScheduler
    from skills.schedules import ScheduleStore
    from skills.store import SkillStore

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


@dataclass(kw_only=True)
class App:
    """Everything the bot, the CLI and the cogs use, built once by :func:`build_app`."""

    settings: Settings
    executor: Executor
    tools: ToolRegistry
    resolver: ModelResolver
    models_config: ModelsConfig | None
    providers: ProviderRegistry | None
    db: Database
    audit: SqlAuditSink
    audit_queries: AuditQueries
    budget: SqlBudgetLedger
    personas: PersonaStore
    skills: SkillStore
    schedules: ScheduleStore
    scheduler: SkillScheduler
    skill_service: SkillService
    guild_settings: SqlGuildSettings
    threads: SqlThreadStore
    lanes: Lanes
    runner: Runner
    critic: WatchdogCritic
    escalations: Escalations
    chat: ChatService
    deletion: DataDeletion
    admin: AdminService
    admin_log: SqlAdminLog
    audit_service: AuditService
    budget_service: BudgetService
    alerts: SqlAlertStore
    budget_alerts: BudgetAlerts
    checkpoints: SqlCheckpoints
    resume: ResumeService
    # Runs crash recovery closed as interrupted at start: their members are offered to
    # resume them once Discord is connected (:meth:`take_interrupted`).
    interrupted: list[str] = field(default_factory=list)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def operator(self) -> Caller:
        """The person at the terminal: the operator, with owner privilege."""
        return Caller(
            user_id=self.settings.operator_user_id,
            display_name="operator",
            privilege=Privilege.OWNER,
        )

    async def start(self) -> None:
        """Background services (called from the bot's setup_hook): the scheduler, its
        jobs rebuilt from the schedules table and missed slots handled."""
        if not self.scheduler.running:
            await self.scheduler.start()  # logs what it loaded

    def take_interrupted(self) -> list[str]:
        """The interrupted runs left to offer to their members (once: the list empties)."""
        taken, self.interrupted = self.interrupted, []
        return taken

    async def stop_intake(self) -> None:
        """Stop starting new work on its own (the scheduler); the first step of a drain.
        Idempotent."""
        self.scheduler.shutdown()

    async def close(self) -> None:
        self.scheduler.shutdown()
        # Why before the closers: a slot in flight finishes its bookkeeping on the database.
        await self.scheduler.wait_idle()
        while self._closers:
            closer = self._closers.pop()
            try:
                await closer()
            except Exception:  # close everything even if one part fails
                log.exception("error while closing %r", closer)


async def build_app(
    settings: Settings,
    *,
    resolver: ModelResolver | None = None,
    environ: Mapping[str, str] | None = None,
    upgrade: bool = True,
    recover: bool = False,
    clock: Clock | None = None,
    to_agent: Callable[[Persona], RunnableAgent] | None = None,
) -> App:
    """Build the whole app. ``resolver`` replaces the configured tiers (tests, demos);
    ``to_agent`` replaces how a persona becomes an agent (tests give a scripted model).

    ``recover`` closes runs left ``running`` as ``interrupted`` and settles every
    open reservation: only the bot process (``coterie run``) may do that at its
    start, never a ``coterie ask`` or ``coterie chat`` beside a running bot.
    """
    from adapters.services.admin import AdminService
    from adapters.services.approval import DeliveryApprover
    from adapters.services.audit import AuditService
    from adapters.services.budget_alerts import BudgetAlerts
    from adapters.services.budgets import BudgetService, GuildBudgetLimits
    from adapters.services.chat import ChatService
    from adapters.services.conversation import HistoryLimits
    from adapters.services.deletion import DataDeletion
    from adapters.services.escalation import Escalations
    from adapters.services.resume import ResumeService
    from adapters.services.runner import Runner
    from adapters.storage.admin import SqlAdminLog, SqlAlertStore
    from adapters.storage.audit_queries import AuditQueries
    from adapters.storage.audit_sink import SqlAuditSink
    from adapters.storage.budget import SqlBudgetLedger
    from adapters.storage.checkpoints import SqlCheckpoints
    from adapters.storage.db import Database
    from adapters.storage.guild_settings import SqlGuildSettings
    from adapters.storage.threads import SqlThreadStore
    from executor.budget import dollars_to_micros
    from executor.compaction import CompactionHook
    from executor.critic import CriticConfig, WatchdogCritic
    from executor.guard import DispatchGuard
    from executor.lanes import Lanes
    from executor.ports import RealClock
    from executor.tools.builtin import default_registry
    from personas.markdown import load_builtins
    from personas.runnable import to_runnable
    from personas.store import PersonaStore
    from skills.scheduler import SkillScheduler
    from skills.schedules import ScheduleStore
    from skills.store import SkillStore

    closers: list[Callable[[], Awaitable[None]]] = []
    models_config: ModelsConfig | None = None
    providers: ProviderRegistry | None = None
    if resolver is None:
        models_config, providers, resolver = build_resolver(settings, environ)
        closers.append(providers.aclose)
    clock = clock or RealClock()

    tools = default_registry(settings.enabled_tools)

    db = Database.open(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )
    # Why insert: the database closes last, after the audit's flush and the providers.
    closers.insert(0, db.close)
    try:
        if upgrade:
            await db.upgrade()
        audit = SqlAuditSink(db.sessions)
        closers.append(audit.close)
        budget = SqlBudgetLedger(
            db.sessions, default_limit_micros=dollars_to_micros(settings.budget_default_usd)
        )
        interrupted: list[str] = []
        if recover:
            from adapters.storage.recovery import recover_interrupted_runs

            interrupted = await recover_interrupted_runs(db.sessions, budget)
            if interrupted:
                log.warning(
                    "closed %d run(s) left running by a crash as interrupted", len(interrupted)
                )
        # Only the runs a member could be offered to resume are kept (chat runs).
        checkpoints = SqlCheckpoints(db.sessions, keep=ResumeService.resumable, clock=clock)
        closers.append(checkpoints.close)
    except BaseException:
        for c in reversed(closers):
            await c()
        raise

    escalations = Escalations()
    critic = WatchdogCritic(
        CriticConfig(
            soft_runtime_s=settings.critic_soft_runtime_s,
            soft_steps=settings.critic_soft_steps,
            hard_factor=settings.critic_hard_factor,
            judge=settings.critic_judge_tier,
        ),
        clock=clock,
        escalator=escalations,
        resolver=resolver,
    )
    hooks = [
        DispatchGuard(max_depth=settings.skill_dispatch_depth),
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
        checkpoints=checkpoints,
    )
    tiers = list(getattr(resolver, "tiers", None) or (models_config.tiers if models_config else []))
    personas = (
        PersonaStore(db.sessions, load_builtins(), tools=tools, tiers=tiers)
        if tiers
        else PersonaStore(db.sessions, load_builtins(), tools=tools)
    )
    skills = SkillStore(db.sessions, tools=tools, tiers=tiers, personas=personas)
    guild_settings = SqlGuildSettings(db.sessions)
    threads = SqlThreadStore(db.sessions)
    audit_queries = AuditQueries(db.sessions)
    lanes = Lanes(slots=settings.lane_slots)
    runner = Runner(executor, lanes)
    chat = ChatService(
        executor=executor,
        personas=personas,
        guild_settings=guild_settings,
        threads=threads,
        runner=runner,
        limits=HistoryLimits(
            max_messages=settings.history_max_messages, max_chars=settings.history_max_chars
        ),
        to_agent=to_agent or to_runnable,
        sees_images=_sees_images(resolver),
        allow_dms=settings.allow_dms,
        default_tier=settings.default_tier,
    )
    # Skills and their schedules (issue 9). The scheduler fires through the service,
    # and the service adds and removes the scheduler's jobs: one of them is set second.
    from adapters.services.audit import RunFilter
    from adapters.services.skills import PastRun, SkillService

    async def skill_history(guild_id: str, skill: str, limit: int) -> list[PastRun]:
        page = await audit_queries.list_runs(RunFilter(guild_id=guild_id, skill=skill), limit=limit)
        return [PastRun(r.run_id, r.status, r.cost_micros, r.started_at) for r in page.runs]

    schedules = ScheduleStore(db.sessions)
    skill_service = SkillService(
        skills=skills,
        schedules=schedules,
        scheduler=None,
        chat=chat,
        executor=executor,
        budget=budget,
        history=skill_history,
        estimator=resolver,
        default_tier=settings.default_tier,
        min_interval_s=settings.schedule_min_interval_s,
        schedules_per_member=settings.schedules_per_member,
        clock=clock,
    )
    scheduler = SkillScheduler(
        schedules,
        skill_service.fire,
        events=skill_service,
        clock=clock,
        grace_s=settings.schedule_grace_s,
        warn_after=settings.schedule_warn_after,
        disable_after=settings.schedule_disable_after,
    )
    skill_service.scheduler = scheduler
    # Registered always; usable where COTERIE_ENABLED_TOOLS allows it (all by default).
    tools.add(skill_service.run_skill_tool())

    # Admin review (issue 10): guild budgets, budget warnings, the admin log.
    budget.limits = GuildBudgetLimits(guild_settings, budget.default_limit_micros)
    alerts = SqlAlertStore(db.sessions)
    budget_alerts = BudgetAlerts(
        budget, alerts, thresholds=settings.budget_warn_percent, clock=budget.clock
    )
    budget.after_settle.append(budget_alerts.check)
    admin_log = SqlAdminLog(db.sessions)

    async def persona_exists(guild_id: str, name: str) -> bool:
        return await personas.find(guild_id, name) is not None

    admin = AdminService(
        guild_settings=guild_settings,
        budget=budget,
        log=admin_log,
        tiers=tiers,
        persona_exists=persona_exists,
    )

    audit_service = AuditService(
        queries=audit_queries, sink=audit, budget=budget, admin=admin, clock=budget.clock
    )
    # Why the app's clock here and the ledger's above: "today" and "the last 7 days" are
    # compared with the audit's times (the executor's clock), a run's budget line with
    # the ledger's charges.
    budget_service = BudgetService(
        ledger=budget, spend=audit_queries, guild_settings=guild_settings, clock=clock
    )

    async def forget_personas(user_id: str) -> int:
        return await personas.delete_user_data(user_id, purge=True)

    deletion = DataDeletion(
        {
            "skills and schedules": skills.delete_user_data,
            "personas": forget_personas,
            "thread bindings": threads.delete_user_data,
            "budget": budget.delete_user_data,
            "audit (anonymised)": audit_queries.delete_user_data,
            "budget warnings": alerts.delete_user_data,
            "admin actions (anonymised)": admin_log.delete_user_data,
            "interrupted runs to resume": checkpoints.delete_user_data,
        }
    )
    resume = ResumeService(
        store=checkpoints,
        chat=chat,
        clock=clock,
        offer_ttl_s=settings.resume_offer_hours * 3600,
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
        audit_queries=audit_queries,
        budget=budget,
        personas=personas,
        skills=skills,
        schedules=schedules,
        scheduler=scheduler,
        skill_service=skill_service,
        guild_settings=guild_settings,
        threads=threads,
        lanes=lanes,
        runner=runner,
        critic=critic,
        escalations=escalations,
        chat=chat,
        deletion=deletion,
        admin=admin,
        admin_log=admin_log,
        audit_service=audit_service,
        budget_service=budget_service,
        alerts=alerts,
        budget_alerts=budget_alerts,
        checkpoints=checkpoints,
        resume=resume,
        interrupted=interrupted,
    )
    app._closers.extend(closers)
    return app


def _sees_images(resolver: ModelResolver) -> Callable[[RunnableAgent], bool]:
    """Whether an agent's model sees images, from the model's profile (no request is
    sent: resolving a tier builds its candidates, it does not call them)."""
    from executor.models.base import profile_of

    def sees(agent: RunnableAgent) -> bool:
        try:
            model = agent.model or resolver.resolve(agent.tier)
        except ConfigError:
            return False  # the run will fail with the reason; send no images meanwhile
        return profile_of(model).sees_images

    return sees
