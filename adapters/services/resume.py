"""Runs that resume after a restart: the offer to the member, Resume and Discard.

A chat run keeps a checkpoint while it runs (the executor's
:class:`~executor.ports.Checkpoints` port, the database in the bot; only the runs
:meth:`ResumeService.resumable` accepts are kept for an offer). A scheduled slot's
run keeps one too, but is never offered: its slot's retry resumes it
(:class:`~adapters.services.skills.SkillService`), and the offers leave it alone
(``kept_elsewhere``). When a restart leaves such a run
interrupted, :meth:`ResumeService.offer_interrupted`, given the run ids crash recovery
closed, posts one message to its member (through a :class:`ResumeHost`: the Discord
edge) with **Resume** and **Discard**, which only that member may press, until the
offer expires. Never an automatic re-run: nothing happens until the member presses.

Who offers: the process that closed the run. At start that is the bot's own recovery;
with several processes on PostgreSQL, also the survivor that settles a dead process's
runs from its heartbeat. Both hand the ids to :meth:`ResumeService.found`, and the
bot's offer loop (:meth:`take_found`, :meth:`wait_found`) posts them once Discord is
ready, so a heartbeat never waits on Discord. Recovery closes each run once (its rows
are locked), so each run is offered by one process; the buttons carry the run id and
are checked against the database, so any process may take the press.

- **Resume** starts a new run (its own id, audit row and reservation; the audit links
  it to the interrupted one by ``resumed_from``) from the last completed step, as the
  member's privilege is now. What the interrupted run spent was charged when it was
  closed; the new run is charged its own model calls: the ledger equals what the
  attempts cost. A tool call that had started and not finished runs again only when
  it is read-only or idempotent; any other is asked again (approval buttons).
- **Once**: an offer is decided once (two presses: the first wins), and a resumed run
  keeps no checkpoint, so when it too is interrupted it is not offered again.
- **Discard** closes the offer; the checkpoint's conversation is deleted either way,
  and when the offer expires.

The same process greys the buttons of the questions for approval those runs were
waiting on (:meth:`ApprovalService.interrupted`): a dead process could not, and a
press on them would reach nothing. Each says it was interrupted, and whether the run
was offered to resume (its new run asks again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

from adapters.services.approval import INTERRUPTED, INTERRUPTED_OFFERED, ApprovalService
from adapters.services.chat import ChatService, ChatSurface
from adapters.services.errors import NotYourOffer, OfferExpired, OfferUnavailable
from executor.agent import Caller, RunResult
from executor.ports import Checkpoint, Clock, RealClock

__all__ = [
    "RESUMABLE_TRIGGERS",
    "SWEEP_S",
    "Decision",
    "Offer",
    "OfferRecord",
    "OfferStatus",
    "ResumeHost",
    "ResumeService",
    "ResumeStore",
]

log = logging.getLogger(__name__)

#: The triggers of the runs a member can be offered to resume: a message, ``/chat``.
RESUMABLE_TRIGGERS = frozenset({"chat", "slash"})
#: How long an offer may be pressed, unless the deployment says otherwise.
DEFAULT_OFFER_TTL_S = 6 * 3600.0
#: How often the bot closes expired offers.
SWEEP_S = 600.0

OfferStatus = Literal["offered", "resumed", "discarded", "expired"]
Decision = Literal["resumed", "discarded"]


@dataclass(frozen=True, slots=True)
class Offer:
    """What the member is shown: which run, where it answered, what it was about."""

    run_id: str
    user_id: str
    guild_id: str | None  # None: a DM
    channel_id: str | None  # the thread or channel the run answered in
    persona: str | None
    prompt: str  # the member's last message, as the run saw it
    steps: int  # steps the run had completed
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class OfferRecord:
    """An interrupted run's row as the store has it."""

    run_id: str
    user_id: str
    status: OfferStatus | None  # None: not offered (yet)
    expires_at: datetime | None
    checkpoint: Checkpoint | None  # None once the offer was decided or expired


