"""Skills as members use them: run one now, schedule it, preview what it will cost,
and fire a scheduled slot. Host-neutral (no discord, no SQL): the stores and the
scheduler come in typed, and the host reaches Discord through :class:`SkillHost`.

Every run of a skill goes through the chat flow's ``post_as`` ("post as persona P in
channel C"), so it streams like chat, waits in its owner's lane, is audited with the
skill's name and version, and is charged to its owner. A scheduled run is watched by
the critic like every run (with the skill's bounds).

A scheduled slot's first attempt keeps a checkpoint after each step (the bot keeps
those :meth:`SkillService.resumable` accepts). When a restart interrupts it and the
scheduler gives the slot its one retry, :meth:`SkillService.fire` takes that
checkpoint (once: :class:`SlotCheckpoints`) and resumes the run from its last
completed step as a new run linked to it (``resumed_from``), instead of running the
skill again from the start: the results of the calls that finished are reused, an
unfinished call to a read-only or idempotent tool runs again, and any other unfinished
call (one that needs approval, ``run_skill``, an MCP tool not marked idempotent) is
asked again, as any scheduled call that needs approval is: buttons in the schedule's
channel that only its owner may press, no answer in time counting as deny. A call not
run again is named on the slot's row. With no checkpoint (the run never reached the
model) the retry runs from the start, as before.

The rules about a member's skills live here, not in a cog: who may change a skill
(its owner or an admin: :meth:`SkillService.check_may_change`), who may remove a
schedule (the member who made it, or an admin naming it:
:meth:`SkillService.unschedule`), and what deleting a skill takes with it (its
versions and schedules, and their jobs: :meth:`SkillService.delete`). They take the
skill and the caller as objects, already found.
"""

from __future__ import annotations

import logging
import statistics
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol

from adapters.services.chat import ChatOutcome, ChatService, ChatSurface
from executor.agent import Caller, Invocation, RunnableAgent, RunResult
from executor.budget import format_usd
from executor.errors import CoterieError
from executor.messages import Message, ToolResultPart
from executor.ports import Checkpoint, Clock, RealClock
from executor.tokens import estimate_tokens
from executor.tools.registry import ToolContext
from skills.errors import (
    InvalidTime,
    OverBudget,
    ScheduleError,
    ScheduleNotFound,
    SkillPermissionDenied,
    TooManySchedules,
)
from skills.model import parse_arguments, render_prompt
from skills.slots import ScheduleInfo, SlotOutcome, SlotRun

if TYPE_CHECKING:
    from executor.budget import BudgetStatus
    from executor.run import Executor
    from executor.tools.registry import Tool
    from personas.model import Persona
    from skills.model import SkillDeleted, SkillInfo, SkillVersionInfo
    from skills.scheduler import SkillScheduler
    from skills.schedules import ScheduleStore
    from skills.store import SkillStore

__all__ = [
    "CostPreview",
    "HostUnavailable",
    "PastRun",
    "RunHistory",
    "ScheduleRequest",
    "SkillHost",
    "SkillRun",
    "SkillService",
    "SlotCheckpoints",
]

log = logging.getLogger(__name__)

# How the run loop words a call it did not make: denied when asked, or refused.
_NOT_RUN = ("denied:", "refused:")
# How a skill without history is estimated: per step, the prompt plus this much
# context in, this much out (a typical tool step), for the skill's step bound.
_CONTEXT_TOKENS = 1_500
_OUTPUT_TOKENS = 800
_DEFAULT_STEPS = 4


class HostUnavailable(CoterieError):
    """The place a scheduled skill posts to, or its owner, is gone: the slot fails
    with this reason (written for the owner), never a traceback."""


class SkillHost(Protocol):
    """What the skill service needs of the chat host (the Discord edge implements it)."""

    async def member(self, guild_id: str, user_id: str) -> Caller | None:
        """The owner as a caller in the guild (their privilege now), or None if they left."""
        ...

    async def channel_surface(
        self, guild_id: str, channel_id: str, requester: Caller, *, footer: str | None = None
    ) -> ChatSurface:
        """A surface that posts in the channel, its answers ending with ``footer`` (a
        scheduled post says which skill made it); raises :class:`HostUnavailable` when
        the channel is gone or the bot may not post there."""
        ...

    async def failing(self, schedule: ScheduleInfo, failures: int, error: str) -> None:
        """Tell the owner their schedule keeps failing."""
        ...

    async def disabled(self, schedule: ScheduleInfo, reason: str) -> None:
        """Tell the owner and the guild's admins the schedule was turned off."""
        ...


