"""Approving a tool call, host-neutral, whichever process the member's press reaches.

The executor has one :class:`~executor.ports.Approver` for every run;
:class:`DeliveryApprover` hands each request to the run's own delivery (which
knows the channel and the member), so a Discord run asks with buttons
(:mod:`adapters.discord.approval`) and a console run asks at the terminal. A
delivery that cannot ask (``Delivery.ask_approval``'s default) denies.

A question asked with buttons is a row (:class:`Approval`, kept by an
:class:`ApprovalStore`: the database in the bot), because with several processes on
PostgreSQL the press goes to the process serving the guild's Discord shard, which need
not be the one whose run waits (a scheduled skill runs on the scheduler's leader; a
resumed run where its member pressed Resume). :class:`ApprovalService`:

- :meth:`~ApprovalService.ask` opens the row: the run and tool call, who may decide
  (the member who asked; for a scheduled skill its owner: whoever the delivery was
  opened for), the process that waits (``owner``) and until when;
- :meth:`~ApprovalService.decide`, called by whichever process received the press,
  checks who pressed and records the decision atomically: the first decision wins; a
  later press is told what was decided and by whom, anyone else's that it is not
  theirs, a press after the time or for a run whose process died that nothing waits;
- :meth:`~ApprovalService.wait`, in the waiting process, returns the decision: at once
  when the press landed in this process (it is handed over in memory), on a ``NOTIFY``
  from the process that recorded it (PostgreSQL: :meth:`~ApprovalService.changed`), and
  else by reading the row every :data:`POLL_S` seconds (a notification lost while the
  connection was down is not a press lost). No answer in time closes the row as
  ``expired``: denied, as before.

Where a question was posted is on its row too (:meth:`~ApprovalService.posted`): the
waiting process takes the buttons off when its run stops waiting (the edge, on
``expired`` and on a cancelled wait), but a process that dies cannot, so the one that
settles its runs asks :meth:`~ApprovalService.interrupted` for the questions those runs
left showing buttons, and takes them off (:class:`~adapters.services.resume.ResumeService`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal, Protocol

from adapters.services.errors import ApprovalDecided, ApprovalUnavailable, NotYourApproval
from executor.ports import ApprovalDecision, ApprovalRequest, Clock, RealClock

__all__ = [
    "ENDED",
    "INTERRUPTED",
    "INTERRUPTED_OFFERED",
    "KEPT_FOR",
    "POLL_S",
    "RESTARTING",
    "Approval",
    "ApprovalService",
    "ApprovalStore",
    "Closing",
    "DecisionKind",
    "DeliveryApprover",
    "InMemoryApprovals",
]

log = logging.getLogger(__name__)

#: How often a waiting run reads its row besides being told (a lost notification).
POLL_S = 5.0
#: How long a closed question's row stays, so a late press is told what happened.
KEPT_FOR = timedelta(days=1)

#: The note on a question whose run stopped waiting (cancelled, timed out).
ENDED = "Expired: the run ended before an answer."
#: ... when this process's drain cut the run (a restart; a chat run is then offered to
#: resume, and the resumed run asks again).
RESTARTING = "Stopped: coterie is restarting; nothing waits for this answer."
#: The note on a question whose process died (a restart), added by the one that
#: settled its run.
INTERRUPTED = "Interrupted by a restart: nothing waits for this answer."
#: ... when the run was offered to its member to resume (the new run asks again).
INTERRUPTED_OFFERED = f"{INTERRUPTED} The run was offered to resume."

DecisionKind = Literal["approved", "denied", "expired", "cancelled", "interrupted"]
#: How a question closes without the member: no answer in time, the run stopped
#: waiting (cancelled, or the question could not be posted), its process died.
Closing = Literal["expired", "cancelled", "interrupted"]


class DeliveryApprover:
    """The executor's approver: asks through the run's delivery."""

    async def approve(self, request: ApprovalRequest) -> ApprovalDecision:
        delivery = request.delivery
        if delivery is None:
            return ApprovalDecision(approved=False, reason="nobody can be asked to approve it here")
        return await delivery.ask_approval(request)


@dataclass(frozen=True, slots=True)
class Approval:
    """One question: a tool call of a run, waiting for ``user_id``'s Approve or Deny."""

    id: str
    run_id: str
    call_id: str
    tool: str
    user_id: str  # who may decide
    created_at: datetime
    expires_at: datetime
    owner: str | None = None  # the process whose run waits (None: not registered)
    decision: DecisionKind | None = None
    decided_by: str | None = None
    decided_by_name: str | None = None
    decided_at: datetime | None = None
    #: Whether the process that asked is alive (read from the store; False: it died,
    #: and nothing waits for the answer).
    waiting: bool = True
    #: Where the question was posted (None: not yet, or its buttons were taken off
    #: after its process died).
    channel_id: str | None = None
    message_id: str | None = None

    @property
    def is_open(self) -> bool:
        return self.decision is None

    def verdict(self) -> ApprovalDecision:
        """What the run is told (and the audit records: who denied it, as before)."""
        if self.decision == "approved":
            return ApprovalDecision(approved=True)
        if self.decision == "denied":
            who = self.decided_by_name or "the member"
            return ApprovalDecision(approved=False, reason=f"{who} denied it")
        if self.decision == "expired":
            return ApprovalDecision(approved=False, reason="no answer in time")
        return ApprovalDecision(approved=False, reason="nobody answered")


