"""The plain types of schedules and slots: what the scheduler hands to ``fire`` and what
``fire`` answers. No SQL and no APScheduler here, so the host-neutral services can
import them (``skills.schedules`` holds the store, ``skills.scheduler`` the scheduler).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

__all__ = [
    "MISSED_POLICIES",
    "Fire",
    "FireResult",
    "Missed",
    "ScheduleEvents",
    "ScheduleInfo",
    "SlotInfo",
    "SlotOutcome",
    "SlotRun",
    "SlotStatus",
]

Missed = Literal["skip", "catch-up"]
SlotStatus = Literal["running", "ok", "failed", "skipped"]
MISSED_POLICIES: tuple[Missed, ...] = ("skip", "catch-up")

#: What became of a slot the scheduler was asked to run: ``fired`` (fire was called),
#: ``skipped`` (recorded: overlap or too late), ``duplicate`` (the slot already had a
#: row), ``gone`` (no such enabled schedule), ``closed`` (the scheduler is shut down).
FireResult = Literal["fired", "skipped", "duplicate", "gone", "closed"]


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    id: int
    skill_id: int
    guild_id: str
    channel_id: str
    created_by: str
    cron: str | None
    run_at: datetime | None
    timezone: str
    arguments: dict[str, str] = field(hash=False)
    missed: Missed
    enabled: bool
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_status: str | None
    last_run_id: str | None
    consecutive_failures: int
    disabled_reason: str | None
    stagger_s: int
    created_at: datetime
    skill: str = ""  # the skill's name ("" when it is gone)

    @property
    def one_shot(self) -> bool:
        return self.run_at is not None


@dataclass(frozen=True, slots=True)
class SlotInfo:
    schedule_id: int
    slot_at: datetime  # before stagger, UTC
    status: SlotStatus
    reason: str | None
    run_id: str | None
    started_at: datetime | None
    ended_at: datetime | None
    attempt: int = 1  # 2: the one retry of a slot a restart interrupted
    owner: str | None = None  # the instance that claimed it (None: no instance)


@dataclass(frozen=True, slots=True)
class SlotRun:
    """Which attempt of a slot ``fire`` runs, and as which run.

    ``run_id`` is the id the run is to have: it is on the slot's row from its claim,
    so a restart that interrupts the run knows which run it was. ``interrupted`` (the
    slot's one retry, ``attempt`` 2): the run a restart interrupted, whose last
    checkpoint the retry resumes from when there is one (None: not known, a slot
    claimed by a coterie from before run ids were recorded at the claim)."""

    run_id: str
    attempt: int = 1
    interrupted: str | None = None


@dataclass(frozen=True)
class SlotOutcome:
    # "interrupted": a shutdown cut the run; the slot is left running, and settled as a
    # slot a restart interrupted (retried under catch-up, resuming its run).
    status: Literal["ok", "failed", "interrupted"]
    run_id: str | None = None
    error: str | None = None  # written for the person: goes to the slot and the owner
    # A retry that resumed the interrupted run from its last checkpoint: that run's id
    # (None: the slot ran from the start).
    resumed_from: str | None = None
    # What the slot's row says about a resumed run besides (a call that may have run
    # before the restart and was not run again).
    note: str | None = None


#: ``(schedule, slot_at, run) -> what happened``: runs the skill. ``slot_at`` is the
#: slot's identity (the trigger's time before stagger, UTC); ``run`` the attempt.
Fire = Callable[[ScheduleInfo, datetime, SlotRun], Awaitable[SlotOutcome]]


class ScheduleEvents(Protocol):
    async def failing(self, schedule: ScheduleInfo, failures: int, error: str) -> None:
        """Once per run of failures, when it reaches ``warn_after``."""

    async def disabled(self, schedule: ScheduleInfo, reason: str) -> None:
        """When failures reach ``disable_after``; the table already says disabled."""
