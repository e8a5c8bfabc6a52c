"""The runner: a member's lane, then the executor. Chat, ``/skill run`` and the
scheduler all start runs here, so every trigger queues fairly and is bounded alike.

While a run waits for a slot in its member's lane, the delivery is told its place
(``delivery.queued(n)``, 1 = next) and told 0 when it starts, before the run's first
token, so the member sees "waiting in line" turn into the answer in order.

A run gives its slot back when its model work is over: when the executor hands the
delivery the result (``delivery.finish``), before the answer's last push to Discord.
That push can wait behind a rate limit; the next request should not wait with it.
The run stays in flight (awaited, drained, its delivery recorded in the audit) until
the push is done.

The runner also knows every run in flight, which is what a shutdown drains
(:meth:`Runner.drain`)::

    stop_intake()      new runs are refused: the member reads "coterie is restarting"
    drain(grace_s)     runs waiting in a lane are refused the same way at once; running
                       runs may finish within the grace period; the rest are cancelled
                       and their member reads "Stopped: coterie is restarting." A run
                       whose model work is over is not cancelled: its answer is posted.
                       The report names the cancelled runs (``stopped``): they keep
                       their checkpoint, and the bot offers them to resume.

A cancelled run still ends with its audit row closed (status ``cancelled``) and its
budget settled to what it spent: the executor does that on its host's cancellation.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from executor.agent import Caller, DeliveryReport, Invocation, RunnableAgent, RunResult, RunStatus
from executor.ports import Clock, Delivery, ForwardingDelivery, RealClock
from executor.run import Executor

__all__ = [
    "SHUTDOWN_NOTE",
    "SHUTDOWN_REFUSAL",
    "DrainReport",
    "HeldSlot",
    "LanePool",
    "PositionCallback",
    "Runner",
]

log = logging.getLogger(__name__)

PositionCallback = Callable[[int], Any]

#: What a member reads when their request arrives (or waits in line) during a shutdown.
SHUTDOWN_REFUSAL = "coterie is restarting; try again in a minute."
#: What a member reads under an answer the shutdown had to cut short.
SHUTDOWN_NOTE = "Stopped: coterie is restarting."
_SHUTDOWN_ERROR = "coterie was shutting down"

# How long a cancelled run may take to close its audit row, settle and post its note.
_CANCEL_WAIT_S = 10.0


class HeldSlot(Protocol):
    """A slot of a :class:`LanePool`, held for the ``slot`` block or until released."""

    def release(self) -> None:
        """Give the slot to the next request now (idempotent)."""
        ...


class LanePool(Protocol):
    """What the runner needs of ``executor.lanes.Lanes``: a slot in a member's lane.

    ``on_position(n)`` is called while the request waits (n ahead of it, 1 = next)
    and with 0 when it starts.
    """

    def slot(
        self, key: str, *, on_position: PositionCallback | None = None
    ) -> AbstractAsyncContextManager[HeldSlot]: ...


class _NoSlot:
    """No lanes: nothing to give back."""

    def release(self) -> None:
        return None


@dataclass(slots=True)
class DrainReport:
    """What a drain did: runs that finished in the grace period (or whose model work
    was over by then, left to post their answer), runs cancelled after it, and runs
    refused while they waited in a lane."""

    finished: int = 0
    cancelled: int = 0
    refused: int = 0
    unfinished: list[str] = field(default_factory=list)  # run ids still open at the end
    stopped: list[str] = field(default_factory=list)  # run ids of the runs cancelled

    def __str__(self) -> str:
        return (
            f"{self.finished} run(s) finished, {self.cancelled} cancelled, "
            f"{self.refused} refused while waiting"
        )


class _StoppingDelivery(ForwardingDelivery):
    """The run's delivery, with the shutdown's note in place of "Cancelled." when the
    drain cut the run short. Everything else goes to the delivery unchanged."""

    __slots__ = ("final", "note_on_finish", "on_finish")

    def __init__(self, inner: Delivery) -> None:
        super().__init__(inner)
        self.note_on_finish: str | None = None
        self.final: RunResult | None = None  # what the run ended with
        #: Called once the run's model work is over, before the answer's last push.
        self.on_finish: Callable[[], None] | None = None

    async def finish(self, result: RunResult) -> DeliveryReport | None:
        if self.note_on_finish is not None and result.status is RunStatus.CANCELLED:
            result.note = self.note_on_finish
        self.final = result
        if self.on_finish is not None:
            self.on_finish()
        return await self._inner.finish(result)


@dataclass(eq=False, slots=True)
class _Flight:
    """One call of :meth:`Runner.run` until it returns."""

    task: asyncio.Task[Any]
    run_id: str
    delivery: _StoppingDelivery | None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    running: bool = False  # past the lane, inside the executor
    delivering: bool = False  # model work over, its lane slot given back: the answer's last push
    stopped: bool = False  # the drain cancelled it


class Runner:
    """``executor`` runs, each in its caller's lane of ``lanes`` (None: no queueing).

    ``clock`` times the drain's grace period (tests give a fake one).
    """

    def __init__(
        self, executor: Executor, lanes: LanePool | None = None, *, clock: Clock | None = None
    ) -> None:
        self.executor = executor
        self.lanes = lanes
        self.clock: Clock = clock if clock is not None else RealClock()
        self._flights: set[_Flight] = set()
        self._accepting = True

    # --- runs ------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    async def wait_idle(self) -> None:
        """Until every run in flight now has ended (closed in the audit, settled)."""
        flights = list(self._flights)
        if flights:
            await asyncio.gather(*(f.done.wait() for f in flights))

    async def run(self, agent: RunnableAgent, invocation: Invocation) -> RunResult:
        if not self._accepting:
            return await self._refuse(invocation, invocation.delivery)
        task = asyncio.current_task()
        assert task is not None, "Runner.run must run inside a task"
        run_id = invocation.run_id or uuid.uuid4().hex
        wrapped = _StoppingDelivery(invocation.delivery) if invocation.delivery else None
        flight = _Flight(task=task, run_id=run_id, delivery=wrapped)
        self._flights.add(flight)
        try:
            async with self._slot(invocation.caller, invocation.delivery) as held:
                flight.running = True
                if wrapped is not None:
                    wrapped.on_finish = _delivering(flight, held)
                return await self.executor.run(
                    agent, replace(invocation, run_id=run_id, delivery=wrapped)
                )
        except asyncio.CancelledError:
            if not flight.stopped or task.uncancel() > 0:
                raise  # someone else cancelled it too: theirs to handle
            if not flight.running:
                return await self._refuse(invocation, invocation.delivery, run_id=run_id)
            # The executor closed the run (audit, budget, the note) before re-raising.
            # error_kind "shutdown" tells its caller a restart cut it (a slot's retry
            # resumes it).
            if wrapped is not None and wrapped.final is not None:
                return replace(wrapped.final, error_kind="shutdown")
            return RunResult(
                run_id=run_id,
                status=RunStatus.CANCELLED,
                error=_SHUTDOWN_ERROR,
                error_kind="shutdown",
                note=SHUTDOWN_NOTE,
            )
        finally:
            self._flights.discard(flight)
            flight.done.set()

    async def _refuse(
        self, invocation: Invocation, delivery: Delivery | None, *, run_id: str | None = None
    ) -> RunResult:
        """A run that will not start because coterie is stopping: no audit row (nothing
        ran, nothing was reserved), one short line for the member."""
        result = RunResult(
            run_id=run_id or invocation.run_id or uuid.uuid4().hex,
            status=RunStatus.REFUSED,
            error=_SHUTDOWN_ERROR,
            error_kind="shutdown",
            note=SHUTDOWN_REFUSAL,
        )
        if delivery is not None:
            try:
                await delivery.start()
                await delivery.finish(result)
            except Exception:  # the member may not be told; the shutdown goes on
                log.warning("could not tell a member that coterie is restarting", exc_info=True)
        return result

    # --- shutdown ----------------------------------------------------------------------

    def stop_intake(self) -> None:
        """Refuse new runs from now on (idempotent)."""
        self._accepting = False

    async def drain(
        self,
        grace_s: float,
        *,
        clock: Clock | None = None,
        before_cut: Callable[[], None] | None = None,
    ) -> DrainReport:
        """Stop intake; refuse runs still waiting in a lane; let running runs finish
        within ``grace_s`` seconds (timed on ``clock``, default the runner's); cancel
        the rest (their member is told) and wait for them to close. ``before_cut`` is
        called just before running runs are cancelled (not when none is)."""
        self.stop_intake()
        report = DrainReport()
        waiting = [f for f in self._flights if not f.running]
        for flight in waiting:
            self._stop(flight)
        report.refused = len(waiting)
        running = [f for f in self._flights if f.running]
        if running:
            log.info(
                "waiting up to %gs for %d run(s) to finish before stopping", grace_s, len(running)
            )
            await self._wait(running, grace_s, clock=clock or self.clock)
        late = [f for f in running if not f.done.is_set()]
        # Why not cancel a run that is delivering: its model work is over and paid for;
        # what is left is posting the answer (behind a rate limit, perhaps). Cancelling
        # it would lose the answer for a few seconds saved.
        cut = [f for f in late if not f.delivering]
        report.finished = len(running) - len(cut)
        if cut and before_cut is not None:
            before_cut()
        for flight in cut:
            self._stop(flight)
        report.cancelled = len(cut)
        report.stopped = [f.run_id for f in cut]
        # Why a real-time wait: a cancelled run only has to write its row and post a
        # note, a delivering one to post its answer; nothing here waits on the model.
        await self._wait([*waiting, *late], _CANCEL_WAIT_S, clock=RealClock())
        report.unfinished = [f.run_id for f in [*waiting, *late] if not f.done.is_set()]
        if report.unfinished:
            log.warning(
                "%d run(s) did not close in time: %s",
                len(report.unfinished),
                ", ".join(report.unfinished),
            )
        return report

    def _stop(self, flight: _Flight) -> None:
        if flight.done.is_set() or flight.stopped:
            return
        flight.stopped = True
        if flight.delivery is not None:
            flight.delivery.note_on_finish = SHUTDOWN_NOTE
        flight.task.cancel()

    @staticmethod
    async def _wait(flights: list[_Flight], seconds: float, *, clock: Clock) -> None:
        pending = [f for f in flights if not f.done.is_set()]
        if not pending:
            return

        async def all_done() -> None:
            for f in pending:
                await f.done.wait()

        waiter = asyncio.ensure_future(all_done())
        timer = asyncio.ensure_future(clock.sleep(seconds))
        try:
            await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (waiter, timer):
                t.cancel()
            await asyncio.gather(waiter, timer, return_exceptions=True)

    # --- lanes -----------------------------------------------------------------------

    @asynccontextmanager
    async def _slot(self, caller: Caller, delivery: Delivery | None) -> AsyncIterator[HeldSlot]:
        if self.lanes is None:
            yield _NoSlot()
            return

        async def on_position(position: int) -> None:
            if delivery is not None:
                await delivery.queued(position)

        tasks: set[asyncio.Task[None]] = set()
        async with self.lanes.slot(
            caller.user_id, on_position=_sync_or_async(on_position, tasks)
        ) as held:
            # Why: the "started" update must reach the member before the answer does.
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            yield held


def _delivering(flight: _Flight, held: HeldSlot) -> Callable[[], None]:
    """What the delivery calls when the run's model work is over."""

    def done() -> None:
        flight.delivering = True
        held.release()

    return done


def _sync_or_async(
    fn: Callable[[int], Coroutine[Any, Any, None]], tasks: set[asyncio.Task[None]]
) -> PositionCallback:
    """Lanes may call ``on_position`` synchronously; schedule the update then."""

    def call(position: int) -> Any:
        coro = fn(position)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - lanes run on the loop
            coro.close()
            return None
        task = loop.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    return call
