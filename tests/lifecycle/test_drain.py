"""The drain, in process, on a fake clock: runs that finish within the grace period,
runs cancelled after it (closed in the audit, settled, told why), runs waiting in a
lane and new requests refused with "restarting"."""

from __future__ import annotations

import asyncio
from typing import Any

from adapters.services.runner import SHUTDOWN_NOTE, SHUTDOWN_REFUSAL, Runner
from bot.lifecycle import Shutdown, _Grace
from executor.agent import (
    Caller,
    DeliveryReport,
    Invocation,
    RunnableAgent,
    RunResult,
    RunStatus,
)
from executor.budget import InMemoryBudgetLedger
from executor.events import RunDelivered, RunFinished
from executor.lanes import Lanes
from executor.messages import Message
from executor.run import Executor
from executor.testing import AuditCapture, FakeClock, RecordingDelivery, Reply, ScriptedModel

ALICE = Caller(user_id="alice", display_name="alice")


def _world(
    clock: FakeClock, *replies: Reply, slots: int = 4
) -> tuple[Runner, AuditCapture, InMemoryBudgetLedger]:
    audit = AuditCapture()
    budget = InMemoryBudgetLedger(10_000_000, clock=clock)
    executor = Executor(audit=audit, budget=budget, clock=clock)
    runner = Runner(executor, Lanes(slots=slots), clock=clock)
    runner._model = ScriptedModel(list(replies), sleep=clock.sleep)  # type: ignore[attr-defined]
    return runner, audit, budget


def _agent(runner: Runner) -> RunnableAgent:
    return RunnableAgent(name="t", model=runner._model)  # type: ignore[attr-defined]


def _start(
    runner: Runner, delivery: RecordingDelivery, caller: Caller = ALICE
) -> asyncio.Future[RunResult]:
    inv = Invocation(messages=[Message.user("hi")], caller=caller, delivery=delivery)
    return asyncio.ensure_future(runner.run(_agent(runner), inv))


async def _draining(
    runner: Runner, clock: FakeClock, grace: Any = None, before_cut: Any = None
) -> asyncio.Future[Any]:
    """Start a 20 s drain; return once it is waiting out its grace period on ``clock``."""
    before = clock.sleepers
    drain = asyncio.ensure_future(runner.drain(20, clock=grace, before_cut=before_cut))
    await clock.wait_for_sleepers(before + 1)
    return drain


def _finished(audit: AuditCapture) -> list[RunStatus]:
    return [e.result.status for e in audit.of_type(RunFinished)]


async def test_a_run_that_finishes_within_the_grace_period_is_left_alone() -> None:
    clock = FakeClock()
    runner, audit, budget = _world(clock, Reply(text="done", latency_s=3))
    delivery = RecordingDelivery()
    run = _start(runner, delivery)
    await clock.wait_for_sleepers(1)  # the model is thinking

    cuts: list[str] = []
    drain = await _draining(runner, clock, before_cut=lambda: cuts.append("cut"))
    await clock.advance(3)  # ... and the drain waits for it
    report = await drain

    assert (report.finished, report.cancelled, report.refused) == (1, 0, 0)
    assert cuts == []  # nothing was cut
    result = await run
    assert result.status is RunStatus.OK and result.output == "done"
    assert delivery.result is not None and delivery.result.note is None
    assert _finished(audit) == [RunStatus.OK]
    assert budget._open == {}


async def test_a_run_past_the_grace_period_is_cancelled_closed_and_told() -> None:
    clock = FakeClock()
    runner, audit, budget = _world(clock, Reply(text="never", latency_s=600))
    delivery = RecordingDelivery()
    run = _start(runner, delivery)
    await clock.wait_for_sleepers(1)

    cuts: list[bool] = []
    # Told before the cut, while the run still runs (an approval question it leaves
    # then says the restart cut it).
    drain = await _draining(runner, clock, before_cut=lambda: cuts.append(run.done()))
    await clock.advance(20)
    report = await drain

    assert (report.finished, report.cancelled, report.unfinished) == (0, 1, [])
    assert cuts == [False]
    result = await run  # the caller gets a result, not a CancelledError
    assert result.status is RunStatus.CANCELLED
    assert result.note == SHUTDOWN_NOTE
    assert result.error_kind == "shutdown"  # its caller knows a restart cut it
    assert report.stopped == [result.run_id]  # offered to resume by the bot's drain
    assert delivery.result is not None and delivery.result.run_id == result.run_id
    assert delivery.log[-1] == ("finish", RunStatus.CANCELLED)
    assert _finished(audit) == [RunStatus.CANCELLED]  # the audit row is closed
    assert budget._open == {}  # the reservation is settled
    assert not run.cancelled()


