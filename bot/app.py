"""The composition root: everything is built here, once, at start-up.

``build_app(settings)`` reads the tiers, builds the provider registry (SDKs are
imported only when a tier is first resolved), the tool registry, the database
(upgraded to the newest schema, crashed runs closed), the audit sink and the
budget ledger, the run checkpoints, the persona store, lanes and critic, the executor,
the chat service, the questions waiting for approval and the offers to resume
interrupted runs. ``await app.close()``
flushes and closes all of it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
    from adapters.mcp.servers import McpServers
    from adapters.services.admin import AdminService
    from adapters.services.approval import ApprovalService
    from adapters.services.audit import AuditService
    from adapters.services.budget_alerts import BudgetAlerts
    from adapters.services.budgets import BudgetService
    from adapters.services.chat import ChatService
    from adapters.services.deletion import DataDeletion, MemberData
    from adapters.services.escalation import Escalations
    from adapters.services.instances import Kind, Membership
    from adapters.services.memory import MemoryService
    from adapters.services.resume import ResumeService
    from adapters.services.runner import Runner
    from adapters.services.skills import SkillService
    from adapters.storage.admin import SqlAdminLog, SqlAlertStore
    from adapters.storage.approvals import SqlApprovals
    from adapters.storage.audit_queries import AuditQueries
    from adapters.storage.audit_sink import SqlAuditSink
    from adapters.storage.budget import SqlBudgetLedger
    from adapters.storage.checkpoints import SqlCheckpoints
    from adapters.storage.db import Database
    from adapters.storage.guild_settings import SqlGuildSettings
    from adapters.storage.instances import SqlInstances
    from adapters.storage.notify import PgNotifier
    from adapters.storage.threads import SqlThreadStore
    from executor.critic import WatchdogCritic
    from executor.lanes import Lanes
    from memory.store import SqlNoteStore
    from personas.model import Persona
    from personas.store import PersonaStore
    from skills.scheduler import SkillScheduler
    from skills.schedules import ScheduleStore
    from skills.store import SkillStore

__all__ = ["App", "build_app", "build_resolver", "load_environ"]

log = logging.getLogger("coterie")

#: How often the housekeeping runs (forgotten members' charges that left the window are
#: anonymised, notes past the retention deleted).
HOUSEKEEPING_INTERVAL_S = 3600.0


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
    # None: built with ``scheduler=False`` (``ask``, ``chat``: no slot ever fires there);
    # :attr:`scheduler` is the one every caller that fires or lists slots uses.
    skill_scheduler: SkillScheduler | None
    skill_service: SkillService
    guild_settings: SqlGuildSettings
    threads: SqlThreadStore
    lanes: Lanes
    runner: Runner
    critic: WatchdogCritic
    escalations: Escalations
    chat: ChatService
    memory_store: SqlNoteStore
    memory: MemoryService
    admin: AdminService
    admin_log: SqlAdminLog
    audit_service: AuditService
    budget_service: BudgetService
    alerts: SqlAlertStore
    budget_alerts: BudgetAlerts
    # This process on the database (build_app(instance=...)); None: not registered.
    membership: Membership | None = None
    instances: SqlInstances | None = None
    notifier: PgNotifier | None = None
    mcp: McpServers | None = None  # the [mcp.<name>] servers (their tools are in `tools`)
    checkpoints: SqlCheckpoints
    # Offers interrupted chat runs to their members (the runs crash recovery closed at
    # start, and those this process settles for a dead one later: ResumeService.found).
    resume: ResumeService
    # Tool calls waiting for a member's Approve/Deny, in the database: the press may
    # reach any process (the Discord client hands it to this service).
    approvals: ApprovalService
    approval_store: SqlApprovals
    # Every store above that keeps member data, asked by /forgetme and /mydata.
    deletion: DataDeletion = field(init=False)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # The providers' SDK imports started by build_app (a thread), and for which tiers.
    _warming: asyncio.Future[list[str]] | None = None
    _warm_tiers: Sequence[str | None] | None = None
    _models: asyncio.Task[None] | None = None  # waits for them and builds the models
    _background: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        from adapters.services.deletion import DataDeletion

        self.deletion = DataDeletion(self.member_data())

    def member_data(self) -> list[MemberData]:
        """The stores that keep member data (the data API), found by type among the
        app's parts, once each, in the order of the fields."""
        from dataclasses import fields

        from adapters.services.deletion import collect_member_data

        return collect_member_data(
            getattr(self, f.name) for f in fields(self) if f.name != "deletion"
        )

    @property
    def scheduler(self) -> SkillScheduler:
        """The skill scheduler; an app built with ``scheduler=False`` has none."""
        if self.skill_scheduler is None:
            raise RuntimeError("this app was built without a scheduler (scheduler=False)")
        return self.skill_scheduler

    def operator(self) -> Caller:
        """The person at the terminal: the operator, with owner privilege."""
        return Caller(
            user_id=self.settings.operator_user_id,
            display_name="operator",
            privilege=Privilege.OWNER,
        )

    async def warm_models(self) -> None:
        """Wait for the SDK imports :func:`build_app` started in a thread, then build
        the warmed tiers' models here (cached by the resolver): the first run, and the
        chat flow's look at a model's profile, then import and build nothing.
        Idempotent: every call waits for the same work (:meth:`start` begins it, the
        bot's ``on_ready`` waits for it); a tier that cannot be built is left for its
        first run to report."""
        if self._models is None:
            self._models = asyncio.ensure_future(self._build_models())
        await asyncio.shield(self._models)

    async def _build_models(self) -> None:
        warming, self._warming = self._warming, None
        if warming is None:
            return
        started = time.perf_counter()
        try:
            kinds = await warming
        except Exception:
            log.warning("could not import a provider's SDK ahead of time", exc_info=True)
            return
        resolver = self.resolver
        if isinstance(resolver, TierResolver):
            for tier in resolver.tiers if self._warm_tiers is None else self._warm_tiers:
                try:
                    resolver.resolve(tier)
                except ConfigError:
                    continue  # no usable candidate: the preflight said so, a run will
                except Exception:
                    log.warning(
                        "could not build tier %s's models ahead of time", tier, exc_info=True
                    )
        log.info(
            "models ready: %s (SDKs imported off the event loop; waited %.2fs for them)",
            ", ".join(kinds) or "no SDK",
            time.perf_counter() - started,
        )

    async def warm_storage(self) -> None:
        """Run the reads of a member's message once, writing nothing: SQLAlchemy
        builds and caches each statement on its first use (10-20 ms apiece on the
        2-core VM), which the first message after a start would otherwise pay."""
        nobody = "0"  # no Discord id is 0: nothing real is read or cached twice
        try:
            await self.guild_settings.guild(nobody)
            await self.guild_settings.channel_persona(nobody)
            await self.threads.get(nobody)
            await self.personas.find(None, self.chat.fallback_persona)
            await self.budget.status(nobody)
        except Exception:  # a start must not fail over a warm-up; the reads will say why
            log.warning("could not warm the database's statements up", exc_info=True)

    async def start(self) -> None:
        """Background services (called from the bot's setup_hook): the models (begun
        here, not awaited: the SDKs' import goes on while the bot logs in, and its
        ``on_ready`` waits for them before "ready"), the message path's statements, the
        scheduler, its jobs rebuilt from the schedules table and missed slots handled;
        on a registered bot, once this process leads the scheduler (at once on SQLite)."""
        if self._models is None:
            self._models = asyncio.ensure_future(self._build_models())
        await self.warm_storage()
        leadership = self.membership.leadership if self.membership is not None else None
        if leadership is not None:
            await leadership.enable()
        elif self.skill_scheduler is not None and not self.skill_scheduler.running:
            await self.skill_scheduler.start()  # logs what it loaded
        if not self._background:
            await self._chores()
            self._background.append(
                asyncio.create_task(self._chores_hourly(), name="coterie-housekeeping")
            )

    async def _chores(self) -> None:
        """The housekeeping, one chore after the other (two writers at once on SQLite
        would only wait on each other): a forgotten member's charges leave their id once
        out of the window; notes older than the retention go."""
        for chore, what in (
            (self.budget.anonymise_rolled_out, "anonymise forgotten members' old charges"),
            (self.memory.purge_expired, "purge old notes"),
            (self.approvals.prune, "delete old approval requests"),
        ):
            try:
                await chore()
            except Exception:
                # Why not raise: it is housekeeping; the next round, an hour on, tries again.
                log.warning("could not %s; trying again in an hour", what, exc_info=True)

    async def _chores_hourly(self) -> None:
        while True:
            await self.budget.clock.sleep(HOUSEKEEPING_INTERVAL_S)
            await self._chores()

    async def stop_intake(self) -> None:
        """Stop starting new work on its own (the scheduler); the first step of a drain.
        Idempotent."""
        if self.skill_scheduler is not None:
            self.skill_scheduler.shutdown()
        if self.membership is not None and self.membership.leadership is not None:
            await self.membership.leadership.resign()  # another process leads from now
        await self._stop_background()

    async def _stop_background(self) -> None:
        tasks, self._background = self._background, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        if self.skill_scheduler is not None:
            self.skill_scheduler.shutdown()
        await self._stop_background()
        models, self._models = self._models, None
        if models is not None and not models.done():
            models.cancel()  # the import's thread finishes on its own; nothing waits
            await asyncio.gather(models, return_exceptions=True)
        # Why wait: a run that has finished may still be telling the audit whether its
        # answer arrived; closing the database under it leaves a connection behind. The
        # drain has already ended every run in `coterie run`; this is for the rest.
        try:
            await asyncio.wait_for(self.runner.wait_idle(), self.settings.shutdown_grace_s)
        except TimeoutError:
            log.warning("closing with %d run(s) still in flight", self.runner.in_flight)
        # Why before the closers: a slot in flight finishes its bookkeeping on the database.
        if self.skill_scheduler is not None:
            await self.skill_scheduler.wait_idle()
        while self._closers:
            closer = self._closers.pop()
            log.debug("closing %s", getattr(closer, "__qualname__", closer))
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
    instance: Kind | None = None,
    warm: bool | Sequence[str | None] = False,
    scheduler: bool = True,
) -> App:
    """Build the whole app. ``resolver`` replaces the configured tiers (tests, demos);
    ``to_agent`` replaces how a persona becomes an agent (tests give a scripted model).

    ``instance`` registers this process on the database (``bot``: ``coterie run``;
    ``cli``: ``coterie ask`` and ``chat``), with a heartbeat until the app closes: its
    runs and reservations carry its id, and no other process settles them while it
    lives (:mod:`adapters.services.instances`). A bot also settles what dead instances
    left, and, on PostgreSQL, shares the Discord shards with the other bots.

    ``recover`` (the bot, at start, holding the database's lock) closes runs left
    ``running`` by a process that is gone as ``interrupted`` and settles their
    reservations; never a ``coterie ask`` or ``coterie chat``.

    ``warm``: the SDKs of these tiers' providers (True: every tier's; a None among the
    tiers: the default tier's) start importing in a thread at once, while the rest is
    built; :meth:`App.warm_models` waits for them (``App.start`` does). True imports
    every candidate's SDK (a bot: a failover never waits for an import on the event
    loop); a list only each tier's first usable candidate's (a one-run verb: a
    backup's SDK is imported if failover reaches it). Verbs that run no model
    (``budget``, ``forget``) leave it False.

    ``scheduler=False`` builds no skill scheduler (``App.skill_scheduler`` is None and
    ``App.scheduler`` raises; a schedule saved meanwhile gets its job when the bot next
    starts, from the schedules table): ``coterie ask`` and ``chat`` never fire a slot,
    and the scheduler's module brings APScheduler's schedulers (~25 ms of their start).
    """
    from adapters.services.admin import AdminService
    from adapters.services.approval import ApprovalService, DeliveryApprover
    from adapters.services.audit import AuditService
    from adapters.services.budget_alerts import BudgetAlerts
    from adapters.services.budgets import BudgetService, GuildBudgetLimits
    from adapters.services.chat import ChatService
    from adapters.services.conversation import HistoryLimits
    from adapters.services.escalation import Escalations
    from adapters.services.memory import MemoryService
    from adapters.services.resume import ResumeService
    from adapters.services.runner import Runner
    from adapters.services.skills import SkillService
    from adapters.storage.admin import SqlAdminLog, SqlAlertStore
    from adapters.storage.approvals import SqlApprovals
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
    from memory.notes import Caps
    from memory.store import SqlNoteStore
    from personas.markdown import load_builtins
    from personas.runnable import to_runnable
    from personas.store import PersonaStore
    from skills.schedules import ScheduleStore
    from skills.store import SkillStore

    if instance == "bot" and not scheduler:
        raise ValueError("a bot leads or follows the scheduler: build it with scheduler=True")
    closers: list[Callable[[], Awaitable[None]]] = []
    models_config: ModelsConfig | None = None
    providers: ProviderRegistry | None = None
    environ = environ if environ is not None else load_environ(settings)
    warming: asyncio.Future[list[str]] | None = None
    warm_tiers: list[str | None] | None = None
    if resolver is None:
        models_config, providers, resolver = build_resolver(settings, environ)
        closers.append(providers.aclose)
    if warm and isinstance(resolver, TierResolver):
        warm_tiers = None if warm is True else list(warm)
        # Why a thread, and first: an SDK import takes seconds of the start (1.4 s for
        # anthropic); it overlaps the database's start here, Discord's login in `run`.
        preload = functools.partial(resolver.preload, warm_tiers, backups=warm is True)
        warming = asyncio.get_running_loop().run_in_executor(None, preload)
        warming.add_done_callback(_retrieve)
    clock = clock or RealClock()

    from bot.tooling import mcp_servers, web_search_tools
    from executor.models.pricing import PriceTable
    from executor.tools.citations import CitationCheck

    tools = default_registry(settings.enabled_tools)
    for t in web_search_tools(settings, providers.prices if providers else PriceTable()):
        tools.add(t)

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
            db.sessions,
            default_limit_micros=dollars_to_micros(settings.budget_default_usd),
            clock=clock,
        )
        # Only the runs that can be resumed are kept: chat runs (offered to their
        # member) and a scheduled slot's first attempt (its retry resumes it).
        checkpoints = SqlCheckpoints(
            db.sessions,
            keep=lambda c: ResumeService.resumable(c) or SkillService.resumable(c),
            clock=clock,
        )
        closers.append(checkpoints.close)
        # MCP servers (issue 17): their pins are read now; stdio servers start on first call.
        mcp = mcp_servers(settings, environ, db.sessions)
        for source in mcp.sources:
            tools.add_source(source)
        await tools.open()
        closers.append(tools.close)
        interrupted: list[str] = []
        if recover:
            from adapters.storage.instances import SqlInstances
            from adapters.storage.recovery import recover_interrupted_runs

            # Expired instances first: what they owned is then an orphan. On SQLite this
            # process holds the file's lock, so every bot row is a dead one's (this one
            # registers later): sole_bot="" names no live bot.
            await SqlInstances(db.sessions).reap(
                sole_bot="" if db.is_sqlite and instance == "bot" else None
            )
            report = await recover_interrupted_runs(db.sessions, budget)
            interrupted = report.interrupted_runs
            if interrupted:
                log.warning(
                    "closed %d run(s) left running by a crash as interrupted", len(interrupted)
                )
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
        CitationCheck(clock=clock),
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
    # Memory (issue 16): notes personas keep about members, and the tools that keep them.
    memory_store = SqlNoteStore(db.sessions, clock=clock)
    memory = MemoryService(
        memory_store,
        guild_settings=guild_settings,
        enabled=settings.memory_enabled,
        allow_dms=settings.allow_dms,
        caps=Caps(max_notes=settings.memory_max_notes, max_chars=settings.memory_max_chars),
        prompt_tokens=settings.memory_prompt_tokens,
        retention_days=settings.memory_retention_days,
        clock=clock,
    )
    # Why always: the built-ins grant its tools (an override of one must validate); where
    # memory is off the chat flow takes them from the agent.
    tools.add_source(memory.source())
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
        memory=memory,
    )
    # Skills and their schedules (issue 9). The scheduler fires through the service,
    # and the service adds and removes the scheduler's jobs: one of them is set second.
    from adapters.services.audit import RunFilter
    from adapters.services.skills import PastRun

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
    skills_scheduler: SkillScheduler | None = None
    if scheduler:
        from skills.scheduler import SkillScheduler

        skills_scheduler = SkillScheduler(
            schedules,
            skill_service.fire,
            events=skill_service,
            clock=clock,
            grace_s=settings.schedule_grace_s,
            warn_after=settings.schedule_warn_after,
            disable_after=settings.schedule_disable_after,
        )
        # A slot closed instead of retried forgets its run's checkpoint.
        skills_scheduler.forget_runs = checkpoints.forget
        # A slot left running whose run had posted its answer is closed ok, not rerun.
        skills_scheduler.answered_runs = audit_queries.answered
    skill_service.scheduler = skills_scheduler
    # A slot's retry resumes its interrupted run.
    skill_service.checkpoints = checkpoints
    # Registered always; usable where COTERIE_ENABLED_TOOLS allows it (all by default).
    tools.add(skill_service.run_skill_tool())

    # Admin review (issue 10): guild budgets, budget warnings, the admin log.
    budget.limits = GuildBudgetLimits(guild_settings, budget.default_limit_micros)
    alerts = SqlAlertStore(db.sessions)
    budget_alerts = BudgetAlerts(
        budget, alerts, thresholds=settings.budget_warn_percent, clock=clock
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
        queries=audit_queries, sink=audit, budget=budget, admin=admin, clock=clock
    )
    budget_service = BudgetService(
        ledger=budget, spend=audit_queries, guild_settings=guild_settings, clock=clock
    )

    approval_store = SqlApprovals(db.sessions)
    approvals = ApprovalService(approval_store, clock=clock)
    resume = ResumeService(
        store=checkpoints,
        chat=chat,
        clock=clock,
        offer_ttl_s=settings.resume_offer_hours * 3600,
        kept_elsewhere=SkillService.resumable,
        approvals=approvals,
    )
    # Offered once Discord is ready (the client's offer loop takes them).
    resume.found(interrupted)
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
        skill_scheduler=skills_scheduler,
        skill_service=skill_service,
        guild_settings=guild_settings,
        threads=threads,
        lanes=lanes,
        runner=runner,
        critic=critic,
        escalations=escalations,
        chat=chat,
        memory_store=memory_store,
        memory=memory,
        admin=admin,
        admin_log=admin_log,
        audit_service=audit_service,
        budget_service=budget_service,
        alerts=alerts,
        budget_alerts=budget_alerts,
        mcp=mcp,
        checkpoints=checkpoints,
        resume=resume,
        approvals=approvals,
        approval_store=approval_store,
    )
    app._closers.extend(closers)
    if instance is not None:
        try:
            await _register(app, instance)
        except BaseException:
            await app.close()
            raise
    app._warming, app._warm_tiers = warming, warm_tiers
    return app