class SlotCheckpoints(Protocol):
    """What a slot's retry needs of the checkpoints' store (``SqlCheckpoints``)."""

    async def take(self, run_id: str, *, resumed_as: str, now: datetime) -> Checkpoint | None:
        """The interrupted run's checkpoint, for the one run that resumes it
        (``resumed_as``); None when there is none, or it was taken already."""
        ...


class BudgetView(Protocol):
    async def status(self, user_id: str) -> BudgetStatus: ...


@dataclass(frozen=True, slots=True)
class PastRun:
    run_id: str
    status: str
    cost_micros: int
    started_at: datetime | None = None


class RunHistory(Protocol):
    async def __call__(self, guild_id: str, skill: str, limit: int) -> list[PastRun]:
        """The skill's last runs in the guild, newest first (from the audit)."""
        ...


class Estimator(Protocol):
    def estimate_micros(self, tier: str, input_tokens: int, output_tokens: int) -> int: ...


@dataclass(frozen=True, slots=True)
class SkillRun:
    skill: SkillInfo
    version: SkillVersionInfo
    outcome: ChatOutcome


@dataclass(frozen=True, slots=True)
class CostPreview:
    per_run_micros: int
    basis: Literal["history", "estimate"]
    runs_per_week: float
    weekly_micros: int
    budget_micros: int  # the owner's 7-day limit

    @property
    def share(self) -> float:
        return self.weekly_micros / self.budget_micros if self.budget_micros > 0 else float("inf")

    @property
    def verdict(self) -> Literal["ok", "confirm", "refuse"]:
        if self.share > 1.0:
            return "refuse"
        return "confirm" if self.share > 0.5 else "ok"


@dataclass(frozen=True, slots=True)
class ScheduleRequest:
    guild_id: str
    name: str
    channel_id: str
    owner: Caller
    cron: str | None = None
    at: str | None = None
    arguments: str | None = None
    timezone: str = "UTC"
    missed: Literal["skip", "catch-up"] = "skip"