class ResumeStore(Protocol):
    """What the service needs of the checkpoints' store (``SqlCheckpoints``)."""

    async def interrupted(self, run_ids: Sequence[str]) -> list[Checkpoint]:
        """The checkpoints of these runs that were never offered."""
        ...

    async def offered(self, run_id: str, *, expires_at: datetime) -> None:
        """Open the run's offer, until ``expires_at`` (before it is posted: the member
        may press at once)."""
        ...

    async def posted(self, run_id: str, *, channel_id: str, message_id: str) -> None:
        """Record where the offer was posted."""
        ...

    async def withdraw(self, run_id: str) -> None:
        """Delete an offer that could not be posted, and its checkpoint."""
        ...

    async def forget(self, run_ids: Sequence[str]) -> int:
        """Delete the checkpoints of these runs that were never offered."""
        ...

    async def record(self, run_id: str) -> OfferRecord | None: ...

    async def decide(
        self,
        run_id: str,
        *,
        user_id: str,
        decision: Decision,
        now: datetime,
        resumed_as: str | None = None,
    ) -> Checkpoint | None:
        """Atomically close an open offer of ``user_id``'s that has not expired at
        ``now`` (its conversation deleted) and return its checkpoint; None when there is
        no such offer (another press won, or it expired meanwhile)."""
        ...

    async def expire(self, now: datetime) -> list[tuple[str, str]]:
        """Close the offers past their time (their conversation deleted); the
        (channel id, message id) of each that was posted."""
        ...

    async def prune(self, now: datetime) -> int:
        """Delete what no offer needs: checkpoints of runs that ended, old decisions."""
        ...


class ResumeHost(Protocol):
    """Where offers are posted (the Discord edge)."""

    async def post_offer(self, offer: Offer) -> tuple[str, str] | None:
        """Post the offer to its member with Resume and Discard; the (channel id,
        message id) it was posted as, or None when the member cannot be reached."""
        ...

    async def close_offer(self, channel_id: str, message_id: str, note: str) -> None:
        """Take the buttons off a posted offer and say why (``note``)."""
        ...

    async def close_question(
        self, channel_id: str, message_id: str, approval_id: str, note: str
    ) -> None:
        """Grey the buttons of a posted question for approval and say why (``note``)."""
        ...