class ApprovalStore(Protocol):
    """Where questions are kept (``SqlApprovals``; :class:`InMemoryApprovals`)."""

    async def add(self, approval: Approval) -> None: ...

    async def get(self, approval_id: str) -> Approval | None:
        """The row, with ``waiting``: whether its owner is alive."""
        ...

    async def decide(
        self, approval_id: str, *, user_id: str, name: str, approved: bool, now: datetime
    ) -> Approval | None:
        """Atomically record ``user_id``'s press on the question if it is theirs, still
        open, not past its time at ``now`` and its owner alive; the row as decided, or
        None (another press or the waiter's timeout came first, or nothing waits)."""
        ...

    async def close(self, approval_id: str, *, decision: Closing, now: datetime) -> Approval | None:
        """Close an open question with ``decision``; the row as it ends up (a decision
        recorded first stays), None when there is no row."""
        ...

    async def posted(self, approval_id: str, *, channel_id: str, message_id: str) -> None:
        """Record where the question was posted."""
        ...

    async def interrupted(self, run_ids: Sequence[str], *, now: datetime) -> list[Approval]:
        """Close the open questions of these runs as ``interrupted`` (their process
        died) and return those closed so whose message still shows its buttons, each
        once: where it was posted is forgotten as it is returned."""
        ...

    async def prune(self, before: datetime) -> int:
        """Delete the questions that expired before ``before``; how many."""
        ...


class InMemoryApprovals:
    """The store of one process (the default of a client built without the app's: tests,
    ``coterie sync``)."""

    def __init__(self) -> None:
        self.rows: dict[str, Approval] = {}

    async def add(self, approval: Approval) -> None:
        self.rows[approval.id] = approval

    async def get(self, approval_id: str) -> Approval | None:
        return self.rows.get(approval_id)

    async def decide(
        self, approval_id: str, *, user_id: str, name: str, approved: bool, now: datetime
    ) -> Approval | None:
        row = self.rows.get(approval_id)
        if row is None or row.user_id != user_id or not row.is_open or row.expires_at <= now:
            return None
        decided = replace(
            row,
            decision="approved" if approved else "denied",
            decided_by=user_id,
            decided_by_name=name,
            decided_at=now,
        )
        self.rows[approval_id] = decided
        return decided

    async def close(self, approval_id: str, *, decision: Closing, now: datetime) -> Approval | None:
        row = self.rows.get(approval_id)
        if row is not None and row.is_open:
            row = self.rows[approval_id] = replace(row, decision=decision, decided_at=now)
        return row

    async def posted(self, approval_id: str, *, channel_id: str, message_id: str) -> None:
        row = self.rows.get(approval_id)
        if row is not None:
            self.rows[approval_id] = replace(row, channel_id=channel_id, message_id=message_id)

    async def interrupted(self, run_ids: Sequence[str], *, now: datetime) -> list[Approval]:
        taken = []
        for key, row in list(self.rows.items()):
            if row.run_id not in run_ids:
                continue
            if row.is_open:
                row = replace(row, decision="interrupted", decided_at=now)
            if row.decision == "interrupted" and row.message_id is not None:
                taken.append(row)
                row = replace(row, channel_id=None, message_id=None)
            self.rows[key] = row
        return taken

    async def prune(self, before: datetime) -> int:
        old = [k for k, r in self.rows.items() if r.expires_at < before]
        for k in old:
            del self.rows[k]
        return len(old)


