"""``SkillScheduler``: APScheduler 3's asyncio scheduler over the schedules table.

The table is the source of truth. Jobs live in APScheduler's memory job store and are
rebuilt from :meth:`ScheduleStore.enabled` at :meth:`SkillScheduler.start`; a change
through a command changes both: the caller writes the row, then calls :meth:`add`
(and deletes the row again when ``add`` raises) or :meth:`remove`.

One slot, one run, at most:

* **Slot identity** is the time APScheduler scheduled the run for, minus the
  schedule's stagger, in UTC. APScheduler hands that time to our executor
  (:class:`_SlotExecutor`), so nothing is recomputed from "now" and a run that starts
  late, or in the hour DST repeats, still names the slot it was scheduled for.
* The slot is claimed (a ``running`` row, unique per schedule and slot) **before**
  ``fire`` is called. A claimed slot is never fired again by a claim: it already has a
  row.
* The claim carries the id its run will have (``SlotRun.run_id``), so a restart
  that interrupts the run leaves on the slot's row which run it was.
* A slot a restart interrupted (the process died while it ran, or after the claim and
  before the model was reached, or its drain cut the run: ``SlotOutcome`` status
  ``interrupted``, the row left as it was) is found ``running`` at start (on
  PostgreSQL, by the leader, once the process is gone). With ``catch-up`` and
  within ``grace_s`` of the slot, when no later slot of the schedule is due, it gets
  **one retry**: :meth:`ScheduleStore.retry_slot` moves it from attempt 1 to 2 in one
  conditional ``UPDATE``, which one process alone can pass, and the slot says it was
  run again. ``fire`` is handed the interrupted run's id (``SlotRun.interrupted``) and
  resumes it from its last checkpoint when it has one (``SlotOutcome.resumed_from``:
  the slot then says so), else runs the slot from the start. Otherwise (``skip``, too
  old, a later slot due, or its retry interrupted too) it is closed as failed with the
  reason, and :attr:`SkillScheduler.forget_runs` is handed the runs of the slots closed
  so (what was kept to resume them goes). A slot runs at most twice, never at once.
  Unless its run had finished: a crash between posting the answer and closing the slot
  leaves it ``running`` with a run that is ``ok`` and delivered in the audit
  (:attr:`SkillScheduler.answered_runs`); such a slot is closed ``ok`` (its reason says
  so), never run again, whatever its policy.
* A schedule never overlaps itself: APScheduler's ``max_instances=1`` refuses a
  second instance (we record that slot as skipped from ``EVENT_JOB_MAX_INSTANCES``,
  which APScheduler would otherwise only log), and :meth:`fire_due` checks again for
  the paths APScheduler does not see (catch-up at start, another process).

Several processes on one database (PostgreSQL): only the one that leads the scheduler
(:class:`adapters.services.leadership.Leadership`, a renewed lease) runs it. It calls
:meth:`SkillScheduler.start` when it gains the lead (the table is loaded again, and
the slots a dead leader left ``running`` are settled as above: only slots whose owner
is gone, :meth:`ScheduleStore.stranded_slots`) and :meth:`SkillScheduler.standby` when
it loses it (no new slot fires; those in progress finish). A schedule saved or removed
on another process reaches the leader as :meth:`SkillScheduler.refresh`; slots a
process that died later left running are settled by :meth:`settle_stranded`. Two
leaders at once (a stalled one that has not noticed yet) cannot run a slot twice: the
claim decides. On SQLite, or with no registration, the process always leads.

Missed slots at start: for each enabled schedule, the latest slot due between its last
recorded slot (or its creation) and now is fired once when the schedule says
``catch-up`` and the slot is at most ``grace_s`` old; otherwise it is recorded as
skipped ("missed while coterie was down"). Only the latest missed slot (and, after a
catch-up, the one before it) gets a row: a minutely schedule down for a week writes
one row, not ten thousand.

After ``warn_after`` consecutive failures :meth:`ScheduleEvents.failing` is told once;
after ``disable_after`` the schedule is disabled in the table, its job removed, and
:meth:`ScheduleEvents.disabled` told. A one-shot is disabled once it has fired, or was
skipped (the reason says which).

Every slot settled is one log line with its fields (``schedule_id``, ``skill``,
``slot_at``, ``outcome``: ok, failed, skipped or duplicate; ``attempt``, ``run_id``,
``resumed_from``, ``reason`` when there are), which coterie's log format writes as
``key=value``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.executors.base import BaseExecutor
from apscheduler.job import Job
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.date import DateTrigger

from executor.ports import Clock, RealClock
from skills import scheduling
from skills.errors import InvalidTime, ScheduleError, ScheduleNotFound
from skills.slots import (
    Fire,
    FireResult,
    ScheduleEvents,
    ScheduleInfo,
    SlotInfo,
    SlotOutcome,
    SlotRun,
)

if TYPE_CHECKING:
    from skills.schedules import ScheduleStore

__all__ = [
    "LATE_GRACE_S",
    "Fire",
    "FireResult",
    "ScheduleEvents",
    "SkillScheduler",
    "SlotOutcome",
    "SlotRun",
    "StartReport",
]

log = logging.getLogger(__name__)

#: How late a *skip* schedule's slot may start and still run (a busy event loop,
#: 100 schedules due in one minute, a short pause of the VM). Later than this, the
#: slot counts as missed and the skip policy applies. A catch-up schedule may start as
#: late as ``grace_s``, as it would at start-up.
LATE_GRACE_S = 600.0

#: A slot a restart interrupted runs at most this many times (the first, one retry).
MAX_ATTEMPTS = 2

OVERLAP = "the previous run was still going"
MISSED = "missed while coterie was down"
INTERRUPTED = "interrupted by a restart"
INTERRUPTED_AGAIN = "interrupted by a restart again, after its one retry"
RETRIED = "run again: a restart interrupted its first attempt"
# The slot's retry resumed the interrupted run from its last checkpoint (its id).
RESUMED = "resumed from its last step: a restart interrupted run {run_id}"
DONE = "a one-shot: it has run"
ONE_SHOT_SKIPPED = "a one-shot: skipped, not run"
# A slot whose run this process's shutdown cut: left running for the next start.
LEFT_FOR_RESTART = "cut by a shutdown; the next start retries it from its last step"
ONE_SHOT_INTERRUPTED = "a one-shot: interrupted by a restart, not run again"
# A slot left running whose run had posted its answer (a crash before the slot's close).
ANSWERED = "its answer was posted before a restart; not run again"


@dataclass(frozen=True)
class StartReport:
    loaded: int  # jobs built from the table
    caught_up: int  # missed slots fired once now (catch-up within the grace)
    skipped: int  # missed slots recorded as skipped
    interrupted: int  # slots a crash left running, now failed
    disabled: int  # one-shots found done or missed, rows that cannot be scheduled
    retried: int = 0  # slots a crash left running, claimed for their one retry


@dataclass
class _Plan:
    """What building the jobs decided, written in one go (see ``SkillScheduler._plan``)."""

    skipped: list[tuple[ScheduleInfo, datetime, str]] = field(default_factory=list)
    catch_up: list[tuple[ScheduleInfo, datetime]] = field(default_factory=list)
    retry: list[tuple[ScheduleInfo, SlotInfo]] = field(default_factory=list)
    disable: list[tuple[int, str]] = field(default_factory=list)
    # The retries this process claimed (``_settle``): the slot and the attempt to fire.
    retried: list[tuple[ScheduleInfo, datetime, SlotRun]] = field(default_factory=list)


class _Staggered(BaseTrigger):  # type: ignore[misc]  # apscheduler ships no types
    """A cron trigger that fires ``seconds`` after each of its slots.

    Why not APScheduler's ``jitter``: it is random per fire, so a slot's fire time could
    not be turned back into the slot, and runs of one schedule would drift.
    """

    __slots__ = ("inner", "offset")

    def __init__(self, inner: BaseTrigger, seconds: int) -> None:
        self.inner = inner
        self.offset = timedelta(seconds=seconds)

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        # Why in UTC: aware arithmetic in a ZoneInfo adds to the wall clock, which is
        # wrong across a DST change; in UTC the shift is exactly `offset` seconds.
        previous = previous_fire_time.astimezone(UTC) - self.offset if previous_fire_time else None
        slot = self.inner.get_next_fire_time(previous, now.astimezone(UTC) - self.offset)
        return slot.astimezone(UTC) + self.offset if slot is not None else None

    def __str__(self) -> str:
        return f"{self.inner} +{int(self.offset.total_seconds())}s"


class _SlotExecutor(BaseExecutor):  # type: ignore[misc]  # apscheduler ships no types
    """Runs a due job as a task on the loop, handing it the time it was scheduled for.

    APScheduler's own ``AsyncIOExecutor`` calls the job with its arguments only (the
    scheduled time reaches listeners, not the job), and cancels running jobs on
    shutdown. This one passes the run time, leaves running slots alone on shutdown (the
    lifecycle drains runs), and does not apply ``misfire_grace_time`` itself:
    :meth:`SkillScheduler.due` does, against the injected clock, and records a late
    slot as skipped instead of dropping it with a log line.
    """

    def __init__(self, spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]) -> None:
        super().__init__()
        self._spawn = spawn

    def shutdown(self, wait: bool = True) -> None:
        pass  # Why: never cancel a slot in progress.

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        # coalesce=True: APScheduler already kept only the latest due time.
        task = self._spawn(job.func(*job.args, run_times[-1]))
        job_id = job.id
        task.add_done_callback(lambda _task: self._run_job_success(job_id, []))


class SkillScheduler:
    def __init__(
        self,
        store: ScheduleStore,
        fire: Fire,
        *,
        events: ScheduleEvents | None = None,
        clock: Clock | None = None,
        grace_s: float = 3600,
        warn_after: int = 2,
        disable_after: int = 5,
    ) -> None:
        if warn_after < 1 or disable_after < 1:
            raise ValueError("warn_after and disable_after are at least 1")
        self._store = store
        self._fire = fire
        self._events = events
        self._clock: Clock = clock or RealClock()
        self.grace_s = float(grace_s)
        self.warn_after = warn_after
        self.disable_after = disable_after
        self._aps: AsyncIOScheduler | None = None
        self._state: Literal["new", "running", "standby", "closed"] = "new"
        self._running: set[int] = set()  # schedules with a slot in progress here
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stagger: dict[int, timedelta] = {}
        self._skills: dict[int, str] = {}  # schedule id -> its skill's name, for the log
        self._epoch = 0  # moved on by standby() and shutdown(): a start under way stops
        # Tells the other processes a schedule changed (its id): the leader builds its
        # job. None: this process is alone (or not registered).
        self.publish: Callable[[str], Awaitable[None]] | None = None
        # Handed the runs of slots closed as interrupted (not retried): what the host
        # kept to resume them can go. None: nothing is kept.
        self.forget_runs: Callable[[Sequence[str]], Awaitable[object]] | None = None
        # Of the runs of slots a crash left running, those that finished ok with their
        # answer delivered (the audit's ``delivered``): such a slot is closed ok, not
        # retried. None: not known (every such slot is retried or closed as interrupted).
        self.answered_runs: Callable[[Sequence[str]], Awaitable[set[str]]] | None = None

    # --- lifecycle -----------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def apscheduler(self) -> AsyncIOScheduler | None:
        """The APScheduler underneath, for tests and ``coterie doctor``: read, do not add."""
        return self._aps

    async def start(self) -> StartReport:
        """Retry or close slots a crash left running, settle missed slots, build one job
        per enabled schedule, start APScheduler. Needs the running loop. Starts once, or
        again after :meth:`standby` (this process leads the scheduler again)."""
        if self._state not in ("new", "standby"):
            raise RuntimeError("a SkillScheduler starts once (or after standby); build a new one")
        loop = asyncio.get_running_loop()
        epoch = self._epoch
        now = self._clock.now()
        stranded = await self._stranded()
        schedules = await self._store.enabled()
        last = await self._store.last_slot_times()
        aps = AsyncIOScheduler(
            timezone=UTC,
            event_loop=loop,
            executors={"default": _SlotExecutor(self._spawn)},
        )
        aps.add_listener(self._on_max_instances, EVENT_JOB_MAX_INSTANCES)
        self._aps = aps

        plan = _Plan()
        for info in schedules:
            # The slots a crash left running; the latest may get its one retry below.
            self._plan(aps, info, stranded.get(info.id, []), last.get(info.id), now, plan)
        names = {info.id: info.skill for info in schedules}
        report = await self._settle(plan, stranded, names, now)
        if self._epoch != epoch:
            # Stopped (or put on standby) while it read the table: start nothing. What
            # was settled stays settled; the slots planned for now are not fired.
            self._aps = None
            return report
        aps.start()
        self._state = "running"
        await self._store.set_next_runs(self.jobs())
        self._launch(plan)
        report = dataclasses.replace(report, loaded=len(aps.get_jobs()))
        log.info(
            "scheduler started: %d jobs, %d caught up, %d skipped, %d interrupted, "
            "%d retried, %d disabled",
            report.loaded,
            report.caught_up,
            report.skipped,
            report.interrupted,
            report.retried,
            report.disabled,
        )
        return report

    async def _stranded(self) -> dict[int, list[SlotInfo]]:
        """Slots a dead process left running, by schedule; never one this process is
        running (a leader that led before, lost the lease and leads again), nor one
        whose run had delivered its answer (closed ok here: :meth:`_answered`)."""
        slots = [
            s for s in await self._store.stranded_slots() if s.schedule_id not in self._running
        ]
        done = await self._answered(slots)
        stranded: dict[int, list[SlotInfo]] = {}
        for slot in slots:
            if slot not in done:
                stranded.setdefault(slot.schedule_id, []).append(slot)
        return stranded

    async def _answered(self, slots: list[SlotInfo]) -> list[SlotInfo]:
        """Close ok the slots whose run finished and posted its answer before the crash
        (it came between the post and the slot's close): run again, the skill would post
        twice. The slots closed so."""
        run_ids = [s.run_id for s in slots if s.run_id]
        if not run_ids or self.answered_runs is None:
            return []
        try:
            answered = await self.answered_runs(run_ids)
        except Exception:
            # Why not raise: the slots are settled as before (retried or closed).
            log.warning("could not read whether stranded slots were answered", exc_info=True)
            return []
        done = [s for s in slots if s.run_id in answered]
        now = self._clock.now()
        for slot in done:
            await self._store.finish_slot(
                slot.schedule_id,
                slot.slot_at,
                "ok",
                run_id=slot.run_id,
                reason=ANSWERED,
                ended_at=now,
                attempt=slot.attempt,
            )
            info = await self._store.get(slot.schedule_id)
            skill = info.skill if info is not None else ""
            self._log_slot(
                slot.schedule_id,
                slot.slot_at,
                "ok",
                skill=skill,
                attempt=slot.attempt,
                run_id=slot.run_id,
                reason=ANSWERED,
            )
            if info is not None and info.one_shot and info.enabled:
                await self._store.disable(info.id, DONE)
                self._drop_job(info.id)
        await self._forget([s.run_id for s in done if s.run_id])
        return done

    def _plan(
        self,
        aps: AsyncIOScheduler | None,
        info: ScheduleInfo,
        stuck: list[SlotInfo],
        last_at: datetime | None,
        now: datetime,
        plan: _Plan,
    ) -> None:
        """What a schedule needs when jobs are built (start-up, a new leader, a schedule
        this leader learns of): its job (``aps``), its missed slot caught up or skipped,
        its stranded slot retried. Recorded in ``plan``; nothing is written here."""
        try:
            slots, job_trigger, stagger = self._triggers(info)
        except ScheduleError as exc:
            # A row that cannot be scheduled any more (say, a zone gone from tzdata).
            log.warning("schedule %s cannot be scheduled: %s", info.id, exc)
            plan.disable.append((info.id, f"cannot be scheduled: {exc}"))
            return
        since = last_at if last_at is not None else info.created_at
        if info.run_at is not None:
            if stuck:
                if self._retries(info, stuck[-1], now):
                    plan.retry.append((info, stuck[-1]))
                else:
                    plan.disable.append((info.id, ONE_SHOT_INTERRUPTED))
                return
            if last_at is not None:  # fired or skipped already: done
                skipped_last = info.last_status == "skipped"
                plan.disable.append((info.id, ONE_SHOT_SKIPPED if skipped_last else DONE))
                return
            if info.run_at <= now:
                if self._catches_up(info, info.run_at, now):
                    plan.catch_up.append((info, info.run_at))
                else:
                    plan.skipped.append((info, info.run_at, MISSED))
                    plan.disable.append((info.id, ONE_SHOT_SKIPPED))
                return
        else:
            # A slot is due once slot + stagger has passed.
            missed = scheduling.last_fires(slots, since, now - stagger, n=2)
            if missed:
                # A later slot is due: it is the one to catch up, not the stuck one.
                latest = missed[-1]
                if self._catches_up(info, latest, now):
                    plan.catch_up.append((info, latest))
                    missed = missed[:-1]
                if missed:
                    plan.skipped.append((info, missed[-1], MISSED))
            elif stuck and self._retries(info, stuck[-1], now):
                plan.retry.append((info, stuck[-1]))
        if aps is not None:
            self._add_job(aps, info, job_trigger, stagger)

    async def _settle(
        self,
        plan: _Plan,
        stranded: dict[int, list[SlotInfo]],
        names: dict[int, str],
        now: datetime,
    ) -> StartReport:
        """Write what :meth:`_plan` decided: skipped slots, retries claimed, stranded
        slots closed, schedules disabled. The retries this process claimed go to
        ``plan.retried``, each with the run it is to be and the run it follows."""
        recorded = await self._store.record_skipped_many(
            [(info.id, slot_at, reason) for info, slot_at, reason in plan.skipped], at=now
        )
        for info, slot_at, reason in plan.skipped:
            self._log_slot(info.id, slot_at, "skipped", skill=info.skill, reason=reason)
        retrying: set[tuple[int, datetime]] = set()
        for info, slot in plan.retry:
            run = SlotRun(uuid.uuid4().hex, attempt=slot.attempt + 1, interrupted=slot.run_id)
            if await self._store.retry_slot(
                slot, reason=RETRIED, started_at=now, run_id=run.run_id
            ):
                plan.retried.append((info, slot.slot_at, run))
                retrying.add((slot.schedule_id, slot.slot_at))
        closed = [
            (slot, INTERRUPTED_AGAIN if slot.attempt >= MAX_ATTEMPTS else INTERRUPTED)
            for slots_left in stranded.values()
            for slot in slots_left
            if (slot.schedule_id, slot.slot_at) not in retrying
        ]
        interrupted = await self._store.close_interrupted(closed, at=now)
        await self._forget([slot.run_id for slot, _reason in closed if slot.run_id])
        for slot, reason in closed:
            self._log_slot(
                slot.schedule_id,
                slot.slot_at,
                "failed",
                skill=names.get(slot.schedule_id, ""),
                attempt=slot.attempt,
                reason=reason,
            )
        for schedule_id, reason in plan.disable:
            await self._store.disable(schedule_id, reason)
            self._drop_job(schedule_id)
        return StartReport(
            loaded=0,
            caught_up=len(plan.catch_up),
            skipped=recorded,
            interrupted=interrupted,
            disabled=len(plan.disable),
            retried=len(plan.retried),
        )

    async def _forget(self, run_ids: list[str]) -> None:
        if not run_ids or self.forget_runs is None:
            return
        try:
            await self.forget_runs(run_ids)
        except Exception:
            # Why not raise: the slots are closed; what was kept to resume their runs
            # is pruned later anyway.
            log.warning("could not forget the interrupted runs %s", run_ids, exc_info=True)

    def _launch(self, plan: _Plan) -> None:
        """Fire the slots caught up and the retries claimed (after :meth:`_settle`)."""
        for info, slot_at in plan.catch_up:
            self._spawn(self._fire_slot(info, slot_at))
        for info, slot_at, run in plan.retried:
            self._spawn(self._fire_slot(info, slot_at, run=run))

    async def settle_stranded(self) -> StartReport:
        """While leading: retry or close the slots a process that died since left
        running (a survivor reaped it), as :meth:`start` does. A slot is retried when
        the start-up rule would: ``catch-up``, within the grace, its first attempt, and
        no later slot of its schedule recorded or due; else closed as interrupted."""
        if self._state != "running":
            return StartReport(0, 0, 0, 0, 0)
        stranded = await self._stranded()
        if not stranded:
            return StartReport(0, 0, 0, 0, 0)
        now = self._clock.now()
        last = await self._store.last_slot_times()
        plan = _Plan()
        names: dict[int, str] = {}
        for schedule_id, stuck in stranded.items():
            info = await self._store.get(schedule_id)
            if info is None or not info.enabled:
                continue  # closed below
            names[info.id] = info.skill
            slot = stuck[-1]
            latest = last.get(info.id) == slot.slot_at
            if (
                latest
                and self._retries(info, slot, now)
                and (info.run_at is not None or not self._later_due(info, slot.slot_at, now))
            ):
                plan.retry.append((info, slot))
                continue
            if info.one_shot:
                plan.disable.append((info.id, ONE_SHOT_INTERRUPTED))
        report = await self._settle(plan, stranded, names, now)
        self._launch(plan)
        if report.interrupted or report.retried:
            log.info(
                "stranded slots of a stopped instance: %d retried, %d closed",
                report.retried,
                report.interrupted,
            )
        return report

    def _later_due(self, info: ScheduleInfo, slot_at: datetime, now: datetime) -> bool:
        try:
            slots, _job, stagger = self._triggers(info)
        except ScheduleError:
            return True
        return bool(scheduling.last_fires(slots, slot_at, now - stagger, n=1))

    async def refresh(self, schedule_id: int | None = None) -> None:
        """While leading: another process saved or removed a schedule (``None``: maybe
        several; compare every enabled one with the jobs). A new one gets its job, and
        its missed slot is caught up or skipped as at start; a gone or disabled one
        loses its job. Not leading: nothing (:meth:`start` reads the table)."""
        if self._state != "running" or self._aps is None:
            return
        if schedule_id is not None:
            row = await self._store.get(schedule_id)
            rows = [row] if row is not None and row.enabled else []
            if not rows:
                self._drop_job(schedule_id)
        else:
            rows = await self._store.enabled()
            wanted = {info.id for info in rows}
            for sid in [sid for sid in self.jobs() if sid not in wanted]:
                self._drop_job(sid)
        fresh = [info for info in rows if self._aps.get_job(str(info.id)) is None]
        if not fresh or self._state != "running":
            return
        now = self._clock.now()
        last = await self._store.last_slot_times()
        plan = _Plan()
        for info in fresh:
            self._plan(self._aps, info, [], last.get(info.id), now, plan)
        await self._settle(plan, {}, {}, now)
        await self._store.set_next_runs({info.id: self.next_run(info.id) for info in fresh})
        self._launch(plan)

    def changed(self, key: str | None) -> None:
        """A notification from another process: schedule ``key`` (an id; None: maybe
        any) was saved or removed. Refreshes the jobs in the background (leader only)."""
        if self._state != "running":
            return
        schedule_id = int(key) if key is not None and key.isdigit() else None
        self._spawn(self.refresh(schedule_id))

    def standby(self) -> None:
        """Stop firing (another process leads the scheduler now): APScheduler stops and
        its jobs go; slots in progress finish. :meth:`start` loads the table again."""
        self._epoch += 1
        if self._state != "running" or self._aps is None:
            if self._state == "new":
                self._state = "standby"
            return
        self._state = "standby"
        try:
            self._aps.shutdown(wait=False)
        except RuntimeError:
            log.debug("scheduler standby after its loop closed", exc_info=True)
        log.info("scheduler on standby: another process leads it")

    def shutdown(self) -> None:
        """Stop APScheduler and take no new slot; slots in progress finish (the lifecycle
        drains their runs; :meth:`wait_idle` waits for their bookkeeping). Idempotent."""
        self._epoch += 1
        state, self._state = self._state, "closed"
        if state != "running" or self._aps is None:
            return
        try:
            self._aps.shutdown(wait=False)
        except RuntimeError:  # the loop is already closed: nothing left to stop
            log.debug("scheduler shutdown after its loop closed", exc_info=True)

    async def wait_idle(self) -> None:
        """Wait until no slot is in progress and no bookkeeping task is pending."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- jobs ------------------------------------------------------------------------

    def _triggers(self, info: ScheduleInfo) -> tuple[BaseTrigger, BaseTrigger, timedelta]:
        """(the slot trigger, the job's trigger, the stagger) for a schedule."""
        if info.cron is not None:
            slots: BaseTrigger = scheduling.parse_cron(info.cron, scheduling.zone(info.timezone))
            if info.stagger_s:
                return slots, _Staggered(slots, info.stagger_s), timedelta(seconds=info.stagger_s)
            return slots, slots, timedelta(0)
        if info.run_at is None:
            raise ScheduleError(f"schedule #{info.id} has neither cron nor a time")
        once = DateTrigger(run_date=info.run_at, timezone=UTC)
        return once, once, timedelta(0)

    def _add_job(
        self, aps: AsyncIOScheduler, info: ScheduleInfo, trigger: BaseTrigger, stagger: timedelta
    ) -> None:
        self._stagger[info.id] = stagger
        self._skills[info.id] = info.skill
        aps.add_job(
            self._on_job,
            trigger,
            args=(info.id,),
            id=str(info.id),
            name=f"schedule {info.id}",
            replace_existing=True,
            # Why None: APScheduler's default of 1 s silently drops a slot that starts
            # 30 s late. Our executor never drops one; `due` applies the grace
            # (LATE_GRACE_S, or grace_s for catch-up schedules) and records a late
            # slot as skipped.
            misfire_grace_time=None,
            # Why coalesce: a backlog (the loop blocked past several slots) runs once,
            # for the latest slot, not once per slot in a burst.
            coalesce=True,
            # Why 1: a schedule never overlaps itself; the refused slot is recorded as
            # skipped by `_on_max_instances`.
            max_instances=1,
        )

    async def add(self, info: ScheduleInfo) -> datetime | None:
        """Give a saved schedule its job; returns when it fires next (with its stagger).

        Reads the row again (the table is the truth). Raises :class:`ScheduleNotFound`
        when the row is gone or disabled, :class:`InvalidTime` for a one-shot whose
        time has passed, :class:`InvalidCron`/:class:`UnknownTimezone` for a row that
        cannot be scheduled; then no job exists and the caller deletes the row. Before
        :meth:`start` or after :meth:`shutdown` no job is made (``start`` loads the
        table), and the next run is computed from the clock.
        """
        row = await self._store.get(info.id)
        if row is None or not row.enabled:
            raise ScheduleNotFound(f"#{info.id}")
        _slots, trigger, stagger = self._triggers(row)
        now = self._clock.now()
        if row.run_at is not None and row.run_at <= now:
            raise InvalidTime(f"{row.run_at:%Y-%m-%d %H:%M} UTC has passed; give a later time")
        if self._aps is not None and self._state == "running":
            self._add_job(self._aps, row, trigger, stagger)
            at = self.next_run(row.id)
        else:
            nxt = trigger.get_next_fire_time(None, now)
            at = nxt.astimezone(UTC) if nxt is not None else None
        await self._store.set_next_run(row.id, at)
        await self._announce(row.id)
        return at

    async def _announce(self, schedule_id: int) -> None:
        """Tell the leader (when it is another process) that a schedule changed."""
        if self.publish is None:
            return
        try:
            await self.publish(str(schedule_id))
        except Exception:
            # Why not raise: the row is saved; the leader compares the table with its
            # jobs when its notifications reconnect, and a removed schedule's job finds
            # its row gone when it comes due.
            log.warning("could not tell the scheduler's leader about schedule %s", schedule_id,
                        exc_info=True)  # fmt: skip

    async def remove(self, schedule_id: int) -> bool:
        """Remove a schedule's job (after its row is deleted); False when there was none
        here (the leader, when another process, is told)."""
        dropped = self._drop_job(schedule_id)
        await self._announce(schedule_id)
        return dropped

    def _drop_job(self, schedule_id: int) -> bool:
        self._stagger.pop(schedule_id, None)
        self._skills.pop(schedule_id, None)
        if self._aps is None or self._state != "running":
            return False
        try:
            self._aps.remove_job(str(schedule_id))
        except JobLookupError:
            return False
        return True

    def jobs(self) -> dict[int, datetime | None]:
        """Schedule id -> when its job fires next (UTC, with stagger)."""
        if self._aps is None or self._state != "running":
            return {}
        return {
            int(job.id): _utc(getattr(job, "next_run_time", None)) for job in self._aps.get_jobs()
        }

    def next_run(self, schedule_id: int) -> datetime | None:
        """When the schedule's job fires next (UTC, with stagger); None without a job."""
        if self._aps is None or self._state != "running":
            return None
        job = self._aps.get_job(str(schedule_id))
        return _utc(getattr(job, "next_run_time", None)) if job is not None else None

    # --- firing ----------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("scheduler task failed", exc_info=task.exception())

    async def _on_job(self, schedule_id: int, run_time: datetime | None = None) -> FireResult:
        # Why a default: APScheduler checks a job's arguments when it is added, before
        # our executor appends the run time.
        if run_time is None:
            raise RuntimeError("SkillScheduler jobs run on its executor, which passes run_time")
        return await self.due(schedule_id, run_time)

    def _late_limit(self, info: ScheduleInfo) -> float:
        return self.grace_s if info.missed == "catch-up" else min(self.grace_s, LATE_GRACE_S)

    def _catches_up(self, info: ScheduleInfo, slot: datetime, now: datetime) -> bool:
        return info.missed == "catch-up" and (now - slot).total_seconds() <= self.grace_s

    def _retries(self, info: ScheduleInfo, slot: SlotInfo, now: datetime) -> bool:
        """Whether a slot a crash left running gets its one retry now."""
        return slot.attempt < MAX_ATTEMPTS and self._catches_up(info, slot.slot_at, now)

    async def due(self, schedule_id: int, run_time: datetime) -> FireResult:
        """What a job does when APScheduler says it is due: ``run_time`` is the time it
        was scheduled for (stagger included). Works out the slot, refuses a slot that
        starts past its grace (recorded skipped), then :meth:`fire_due`."""
        if self._state != "running":
            return "closed"
        slot = run_time.astimezone(UTC) - self._stagger.get(schedule_id, timedelta(0))
        info = await self._store.get(schedule_id)
        if info is None or not info.enabled:
            self._drop_job(schedule_id)
            return "gone"
        # Why not awaited: the listing's next run must not delay this slot's claim.
        self._spawn(self._store.set_next_run(schedule_id, self.next_run(schedule_id)))
        late = (self._clock.now() - run_time).total_seconds()
        limit = self._late_limit(info)
        if late > limit:
            reason = f"started {late:.0f} s late, past the {limit:.0f} s grace"
            await self._store.record_skipped(info.id, slot, reason, at=self._clock.now())
            self._log_slot(info.id, slot, "skipped", skill=info.skill, reason=reason)
            if info.one_shot:
                await self._store.disable(info.id, ONE_SHOT_SKIPPED)
            return "skipped"
        return await self._fire_slot(info, slot)

    async def fire_due(self, schedule_id: int, slot_at: datetime) -> FireResult:
        """Run one slot of a schedule (``slot_at``: before stagger, UTC) unless it is
        running already, was claimed before, or the schedule is gone or disabled."""
        info = await self._store.get(schedule_id)
        if info is None or not info.enabled:
            self._drop_job(schedule_id)
            return "gone"
        return await self._fire_slot(info, slot_at.astimezone(UTC))

    def _on_max_instances(self, event: JobSubmissionEvent) -> None:
        # APScheduler refused the run (max_instances=1: the last one is still going)
        # and would only log it: record each refused slot as skipped.
        schedule_id = int(event.job_id)
        stagger = self._stagger.get(schedule_id, timedelta(0))
        for run_time in event.scheduled_run_times:
            slot = run_time.astimezone(UTC) - stagger
            self._log_slot(
                schedule_id, slot, "skipped", skill=self._skills.get(schedule_id), reason=OVERLAP
            )
            self._spawn(
                self._store.record_skipped(schedule_id, slot, OVERLAP, at=self._clock.now())
            )

    async def _fire_slot(
        self, info: ScheduleInfo, slot: datetime, *, run: SlotRun | None = None
    ) -> FireResult:
        """Claim and run one slot. ``run``: the slot's retry, already claimed by
        :meth:`ScheduleStore.retry_slot` at start (None: the first attempt, claimed
        here)."""
        attempt = run.attempt if run is not None else 1
        if self._state == "closed" or (self._state == "standby" and attempt == 1):
            # Why a claimed retry still runs on standby: it is this process's, and no
            # other settles a live owner's slot.
            return "closed"
        sid = info.id
        # Why check-and-add before any await: two fires of one schedule on this loop
        # cannot both pass.
        if sid in self._running:
            await self._skip_overlap(info, slot)
            return "skipped"
        self._running.add(sid)
        try:
            if run is None:
                if await self._store.running_slot(sid) is not None:  # running elsewhere
                    await self._skip_overlap(info, slot)
                    return "skipped"
                run = SlotRun(uuid.uuid4().hex)
                claimed = await self._store.claim_slot(
                    sid, slot, started_at=self._clock.now(), run_id=run.run_id
                )
                if not claimed:
                    self._log_slot(sid, slot, "duplicate", skill=info.skill)
                    return "duplicate"
            outcome = await self._call(info, slot, run)
            if outcome.status == "interrupted":
                self._log_slot(
                    sid,
                    slot,
                    "interrupted",
                    skill=info.skill,
                    attempt=attempt,
                    run_id=outcome.run_id,
                    reason=LEFT_FOR_RESTART,
                )
                return "fired"
            reason = _reason(outcome)
            failures = await self._store.finish_slot(
                sid,
                slot,
                outcome.status,
                run_id=outcome.run_id,
                reason=reason,
                ended_at=self._clock.now(),
                attempt=attempt,
            )
        finally:
            self._running.discard(sid)
        self._log_slot(
            sid,
            slot,
            outcome.status,
            skill=info.skill,
            attempt=attempt,
            run_id=outcome.run_id,
            resumed_from=outcome.resumed_from,
            reason=reason,
        )
        await self._after(info, outcome, failures)
        return "fired"

    async def _skip_overlap(self, info: ScheduleInfo, slot: datetime) -> None:
        await self._store.record_skipped(info.id, slot, OVERLAP, at=self._clock.now())
        self._log_slot(info.id, slot, "skipped", skill=info.skill, reason=OVERLAP)

    async def _call(self, info: ScheduleInfo, slot: datetime, run: SlotRun) -> SlotOutcome:
        attempt = run.attempt
        try:
            return await self._fire(info, slot, run)
        except asyncio.CancelledError:
            await self._store.finish_slot(
                info.id,
                slot,
                "failed",
                reason="cancelled",
                ended_at=self._clock.now(),
                attempt=attempt,
            )
            self._log_slot(
                info.id, slot, "failed", skill=info.skill, attempt=attempt, reason="cancelled"
            )
            raise
        except Exception as exc:
            # Why catch everything: `fire` reports what it can as an outcome; anything
            # else is a bug, and the slot must still be closed and counted.
            log.exception("schedule %s slot %s: fire raised", info.id, slot)
            return SlotOutcome(
                status="failed", error=f"an internal error ({type(exc).__name__}); see the log"
            )

    @staticmethod
    def _log_slot(
        schedule_id: int,
        slot: datetime,
        outcome: str,
        *,
        skill: str | None,
        attempt: int | None = None,
        run_id: str | None = None,
        resumed_from: str | None = None,
        reason: str | None = None,
    ) -> None:
        """One line per slot the scheduler settles (fired ok or failed, skipped, a
        duplicate refused, closed as interrupted), as ``key=value`` fields."""
        fields: dict[str, object] = {
            "schedule_id": schedule_id,
            "skill": skill or "?",
            "slot_at": slot.astimezone(UTC).isoformat(),
            "outcome": outcome,
        }
        if attempt is not None:
            fields["attempt"] = attempt
        if run_id is not None:
            fields["run_id"] = run_id
        if resumed_from is not None:
            fields["resumed_from"] = resumed_from
        if reason is not None:
            fields["reason"] = reason
        log.log(
            logging.WARNING if outcome == "failed" else logging.INFO,
            "schedule slot",
            extra=fields,
        )

    async def _after(self, info: ScheduleInfo, outcome: SlotOutcome, failures: int) -> None:
        if info.one_shot:
            await self._store.disable(info.id, DONE)
            self._drop_job(info.id)
            return
        if outcome.status != "failed":
            return
        error = outcome.error or "the run failed"
        if failures >= self.disable_after:
            reason = f"it failed {failures} times in a row; the last time: {error}"
            await self._store.disable(info.id, reason)
            self._drop_job(info.id)
            log.warning("schedule %s disabled: %s", info.id, reason)
            if self._events is not None:
                fresh = await self._store.get(info.id) or info
                await self._notify("disabled", self._events.disabled(fresh, reason))
        elif failures == self.warn_after and self._events is not None:
            fresh = await self._store.get(info.id) or info
            await self._notify("failing", self._events.failing(fresh, failures, error))

    @staticmethod
    async def _notify(what: str, call: Awaitable[None]) -> None:
        try:
            await call
        except Exception:
            # Why not raise: no caller is waiting for a background slot; the traceback
            # goes to the log and the schedule's state is already in the table.
            log.exception("schedule event %r failed", what)


def _reason(outcome: SlotOutcome) -> str | None:
    """What a finished slot's row says: a failure's reason; for a retry that resumed
    the interrupted run, that it did (and its note); None: the row's reason stays (a
    retry run from the start says it was run again)."""
    if outcome.status == "failed":
        return outcome.error
    if outcome.resumed_from is not None:
        resumed = RESUMED.format(run_id=outcome.resumed_from)
        return f"{resumed}; {outcome.note}" if outcome.note else resumed
    return None


def _utc(moment: datetime | None) -> datetime | None:
    return moment.astimezone(UTC) if moment is not None else None