class ResumeService:
    """Offers interrupted chat runs to their members and resumes or discards them.

    ``chat``: the chat flow (personas, guild settings, the runner); ``offer_ttl_s``:
    how long an offer may be pressed; ``host`` is set by the Discord client when it
    starts (None: offers cannot be posted and are dropped); ``kept_elsewhere`` says
    which checkpoints another service resumes (a scheduled slot's retry:
    ``SkillService.resumable``): they are neither offered nor forgotten here;
    ``approvals``: the questions whose buttons an interrupted run left (None: none kept).
    """

    def __init__(
        self,
        *,
        store: ResumeStore,
        chat: ChatService,
        clock: Clock | None = None,
        offer_ttl_s: float = DEFAULT_OFFER_TTL_S,
        host: ResumeHost | None = None,
        kept_elsewhere: Callable[[Checkpoint], bool] | None = None,
        approvals: ApprovalService | None = None,
    ) -> None:
        self.store = store
        self.approvals = approvals
        self.kept_elsewhere = kept_elsewhere
        self.chat = chat
        self.clock: Clock = clock if clock is not None else RealClock()
        self.offer_ttl_s = offer_ttl_s
        self.host = host
        self._found: list[str] = []
        self._arrived = asyncio.Event()

    @staticmethod
    def resumable(checkpoint: Checkpoint) -> bool:
        """Whether a run can be offered: a member's chat (a message or ``/chat``), not
        a skill, not a run another run started, and not itself a resumed run (once)."""
        return (
            checkpoint.trigger in RESUMABLE_TRIGGERS
            and checkpoint.skill is None
            and checkpoint.parent_run_id is None
            and checkpoint.resumed_from is None
        )

    # --- offering ----------------------------------------------------------------------

    def found(self, run_ids: Sequence[str], *, wake: bool = True) -> None:
        """Runs crash recovery closed as interrupted, to offer (:meth:`take_found`):
        at start, or a dead process's, settled by this one. ``wake=False``: wait for the
        next sweep (a retry after a failure)."""
        fresh = [r for r in run_ids if r not in self._found]
        if not fresh:
            return
        self._found.extend(fresh)
        if wake:
            self._arrived.set()

    def take_found(self) -> list[str]:
        """The runs found since the last call (once: the list empties)."""
        taken, self._found = self._found, []
        self._arrived.clear()
        return taken

    async def wait_found(self, timeout_s: float) -> None:
        """Until runs are :meth:`found` or ``timeout_s`` has passed (the next sweep)."""
        # asyncio.timeout, not wait_for: see Membership._loop (a cancellation that
        # comes as runs are found must not be lost).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._arrived.wait()

    async def offer_interrupted(self, run_ids: Sequence[str]) -> int:
        """Offer each of these interrupted runs (crash recovery closed them) to its
        member, when it can be resumed; forget the rest. Returns how many were offered.

        The seam for whoever finds interrupted runs: today the start-up recovery of the
        single process; a process that takes over a dead one's runs calls it the same way.
        """
        now = self.clock.now()
        expires_at = now + timedelta(seconds=self.offer_ttl_s)
        offered = 0
        theirs: set[str] = set()
        resumable: set[str] = set()
        for checkpoint in await self.store.interrupted(run_ids):
            if not self.resumable(checkpoint):
                if self.kept_elsewhere is not None and self.kept_elsewhere(checkpoint):
                    theirs.add(checkpoint.run_id)
                continue
            offer = _offer(checkpoint, expires_at)
            await self.store.offered(offer.run_id, expires_at=expires_at)
            where = await self._post(offer)
            if where is None:
                await self.store.withdraw(offer.run_id)
                continue
            await self.store.posted(offer.run_id, channel_id=where[0], message_id=where[1])
            offered += 1
            resumable.add(offer.run_id)
        # Why after: what was not offered now never will be (its conversation goes),
        # unless another service resumes it (its own way, once).
        await self.store.forget([r for r in run_ids if r not in theirs])
        await self._close_questions(run_ids, resumable)
        await self.sweep()
        if run_ids:
            log.info("%d interrupted run(s): %d offered to resume", len(run_ids), offered)
        return offered

    async def sweep(self) -> int:
        """Close the offers past their time (their buttons taken off, their
        conversation deleted) and prune what no offer needs; how many expired. The
        bot calls it at start and every :data:`SWEEP_S` seconds."""
        now = self.clock.now()
        expired = await self.store.expire(now)
        for channel_id, message_id in expired:
            if self.host is None:
                break
            try:
                await self.host.close_offer(channel_id, message_id, "Expired.")
            except Exception:
                # Why not raise: a deleted message or channel leaves nothing to press.
                log.info("could not take the buttons off offer %s", message_id, exc_info=True)
        await self.store.prune(now)
        return len(expired)

    async def _close_questions(self, run_ids: Sequence[str], offered: set[str]) -> None:
        """Grey the buttons of the questions for approval these runs left."""
        if self.approvals is None or self.host is None or not run_ids:
            return
        for question in await self.approvals.interrupted(run_ids):
            if question.channel_id is None or question.message_id is None:
                continue
            note = INTERRUPTED_OFFERED if question.run_id in offered else INTERRUPTED
            try:
                await self.host.close_question(
                    question.channel_id, question.message_id, question.id, note
                )
            except Exception:
                # Why not raise: a deleted message leaves nothing to press; a press on
                # one that stays is refused (its process is gone).
                log.info("could not grey the buttons of approval %s", question.id, exc_info=True)

    async def _post(self, offer: Offer) -> tuple[str, str] | None:
        if self.host is None:
            log.warning("run %s was interrupted; nowhere to offer it to resume", offer.run_id)
            return None
        try:
            where = await self.host.post_offer(offer)
        except Exception:
            # Why not raise: one member out of reach must not stop the others' offers.
            log.warning("could not offer run %s to resume", offer.run_id, exc_info=True)
            return None
        if where is None:
            log.info("run %s: its member cannot be reached to offer a resume", offer.run_id)
        return where

    # --- the member's choice -----------------------------------------------------------

    async def resume(
        self,
        run_id: str,
        caller: Caller,
        surface: ChatSurface,
        *,
        on_claimed: Callable[[], Awaitable[None]] | None = None,
    ) -> RunResult:
        """Resume ``run_id`` for ``caller`` (who pressed), answering through ``surface``.

        Refuses with an :class:`~adapters.services.errors.OfferUnavailable` (not theirs,
        expired, decided already) and ``PersonaNotFound`` (the persona was deleted)
        before anything is claimed; ``on_claimed`` is awaited once the offer is theirs,
        before the run (the edge marks the offer)."""
        now = self.clock.now()
        checkpoint = _open(await self.store.record(run_id), caller.user_id, now)
        persona = await self.chat.persona_for(checkpoint.caller.guild_id, checkpoint.persona)
        new_id = uuid.uuid4().hex
        claimed = await self.store.decide(
            run_id, user_id=caller.user_id, decision="resumed", now=now, resumed_as=new_id
        )
        if claimed is None:
            _open(await self.store.record(run_id), caller.user_id, now)
            raise OfferUnavailable("This run can no longer be resumed.")
        if on_claimed is not None:
            await on_claimed()
        log.info("run %s resumed by its member as run %s", run_id, new_id)
        return await self.chat.resume(
            claimed,
            agent=self.chat.to_agent(persona),
            persona=persona,
            caller=caller,
            surface=surface,
            run_id=new_id,
        )

    async def discard(self, run_id: str, user_id: str) -> None:
        """Close the offer without running anything (its conversation is deleted)."""
        now = self.clock.now()
        _open(await self.store.record(run_id), user_id, now)
        if await self.store.decide(run_id, user_id=user_id, decision="discarded", now=now) is None:
            _open(await self.store.record(run_id), user_id, now)
            raise OfferUnavailable("This run can no longer be resumed.")
        log.info("run %s: its member discarded the offer to resume it", run_id)