async def _register(app: App, kind: Kind) -> None:
    """Register the process (see :func:`build_app`) and start its heartbeat."""
    from adapters.services.instances import Identity, Membership
    from adapters.services.leadership import TOPIC as SCHEDULER_TOPIC
    from adapters.services.leadership import Leadership
    from adapters.storage.instances import SqlInstances
    from adapters.storage.recovery import recover

    settings, db, scheduler = app.settings, app.db, app.skill_scheduler
    identity = Identity.new(kind)
    # Why before anything runs: every run, reservation and slot from now on is this one's.
    app.audit.owner = app.budget.owner = app.schedules.owner = identity.id
    app.approvals.owner = identity.id
    app.instances = SqlInstances(db.sessions)

    async def sweep() -> int:
        # Only what instances reaped as dead owned (never rows with no owner: a start
        # settles those, under the lock).
        report = await recover(db.sessions, app.budget, unowned=False)
        # The dead process's chat runs are offered to their members by this one (the
        # client's offer loop posts them; a heartbeat never waits on Discord).
        app.resume.found(report.interrupted_runs)
        return len(report.interrupted_runs)

    runner = app.runner
    membership = Membership(
        app.instances,
        identity,
        ttl_s=settings.lease_ttl_s,
        runs=lambda: runner.in_flight,
        recover=sweep if kind == "bot" else None,
        sole=db.is_sqlite,
        shard_count=settings.shard_count,
        shard_ids=settings.shard_ids,
        claim_shards=kind == "bot" and not db.is_sqlite,
    )
    # Why at 1: closed after the audit's last flush (its runs' rows say how they
    # ended) and before the database; the notifier after the membership (which says
    # goodbye through it).
    if not db.is_sqlite:
        from adapters.storage.notify import PgNotifier

        notifier = PgNotifier(db.url, sender=identity.id)
        await notifier.start()
        app._closers.insert(1, notifier.close)
        app.notifier = notifier
        membership.publish = notifier.publish
        notifier.subscribe("shards", lambda _key: membership.wake())

        async def settings_changed(key: str) -> None:
            await notifier.publish("guild_settings", key)

        app.guild_settings.publish = settings_changed
        notifier.subscribe("guild_settings", app.guild_settings.invalidate)

        async def personas_changed(key: str) -> None:
            await notifier.publish("personas", key)

        app.personas.publish = personas_changed
        notifier.subscribe("personas", app.personas.invalidate)

        async def threads_changed(key: str) -> None:
            await notifier.publish("threads", key)

        app.threads.publish = threads_changed
        notifier.subscribe("threads", app.threads.invalidate)

        # A press recorded here for a run waiting in another process: it is told at once
        # (and reads the row at its next check were the notice lost).
        async def approval_decided(key: str) -> None:
            await notifier.publish("approvals", key)

        app.approvals.publish = approval_decided
        notifier.subscribe("approvals", app.approvals.changed)
        if kind == "bot" and scheduler is not None:

            async def schedule_changed(key: str) -> None:
                await notifier.publish("schedules", key)

            scheduler.publish = schedule_changed
            notifier.subscribe("schedules", scheduler.changed)
            notifier.subscribe(SCHEDULER_TOPIC, lambda _key: membership.wake())
    if kind == "bot" and scheduler is not None:
        membership.leadership = Leadership(
            app.instances,
            identity.id,
            ttl_s=settings.lease_ttl_s,
            led=scheduler,
            always=db.is_sqlite,
            before_gain=membership.reap,
            publish=membership.publish,
        )
    await membership.register()
    app._closers.insert(2 if app.notifier is not None else 1, membership.close)
    app.membership = membership
    membership.start()
    log.info("registered as %s", identity)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark the warming's outcome seen when nobody awaits it (an app closed early)."""
    if not future.cancelled():
        future.exception()


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