class SkillService:
    def __init__(
        self,
        *,
        skills: SkillStore,
        schedules: ScheduleStore,
        scheduler: SkillScheduler | None,
        chat: ChatService,
        executor: Executor,
        budget: BudgetView,
        history: RunHistory,
        estimator: Estimator,
        default_tier: str = "standard",
        min_interval_s: int = 300,
        schedules_per_member: int = 10,
        clock: Clock | None = None,
    ) -> None:
        self.skills = skills
        self.schedules = schedules
        self.scheduler = scheduler
        self.chat = chat
        self.executor = executor
        self.budget = budget
        self.history = history
        self.estimator = estimator
        self.default_tier = default_tier
        self.min_interval_s = min_interval_s
        self.schedules_per_member = schedules_per_member
        self.clock: Clock = clock or RealClock()
        self.host: SkillHost | None = None  # attached by the Discord client at start
        # Where a slot's retry finds the interrupted run's checkpoint (None: it runs
        # the slot from the start).
        self.checkpoints: SlotCheckpoints | None = None

    @staticmethod
    def resumable(checkpoint: Checkpoint) -> bool:
        """Whether a run's checkpoint is kept for its slot's retry: a scheduled slot's
        first attempt (not a retry, not a run another run started, not a resumed run:
        a slot is resumed once)."""
        return (
            checkpoint.trigger == "schedule"
            and checkpoint.skill is not None
            and checkpoint.parent_run_id is None
            and checkpoint.resumed_from is None
            and "schedule_id" in checkpoint.metadata
            and "attempt" not in checkpoint.metadata
        )

    # --- running ---------------------------------------------------------------------

    async def run(
        self,
        guild_id: str,
        name: str,
        *,
        caller: Caller,
        surface: ChatSurface,
        arguments: dict[str, str] | str | None = None,
        trigger: str = "skill",
        metadata: dict[str, object] | None = None,
        announce: Callable[[SkillInfo, SkillVersionInfo], Awaitable[None]] | None = None,
        loaded: tuple[SkillInfo, SkillVersionInfo] | None = None,
        run_id: str | None = None,
    ) -> SkillRun:
        """Run the skill's current version as its persona through ``surface``.

        ``announce(skill, version)`` is awaited once the run is ready (arguments and
        persona checked), before anything is posted (the cog says which version runs).
        ``loaded``: the skill and version, already read (a scheduled slot);
        ``run_id``: the run's id, chosen by the caller (a scheduled slot's claim).
        """
        ready = await self._prepare(guild_id, name, arguments, caller, loaded=loaded)
        skill, version, persona, agent, prompt = ready
        if announce is not None:
            await announce(skill, version)
        outcome = await self.chat.post_as(
            persona=persona,
            caller=caller,
            prompt=prompt,
            surface=surface,
            trigger=trigger,
            agent=agent,
            metadata={
                **(metadata or {}),
                "skill": skill.name,
                "skill_version": version.version,
            },
            run_id=run_id,
        )
        return SkillRun(skill=skill, version=version, outcome=outcome)

    async def _prepare(
        self,
        guild_id: str,
        name: str,
        arguments: dict[str, str] | str | None,
        caller: Caller,
        *,
        loaded: tuple[SkillInfo, SkillVersionInfo] | None = None,
    ) -> tuple[SkillInfo, SkillVersionInfo, Persona, RunnableAgent, str]:
        """The skill's current version, its prompt with ``arguments`` filled in, its
        persona and the agent to run, with tools capped at ``caller``'s rights. Each is
        read once (``loaded``: the skill and version read already).

        Raises ``SkillNotFound``, ``ArgumentError`` or ``PersonaNotFound``."""
        from skills.runnable import to_runnable

        skill, version = loaded or await self.skills.current(guild_id, name)
        args = arguments if isinstance(arguments, dict) else parse_arguments(arguments)
        prompt = render_prompt(version.spec.prompt, args)
        persona = await self.chat.persona_for(guild_id, version.spec.persona)
        agent = to_runnable(skill, version, persona, owner=caller, tools=self.skills.tools)
        return skill, version, persona, agent, prompt

    async def fire(
        self, schedule: ScheduleInfo, slot_at: datetime, run: SlotRun | None = None
    ) -> SlotOutcome:
        """A scheduled slot: the owner as caller, the schedule's channel as the place.

        ``run``: the attempt (its run id, from the slot's claim). A retry after a
        restart resumes the interrupted run from its checkpoint when it has one (see
        the module), else runs from the start."""
        run = run or SlotRun(uuid.uuid4().hex)
        host = self.host
        resume: Checkpoint | None = None
        try:
            # Why first: the checkpoint is the retry's alone, whatever happens next.
            resume = await self._take(schedule, run)
            if host is None:
                raise HostUnavailable("coterie is not connected to Discord")
            owner = await host.member(schedule.guild_id, schedule.created_by)
            if owner is None:
                raise HostUnavailable("its owner has left the server")
            loaded = await self.skills.current_by_id(schedule.skill_id)
            if loaded is None:
                raise HostUnavailable("its skill no longer exists")
            skill = loaded[0]
            surface = await host.channel_surface(
                schedule.guild_id,
                schedule.channel_id,
                owner,
                footer=f"skill **{skill.name}** · schedule #{schedule.id}",
            )
            if resume is not None:
                result = await self._resume(schedule, resume, run, owner, loaded, surface)
            else:
                retry = (
                    {
                        "attempt": run.attempt,
                        **({"retry_of": run.interrupted} if run.interrupted else {}),
                    }
                    if run.attempt > 1
                    else {}
                )
                done = await self.run(
                    schedule.guild_id,
                    skill.name,
                    caller=owner,
                    surface=surface,
                    arguments=dict(schedule.arguments),
                    trigger="schedule",
                    metadata={
                        "schedule_id": schedule.id,
                        "slot_at": slot_at.isoformat(),
                        **retry,
                    },
                    loaded=loaded,
                    run_id=run.run_id,
                )
                result = done.outcome.result
        except CoterieError as exc:
            # Written for the person (a deleted persona, a gone channel, a missing
            # argument): the reason goes to the slot and, repeated, to the owner.
            log.info("schedule %s slot %s failed: %s", schedule.id, slot_at, exc)
            return SlotOutcome(status="failed", error=str(exc)[:300])
        outcome = _slot_outcome(result)
        if resume is None:
            return outcome
        return replace(
            outcome, resumed_from=resume.run_id, note=self._not_run_again(resume, result)
        )

    async def _take(self, schedule: ScheduleInfo, run: SlotRun) -> Checkpoint | None:
        """The interrupted run's checkpoint, when this is a retry with one worth
        resuming (it took at least one step); taken either way, so never again."""
        if run.interrupted is None or self.checkpoints is None:
            return None
        checkpoint = await self.checkpoints.take(
            run.interrupted, resumed_as=run.run_id, now=self.clock.now()
        )
        if checkpoint is None or checkpoint.metadata.get("schedule_id") != schedule.id:
            return None
        if checkpoint.step < 1:
            return None  # it never had an answer from the model: start over
        return checkpoint

    async def _resume(
        self,
        schedule: ScheduleInfo,
        checkpoint: Checkpoint,
        run: SlotRun,
        owner: Caller,
        loaded: tuple[SkillInfo, SkillVersionInfo],
        surface: ChatSurface,
    ) -> RunResult:
        """Continue the interrupted run as the skill's version it ran (the current one
        when that is gone), for the owner as they are now."""
        from skills.errors import SkillError
        from skills.runnable import to_runnable

        skill, version = loaded
        ran = checkpoint.metadata.get("skill_version")
        if isinstance(ran, int) and ran != version.version:
            try:
                version = await self.skills.version(skill, ran)
            except SkillError:
                log.info(
                    "skill %s version %s is gone; resuming as its current one", skill.name, ran
                )
        persona = await self.chat.persona_for(schedule.guild_id, version.spec.persona)
        agent = to_runnable(skill, version, persona, owner=owner, tools=self.skills.tools)
        log.info(
            "schedule %s: resuming run %s from step %d as run %s",
            schedule.id,
            checkpoint.run_id,
            checkpoint.step,
            run.run_id,
        )
        return await self.chat.resume(
            checkpoint,
            agent=agent,
            persona=persona,
            caller=owner,
            surface=surface,
            run_id=run.run_id,
        )

    def _not_run_again(self, checkpoint: Checkpoint, result: RunResult) -> str | None:
        """The calls the interrupted run had started that may have run and did not run
        again (not repeatable, and not approved when asked), for the slot's row."""
        done = {r.tool_call_id for r in checkpoint.done}
        results = {
            part.tool_call_id: part
            for message in result.messages
            for part in message.parts
            if isinstance(part, ToolResultPart)
        }
        names: list[str] = []
        for call in checkpoint.pending:
            if call.id in done:
                continue
            tool = self.executor.tools.get(call.name)
            if tool is not None and tool.repeatable:
                continue
            part = results.get(call.id)
            # Why by the prefix: a call approved again that then failed did run again.
            if part is None or (part.is_error and part.content.startswith(_NOT_RUN)):
                names.append(call.name)
        if not names:
            return None
        return f"not run again, as it may have run before the restart: {', '.join(names)}"

    # --- schedules -------------------------------------------------------------------

    async def preview(
        self, skill: SkillInfo, version: SkillVersionInfo, runs_per_week: float, owner: str
    ) -> CostPreview:
        recent = [
            r.cost_micros
            for r in await self.history(skill.guild_id, skill.name, 20)
            if r.status == "ok"
        ][:10]
        if recent:
            per_run = int(statistics.median(recent))
            basis: Literal["history", "estimate"] = "history"
        else:
            spec = version.spec
            steps = spec.max_steps or _DEFAULT_STEPS
            tokens_in = estimate_tokens([Message.user(spec.prompt)]) + _CONTEXT_TOKENS
            per_run = steps * self.estimator.estimate_micros(
                spec.tier or self.default_tier, tokens_in, _OUTPUT_TOKENS
            )
            basis = "estimate"
        status = await self.budget.status(owner)
        return CostPreview(
            per_run_micros=per_run,
            basis=basis,
            runs_per_week=runs_per_week,
            weekly_micros=int(per_run * runs_per_week),
            budget_micros=status.limit_micros,
        )

    async def plan(
        self, request: ScheduleRequest
    ) -> tuple[SkillInfo, SkillVersionInfo, CostPreview]:
        """Check a schedule request without saving anything: the skill, its arguments,
        the time (cron or at), the member's cap, and what it will cost."""
        from skills import scheduling

        if (request.cron is None) == (request.at is None):
            raise ScheduleError("give exactly one of cron: (repeating) or at: (once)")
        tz = scheduling.zone(request.timezone)
        skill = await self.skills.get(request.guild_id, request.name)
        version = await self.skills.version(skill)
        render_prompt(version.spec.prompt, parse_arguments(request.arguments))
        now = self.clock.now()
        if request.cron is not None:
            scheduling.check_interval(request.cron, tz, now, self.min_interval_s)
            per_week = scheduling.runs_per_week(request.cron, tz, now)
        else:
            assert request.at is not None
            when = scheduling.parse_at(request.at, tz, now)
            if when <= now:
                raise InvalidTime("that time is in the past")
            per_week = 1.0
        mine = await self.schedules.count_for_member(request.owner.user_id)
        if mine >= self.schedules_per_member:
            raise TooManySchedules(
                f"you already have {mine} schedules, the most a member may have; "
                "remove one with /skill unschedule"
            )
        preview = await self.preview(skill, version, per_week, request.owner.user_id)
        if preview.verdict == "refuse":
            raise OverBudget(
                f"at about {format_usd(preview.per_run_micros)} a run, {preview.runs_per_week:g} "
                f"runs a week would cost {format_usd(preview.weekly_micros, 2)}, more than your "
                f"7-day budget of {format_usd(preview.budget_micros, 2)}; run it less often, or ask "
                "an admin for a bigger budget"
            )
        return skill, version, preview

    async def create_schedule(
        self, request: ScheduleRequest, skill: SkillInfo
    ) -> tuple[ScheduleInfo, datetime | None]:
        """Save the schedule and give it its job, in one step: a job that cannot be
        made takes its row with it."""
        from skills import scheduling

        tz = scheduling.zone(request.timezone)
        run_at = (
            scheduling.parse_at(request.at, tz, self.clock.now())
            if request.at is not None
            else None
        )
        info = await self.schedules.create(
            skill_id=skill.id,
            guild_id=request.guild_id,
            channel_id=request.channel_id,
            created_by=request.owner.user_id,
            cron=request.cron,
            run_at=run_at,
            timezone=request.timezone,
            arguments=parse_arguments(request.arguments),
            missed=request.missed,
            max_per_member=self.schedules_per_member,  # checked in the insert's transaction
        )
        if self.scheduler is None:
            return info, None
        try:
            next_run = await self.scheduler.add(info)
        except BaseException:
            await self.schedules.delete(info.id)
            raise
        return info, next_run

    async def recent_runs(self, guild_id: str, skill: str, limit: int = 5) -> list[PastRun]:
        return await self.history(guild_id, skill, limit)

    # --- who may change what -------------------------------------------------------------

    def check_may_change(self, skill: SkillInfo, by: Caller, action: str = "edit") -> None:
        """Its owner or an admin may edit, roll back or delete a skill; anyone else gets
        :class:`SkillPermissionDenied` (written for them)."""
        if not self.skills.may_change(skill, by):
            raise SkillPermissionDenied(skill.name, action)

    async def delete(self, skill: SkillInfo, by: Caller) -> SkillDeleted:
        """Delete ``skill`` with its versions and schedules (owner or admin), and drop
        the schedules' jobs."""
        self.check_may_change(skill, by, "delete")
        schedules = await self.schedules.for_skill(skill.id)
        deleted = await self.skills.delete(skill.guild_id, skill.name, by=by)
        await self._drop_jobs([s.id for s in schedules])
        return deleted

    async def unschedule(
        self, skill: SkillInfo, by: Caller, schedule_id: int | None = None
    ) -> list[ScheduleInfo]:
        """Remove a schedule of ``skill``: the one numbered ``schedule_id`` if ``by``
        made it or is an admin; without a number, every one ``by`` made (an admin's
        too: theirs only, never other members' by default). Returns what went;
        :class:`ScheduleNotFound` when nothing ``by`` may remove matches."""
        admin = self.skills.is_admin(by)
        chosen = [
            s
            for s in await self.schedules.for_skill(skill.id)
            if (s.id == schedule_id and (admin or s.created_by == by.user_id))
            or (schedule_id is None and s.created_by == by.user_id)
        ]
        if not chosen:
            raise ScheduleNotFound(
                f"#{schedule_id} of {skill.name}" if schedule_id else f"of yours on {skill.name}"
            )
        for s in chosen:
            await self.schedules.delete(s.id)
        await self._drop_jobs([s.id for s in chosen])
        return chosen

    async def _drop_jobs(self, schedule_ids: list[int]) -> None:
        """Drop the scheduler's jobs of schedules whose rows are gone."""
        if self.scheduler is not None:
            for schedule_id in schedule_ids:
                await self.scheduler.remove(schedule_id)

    # --- ScheduleEvents: told to the owner and the admins through the host ---------------

    async def failing(self, schedule: ScheduleInfo, failures: int, error: str) -> None:
        if self.host is not None:
            await self.host.failing(schedule, failures, error)

    async def disabled(self, schedule: ScheduleInfo, reason: str) -> None:
        if self.host is not None:
            await self.host.disabled(schedule, reason)

    # --- the run_skill tool ------------------------------------------------------------

    def run_skill_tool(self, *, timeout_s: float = 900.0) -> Tool:
        """``run_skill``: a persona runs one of the server's skills and reads its answer.

        The skill runs as a child of the calling run (one level deeper, so the
        dispatch guard bounds a skill that runs a skill), in the calling run's lane
        slot, charged to the same member; its tools are capped at that member's rights.
        """
        from executor.errors import ToolFailed, ToolRetry
        from executor.guard import child_invocation
        from executor.tools.registry import tool
        from personas.errors import PersonaError
        from skills.errors import ArgumentError, SkillError

        service = self

        async def run_skill(ctx: ToolContext, name: str, args: str = "") -> str:
            """Run one of this server's saved skills and return its answer.

            Args:
                name: the skill's name, as in /skill list
                args: its arguments, as key=value; key2=value2
            """
            caller = ctx.caller
            try:
                skill, version, _persona, agent, prompt = await service._prepare(
                    caller.guild_id or "", name, args, caller
                )
            except ArgumentError as exc:
                raise ToolRetry(str(exc)) from exc
            except (SkillError, PersonaError) as exc:
                raise ToolFailed(str(exc)) from exc
            parent = ctx.invocation or Invocation(messages=[], caller=caller)
            child = child_invocation(
                parent, [Message.user(prompt)], parent_agent=ctx.agent, parent_run_id=ctx.run_id
            )
            child.metadata = {
                **child.metadata,
                "skill": skill.name,
                "skill_version": version.version,
            }
            result = await service.executor.run(agent, child)
            if not result.ok:
                raise ToolFailed(
                    f"the skill {skill.name} ended {result.status.value}: "
                    f"{result.note or result.error or 'no answer'}"
                )
            return result.output or "(the skill gave no answer)"

        return tool(run_skill, timeout_s=timeout_s, status="running a skill")


def _slot_outcome(result: RunResult) -> SlotOutcome:
    """What a slot's run came to, for the slot's row."""
    if result.error_kind == "shutdown":
        # Cut (or refused in line) by this process's drain: the slot stays running for
        # the next start (or the leader) to retry, from the run's last step.
        return SlotOutcome(status="interrupted", run_id=result.run_id)
    report = result.delivery
    if result.ok and report is not None and not report.delivered:
        # The run is ok (and charged) but its answer never reached the channel: the
        # slot fails with that reason, as the audit row says (delivered: no).
        why = f" ({report.error})" if report.error else ""
        return SlotOutcome(
            status="failed",
            run_id=result.run_id,
            error=f"the answer could not be posted in the channel{why}"[:300],
        )
    if result.ok:
        return SlotOutcome(status="ok", run_id=result.run_id)
    return SlotOutcome(
        status="failed",
        run_id=result.run_id,
        error=(result.note or result.error or result.status.value)[:300],
    )