def _open(record: OfferRecord | None, user_id: str, now: datetime) -> Checkpoint:
    """The checkpoint of an offer ``user_id`` may decide now, or the refusal saying why not."""
    if record is None or record.status is None:
        raise OfferUnavailable("This run can no longer be resumed.")
    if record.user_id != user_id:
        raise NotYourOffer(
            "Not yours: only the member whose answer was interrupted can resume or discard it."
        )
    if record.status == "resumed":
        raise OfferUnavailable("Already resumed.")
    if record.status == "discarded":
        raise OfferUnavailable("Already discarded.")
    expired = record.expires_at is not None and record.expires_at <= now
    if record.status == "expired" or expired or record.checkpoint is None:
        raise OfferExpired("This offer has expired; ask again if you still need the answer.")
    return record.checkpoint


def _offer(checkpoint: Checkpoint, expires_at: datetime) -> Offer:
    prompt = ""
    for m in reversed(checkpoint.messages):
        if m.role == "user" and m.text.strip():
            prompt = m.text.strip()
            break
    thread = checkpoint.metadata.get("thread_id")
    caller = checkpoint.caller
    return Offer(
        run_id=checkpoint.run_id,
        user_id=caller.user_id,
        guild_id=caller.guild_id,
        channel_id=str(thread) if thread else caller.channel_id,
        persona=checkpoint.persona,
        prompt=prompt,
        steps=checkpoint.step,
        expires_at=expires_at,
    )