@dataclass(slots=True)
class _Waiter:
    deadline: float  # on the clock's monotonic time
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    decided: Approval | None = None  # handed over by a press in this process


class ApprovalService:
    """Questions and their answers, across processes (see the module docstring).

    ``owner``: this process's instance id (set when it registers), written on each
    question so a press for a dead process's run is refused; ``publish``: tells the
    other processes that a question was decided (``NOTIFY``; None: one process).
    """

    def __init__(
        self, store: ApprovalStore, *, clock: Clock | None = None, poll_s: float = POLL_S
    ) -> None:
        self.store = store
        self.clock: Clock = clock if clock is not None else RealClock()
        self.poll_s = poll_s
        self.owner: str | None = None
        self.publish: Callable[[str], Awaitable[None]] | None = None
        self._waiters: dict[str, _Waiter] = {}
        self._ended = ENDED

    @property
    def ended_note(self) -> str:
        """What a question whose run stopped waiting says: :data:`ENDED`, or
        :data:`RESTARTING` once :meth:`restarting` was called."""
        return self._ended

    def restarting(self) -> None:
        """This process's drain is cutting its runs (``Runner.drain``'s ``before_cut``):
        the questions they leave say so."""
        self._ended = RESTARTING

    # --- the waiting side --------------------------------------------------------

    async def ask(self, request: ApprovalRequest, *, user_id: str, timeout_s: float) -> Approval:
        """Open a question for ``request`` that ``user_id`` may decide within
        ``timeout_s`` seconds (post it, then :meth:`wait`)."""
        now = self.clock.now()
        approval = Approval(
            id=uuid.uuid4().hex,
            run_id=request.run_id,
            call_id=request.call_id[:128],
            tool=request.tool[:128],
            user_id=user_id,
            created_at=now,
            expires_at=now + timedelta(seconds=timeout_s),
            owner=self.owner,
        )
        # Why before the row: a press that comes as soon as the buttons show finds us.
        self._waiters[approval.id] = _Waiter(deadline=self.clock.monotonic() + timeout_s)
        try:
            await self.store.add(approval)
        except BaseException:
            self._waiters.pop(approval.id, None)
            raise
        return approval

    async def wait(self, approval: Approval) -> Approval:
        """Until the question is decided, or its time is up (closed as ``expired``):
        the row as it closed. Cancelled (the run stops): closed as ``cancelled``."""
        waiter = self._waiters.get(approval.id)
        if waiter is None:
            left = (approval.expires_at - self.clock.now()).total_seconds()
            waiter = self._waiters[approval.id] = _Waiter(self.clock.monotonic() + left)
        try:
            while True:
                if waiter.decided is not None:
                    return waiter.decided
                left = waiter.deadline - self.clock.monotonic()
                if left <= 0:
                    return await self._close(approval, "expired")
                await self._nap(waiter.wake, min(left, self.poll_s))
                if waiter.decided is not None:
                    continue
                # Told by another process, or the periodic check: read the row.
                waiter.wake.clear()
                try:
                    row = await self.store.get(approval.id)
                except Exception:
                    # Why not raise: the database may be back at the next check.
                    log.warning("could not read approval %s; trying again", approval.id)
                    continue
                if row is None:
                    # Deleted while it waited (/forgetme): nobody will answer it.
                    return replace(approval, decision="cancelled")
                if not row.is_open:
                    return row
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._close(approval, "cancelled"))
            raise
        finally:
            self._waiters.pop(approval.id, None)

    async def posted(self, approval: Approval, *, channel_id: str, message_id: str) -> None:
        """Record where ``approval`` was posted, so that its buttons can be taken off
        if this process dies before the answer (:meth:`interrupted`)."""
        try:
            await self.store.posted(approval.id, channel_id=channel_id, message_id=message_id)
        except Exception:
            # Why not raise: the question stands; only a crash's clean-up needs this.
            log.warning("could not record where approval %s was posted", approval.id)

    async def interrupted(self, run_ids: Sequence[str]) -> list[Approval]:
        """The questions of these runs (their process died; this one settled them) that
        still show buttons, closed as ``interrupted``; each is returned once, for its
        buttons to be taken off."""
        if not run_ids:
            return []
        return await self.store.interrupted(run_ids, now=self.clock.now())

    async def withdraw(self, approval_id: str) -> Approval | None:
        """Close a question nothing will wait for (it could not be posted, or its run
        stopped waiting) as ``cancelled``; the row as it ends up (a decision recorded
        first stays)."""
        self._waiters.pop(approval_id, None)
        return await self.store.close(approval_id, decision="cancelled", now=self.clock.now())

    def changed(self, key: str | None) -> None:
        """Another process recorded a press on question ``key`` (None: maybe any, the
        notification connection came back): its waiter here reads the row now."""
        if key is None:
            for waiter in self._waiters.values():
                waiter.wake.set()
            return
        one = self._waiters.get(key)
        if one is not None:
            one.wake.set()

    @property
    def waiting(self) -> int:
        """How many questions this process waits on."""
        return len(self._waiters)

    async def _close(self, approval: Approval, decision: Closing) -> Approval:
        try:
            row = await self.store.close(approval.id, decision=decision, now=self.clock.now())
        except Exception:
            log.warning("could not close approval %s as %s", approval.id, decision, exc_info=True)
            row = None
        return row if row is not None else replace(approval, decision=decision)

    async def _nap(self, wake: asyncio.Event, seconds: float) -> None:
        """Until ``wake`` is set or ``seconds`` have passed on the clock."""
        if wake.is_set():
            return
        woke = asyncio.ensure_future(wake.wait())
        slept = asyncio.ensure_future(self.clock.sleep(seconds))
        try:
            await asyncio.wait((woke, slept), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woke.cancel()
            slept.cancel()
            await asyncio.gather(woke, slept, return_exceptions=True)

    # --- the pressing side -------------------------------------------------------

    async def decide(
        self, approval_id: str, *, user_id: str, name: str, approved: bool
    ) -> Approval:
        """Record ``user_id``'s press (Approve when ``approved``, else Deny) on question
        ``approval_id``, in whichever process received it; the question as decided.

        Refuses with :class:`~adapters.services.errors.NotYourApproval` (someone else's
        question), :class:`~adapters.services.errors.ApprovalDecided` (decided already:
        says what and by whom) or :class:`~adapters.services.errors.ApprovalUnavailable`
        (its time is up, the run stopped waiting or its process died)."""
        now = self.clock.now()
        _may_decide(await self._current(approval_id, now), user_id, now)
        won = await self.store.decide(
            approval_id, user_id=user_id, name=name[:128], approved=approved, now=now
        )
        if won is None:
            _may_decide(await self._current(approval_id, now), user_id, now)
            raise ApprovalUnavailable("This request is no longer open.")
        log.info("run %s: member %s %s %s", won.run_id, user_id, won.decision, won.tool)
        waiter = self._waiters.get(approval_id)
        if waiter is not None:
            # The fast path: the run waits in this process; hand the decision over.
            waiter.decided = won
            waiter.wake.set()
        elif self.publish is not None:
            try:
                await self.publish(approval_id)
            except Exception:
                # Why not raise: the decision is recorded; the waiter reads it at its check.
                log.warning("could not tell the waiting process about approval %s", approval_id)
        return won

    async def _current(self, approval_id: str, now: datetime) -> Approval | None:
        row = await self.store.get(approval_id)
        if row is not None and row.is_open and not row.waiting:
            # Its process died (the run was closed as interrupted, or will be): close
            # the question, so that nothing is recorded for a run that no longer waits.
            row = await self.store.close(approval_id, decision="interrupted", now=now) or row
        return row

    # --- housekeeping ------------------------------------------------------------

    async def prune(self) -> int:
        """Delete the questions closed long ago (:data:`KEPT_FOR`)."""
        return await self.store.prune(self.clock.now() - KEPT_FOR)


def _may_decide(row: Approval | None, user_id: str, now: datetime) -> None:
    """Raise the refusal that says why ``user_id`` may not decide ``row`` now."""
    if row is None:
        raise ApprovalUnavailable("This request is no longer open.")
    if row.user_id != user_id:
        raise NotYourApproval("Not yours: only the member who asked can approve this.")
    if row.decision in ("approved", "denied"):
        who = row.decided_by_name or "the member"
        raise ApprovalDecided(f"Already {row.decision} by {who}.")
    if row.decision == "expired" or (row.is_open and row.expires_at <= now):
        raise ApprovalUnavailable("Too late: no answer came in time, so it was denied.")
    if row.decision == "cancelled":
        raise ApprovalUnavailable("The run stopped waiting for this answer.")
    if row.decision == "interrupted" or not row.waiting:
        raise ApprovalUnavailable(
            "The run that asked was interrupted: nothing waits for this answer any more."
        )