async def test_runs_waiting_in_a_lane_and_new_requests_are_refused_at_once() -> None:
    clock = FakeClock()
    runner, audit, _ = _world(clock, Reply(text="first", latency_s=5), slots=1)
    first, waiting = RecordingDelivery(), RecordingDelivery()
    run = _start(runner, first)
    await clock.wait_for_sleepers(1)
    queued = _start(runner, waiting)
    while runner.in_flight < 2:
        await asyncio.sleep(0)

    drain = await _draining(runner, clock)
    refused = await queued  # at once, before any time passes
    assert refused.status is RunStatus.REFUSED and refused.note == SHUTDOWN_REFUSAL
    assert waiting.log == [("start", None), ("finish", RunStatus.REFUSED)]

    late = RecordingDelivery()
    new = await runner.run(
        _agent(runner), Invocation([Message.user("hello?")], caller=ALICE, delivery=late)
    )
    assert new.status is RunStatus.REFUSED and late.result is not None
    assert late.result.note == SHUTDOWN_REFUSAL

    await clock.advance(5)
    report = await drain
    assert (report.finished, report.cancelled, report.refused) == (1, 0, 1)
    assert (await run).output == "first"
    # Only the run that ran has an audit row; nothing was reserved for the refused ones.
    assert _finished(audit) == [RunStatus.OK]


async def test_a_second_signal_cuts_the_grace_period_short() -> None:
    clock = FakeClock()
    runner, audit, _ = _world(clock, Reply(text="slow", latency_s=600))
    delivery = RecordingDelivery()
    run = _start(runner, delivery)
    await clock.wait_for_sleepers(1)

    shutdown = Shutdown()
    shutdown.on_signal(15)
    assert shutdown.requested.is_set() and not shutdown.hurry.is_set()
    drain = await _draining(runner, clock, grace=_Grace(20, shutdown.hurry, clock))
    shutdown.on_signal(2)  # SIGINT on top: no more waiting
    report = await drain
    assert report.cancelled == 1
    assert (await run).status is RunStatus.CANCELLED
    assert _finished(audit) == [RunStatus.CANCELLED]


async def test_a_host_cancel_is_not_swallowed() -> None:
    """Only the drain's own cancel becomes a result; anyone else's stays a cancel."""
    clock = FakeClock()
    runner, audit, _ = _world(clock, Reply(text="slow", latency_s=600))
    run = _start(runner, RecordingDelivery())
    await clock.wait_for_sleepers(1)
    run.cancel()
    try:
        await run
    except asyncio.CancelledError:
        pass
    else:  # pragma: no cover
        raise AssertionError("the cancel was swallowed")
    assert _finished(audit) == [RunStatus.CANCELLED]
    assert runner.in_flight == 0


# --- a run whose model work is over (issue 20) ------------------------------------------


class SlowPost(RecordingDelivery):
    """A delivery whose last push waits for ``posted`` (a rate-limited webhook)."""

    def __init__(self) -> None:
        super().__init__()
        self.pushing = asyncio.Event()
        self.posted = asyncio.Event()

    async def finish(self, result: RunResult) -> DeliveryReport:  # type: ignore[override]
        await super().finish(result)
        self.pushing.set()
        await self.posted.wait()
        return DeliveryReport(delivered=True)


async def test_a_run_gives_its_lane_slot_back_before_its_answers_last_push() -> None:
    """The next request starts while the answer before it waits to be posted; the run
    that gave its slot back still ends with its answer delivered and recorded."""
    clock = FakeClock()
    runner, audit, _ = _world(clock, Reply(text="first"), Reply(text="second"), slots=1)
    slow, nxt = SlowPost(), RecordingDelivery()
    first = _start(runner, slow)
    await slow.pushing.wait()  # the model is done; the answer waits to be posted
    second = _start(runner, nxt, caller=Caller(user_id="bob"))
    # Why a bound: on a lane held until the post, this would wait forever.
    done = await asyncio.wait_for(second, 30)
    assert done.status is RunStatus.OK and nxt.text_so_far == "second"
    assert not first.done() and runner.in_flight == 1  # still in flight: not forgotten
    slow.posted.set()
    result = await first
    assert result.status is RunStatus.OK and result.delivery == DeliveryReport(delivered=True)
    [delivered] = audit.of_type(RunDelivered)
    assert delivered.run_id == result.run_id and delivered.delivered
    assert runner.in_flight == 0


async def test_the_drain_lets_a_run_post_its_answer_after_the_grace_period() -> None:
    """Its model work is over and paid for: cancelling it would only lose the answer."""
    clock = FakeClock()
    runner, audit, budget = _world(clock, Reply(text="done"))
    slow = SlowPost()
    run = _start(runner, slow)
    await slow.pushing.wait()
    drain = await _draining(runner, clock)
    await clock.advance(20)  # the grace period is over; the answer is still on its way
    for _ in range(20):
        await asyncio.sleep(0)
    assert not run.done()
    slow.posted.set()
    report = await drain
    assert (report.finished, report.cancelled, report.unfinished) == (1, 0, [])
    result = await run
    assert result.status is RunStatus.OK and result.note is None
    assert result.delivery == DeliveryReport(delivered=True)
    assert _finished(audit) == [RunStatus.OK]
    assert [e.delivered for e in audit.of_type(RunDelivered)] == [True]
    assert budget._open == {}
