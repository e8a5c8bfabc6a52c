"""The outbox (issue 20): turns at a Discord bucket, the most urgent first, rendered when
the turn comes; the queue board, one message per channel for everyone in line. Fake
sinks and a fake clock: no sleeping, no Discord."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from adapters.discord.outbox import BOARD_LISTED, Outbox, Pacer, QueueBoard, Urgency
from adapters.discord.streaming import StreamingDelivery
from executor.agent import RunResult, RunStatus
from executor.testing import FakeClock
from tests.adapters.test_streaming_delivery import FakeSink, FlakySink


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


class GatedSink(FakeSink):
    """A FakeSink whose requests wait for ``gate`` (a request on its way)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def send(self, content: str, *, nonce: int | None = None) -> Any:
        self.entered.set()
        await self.gate.wait()
        return await super().send(content, nonce=nonce)

    async def edit(self, handle: Any, content: str) -> Any:
        self.entered.set()
        await self.gate.wait()
        return await super().edit(handle, content)


def ok(text: str = "") -> RunResult:
    return RunResult(run_id="r", status=RunStatus.OK, output=text)


# --- Pacer -----------------------------------------------------------------------------


async def test_one_request_at_a_time_the_most_urgent_first() -> None:
    pacer = Pacer()
    order: list[str] = []
    release = asyncio.Event()

    async def hold() -> None:
        async with pacer.turn(lambda: Urgency.UPDATE):
            order.append("holder")
            await release.wait()

    async def ask(name: str, urgency: Urgency) -> None:
        async with pacer.turn(lambda: urgency):
            order.append(name)

    holder = asyncio.create_task(hold())
    await _settle()
    waiters = [
        asyncio.create_task(ask("queue", Urgency.QUEUE)),
        asyncio.create_task(ask("update", Urgency.UPDATE)),
        asyncio.create_task(ask("final", Urgency.FINAL)),
        asyncio.create_task(ask("first", Urgency.FIRST)),
        asyncio.create_task(ask("update2", Urgency.UPDATE)),
    ]
    await _settle()
    assert order == ["holder"] and pacer.waiting == 5
    release.set()
    await asyncio.gather(holder, *waiters)
    # Most urgent first; among equals, first come first served.
    assert order == ["holder", "first", "final", "update", "update2", "queue"]


async def test_urgency_is_asked_when_the_turn_frees() -> None:
    pacer = Pacer()
    order: list[str] = []
    release = asyncio.Event()
    urgency = {"a": Urgency.UPDATE, "b": Urgency.UPDATE}

    async def hold() -> None:
        async with pacer.turn(lambda: Urgency.UPDATE):
            await release.wait()

    async def ask(name: str) -> None:
        async with pacer.turn(lambda: urgency[name]):
            order.append(name)

    holder = asyncio.create_task(hold())
    await _settle()
    a, b = asyncio.create_task(ask("a")), asyncio.create_task(ask("b"))
    await _settle()
    urgency["b"] = Urgency.FIRST  # b's first words came while it waited
    release.set()
    await asyncio.gather(holder, a, b)
    assert order == ["b", "a"]


async def test_a_cancelled_waiter_leaves_and_a_granted_one_passes_its_turn_on() -> None:
    pacer = Pacer()
    release = asyncio.Event()
    got: list[str] = []

    async def hold() -> None:
        async with pacer.turn(lambda: 0):
            await release.wait()

    async def ask(name: str) -> None:
        async with pacer.turn(lambda: 0):
            got.append(name)

    holder = asyncio.create_task(hold())
    await _settle()
    gone = asyncio.create_task(ask("gone"))
    late = asyncio.create_task(ask("late"))
    await _settle()
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert pacer.waiting == 1
    release.set()
    await asyncio.gather(holder, late)
    assert got == ["late"]

    # Granted and cancelled in the same breath: the next waiter still gets a turn.
    release.clear()
    holder = asyncio.create_task(hold())
    await _settle()
    first, second = asyncio.create_task(ask("first")), asyncio.create_task(ask("second"))
    await _settle()
    release.set()
    await asyncio.sleep(0)  # the holder leaves: "first" is granted, not yet resumed
    first.cancel()
    await asyncio.gather(holder, first, second, return_exceptions=True)
    assert got[-1] == "second"
    async with pacer.turn(lambda: 0):  # and the bucket is free again
        pass


async def test_a_waiter_cancelled_just_before_the_turn_frees_is_skipped() -> None:
    """Its future is cancelled at once but its task leaves the line only when it next
    runs; a turn freed in between goes to the next live waiter. (Under 100 concurrent
    chats this once granted the turn to the cancelled one: the pacer stayed busy
    forever and every later answer in that channel was never sent.)"""
    pacer = Pacer()
    got: list[str] = []

    async def ask(name: str, urgency: int) -> None:
        async with pacer.turn(lambda: urgency):
            got.append(name)

    async with pacer.turn(lambda: 0):
        gone = asyncio.create_task(ask("gone", 2))
        live = asyncio.create_task(ask("live", 1))
        await _settle()
        assert pacer.waiting == 2
        gone.cancel()  # its future is cancelled now; its task runs later
    # The holder leaves in that same breath: the turn skips "gone" for "live".
    await asyncio.gather(gone, live, return_exceptions=True)
    assert gone.cancelled() and got == ["live"]
    assert pacer.waiting == 0
    async with pacer.turn(lambda: 0):  # and the bucket is free again
        got.append("after")
    assert got == ["live", "after"]


# --- deliveries sharing a bucket ---------------------------------------------------------


async def test_a_newcomers_first_words_go_before_other_answers_edits() -> None:
    """Two answers stream into one webhook. While a request is on its way, the older
    answer's next edit and its final state wait; a newcomer's first words go first."""
    clock, sink = FakeClock(), GatedSink()
    pacer = Pacer()
    old = StreamingDelivery(sink, clock=clock, interval=0, pacers=lambda _b: pacer)
    new = StreamingDelivery(sink, clock=clock, interval=0, pacers=lambda _b: pacer)
    await old.start()
    await old.text("old answer")
    await sink.wait_push()
    sink.gate.clear()
    sink.entered.clear()
    await old.text(", more")
    await sink.entered.wait()  # the edit is on its way, holding the bucket
    await old.text(", and more")  # waits for a turn
    await new.start()
    await new.text("new words")  # waits for a turn
    await _settle()
    finishing = asyncio.create_task(old.finish(ok()))
    await _settle()
    sink.gate.set()
    await sink.wait_push()
    await finishing
    await _settle()
    assert [c[2] for c in sink.calls] == [
        "old answer",
        "old answer, more",  # was on its way
        "new words",  # the newcomer's first words, before the old answer's last edit
        "old answer, more, and more",  # its final state, in one request
    ]
    await new.finish(ok())


async def test_an_answer_that_waited_for_its_turn_goes_out_whole_in_one_request() -> None:
    clock, sink = FakeClock(), GatedSink()
    pacer = Pacer()
    other = StreamingDelivery(sink, clock=clock, interval=0, pacers=lambda _b: pacer)
    await other.start()
    sink.gate.clear()
    await other.text("someone else's words")
    await sink.entered.wait()  # the bucket is busy
    d = StreamingDelivery(sink, clock=clock, interval=0, pacers=lambda _b: pacer)
    await d.start()
    await d.text("The answer")
    await d.text(" is 42.")
    await _settle()
    finishing = asyncio.create_task(d.finish(ok()))
    await _settle()
    sink.gate.set()
    assert (await finishing).delivered
    mine = [c for c in sink.calls if "answer" in c[2]]
    assert mine == [("send", 1, "The answer is 42.")]  # one post, no edits
    await other.finish(ok())


# --- QueueBoard --------------------------------------------------------------------------


def _board(clock: FakeClock, sink: FakeSink, **kw: float) -> QueueBoard:
    return QueueBoard(
        sink, Pacer(), clock=clock, after=kw.get("after", 2.0), every=kw.get("every", 5.0)
    )


async def test_a_short_wait_shows_no_board() -> None:
    clock, sink = FakeClock(), FakeSink()
    board = _board(clock, sink)
    board.place("t1", 11, 1)
    await clock.wait_for_sleepers(1)
    await clock.advance(1.0)
    board.place("t1", 11, 0)  # it started within a second
    await clock.advance(5.0)
    await _settle()
    assert sink.calls == [] and board.shown is None


async def test_the_board_lists_places_edits_at_most_every_few_seconds_and_goes() -> None:
    clock, sink = FakeClock(), FakeSink()
    board = _board(clock, sink)
    board.place("a1", 11, 3)
    board.place("b1", 22, 1)
    board.place("a2", 11, 2)
    await clock.wait_for_sleepers(1)
    assert sink.calls == []  # not before the line has waited ``after``
    await clock.advance(2.0)
    await sink.wait_push()
    assert sink.messages == ["-# waiting in line: 1. <@22> · 2. <@11> · 3. <@11>"]
    # The line moves within a second: b1 starts, then a2; a1 is next.
    board.place("b1", 22, 0)
    board.place("a1", 11, 2)
    board.place("a2", 11, 1)
    board.place("a2", 11, 0)
    board.place("a1", 11, 1)
    await clock.wait_for_sleepers(1)
    assert len(sink.calls) == 1  # held back: at most one edit per ``every``
    await clock.advance(5.0)
    await sink.wait_push()
    assert sink.calls[-1] == ("edit", 0, "-# waiting in line: 1. <@11>")  # the latest
    board.place("a1", 11, 0)  # nobody waits: taken down at once
    await _settle()
    assert sink.calls[-1] == ("delete", 0, "")
    assert board.shown is None and board.waiting == 0


async def test_a_long_line_names_the_first_and_counts_the_rest() -> None:
    clock, sink = FakeClock(), FakeSink()
    board = _board(clock, sink, after=0.0)
    for n in range(1, 300):
        board.place(n, 1000 + n, n)
    await sink.wait_push()
    text = sink.messages[0]
    assert text.startswith("-# waiting in line: 1. <@1001> · 2. <@1002>")
    assert f"{BOARD_LISTED}. <@{1000 + BOARD_LISTED}>" in text
    assert text.endswith(f"(and {299 - BOARD_LISTED} more)")
    assert len(text) < 2000


async def test_the_board_goes_after_every_answer_waiting_in_its_bucket() -> None:
    """The board shares the channel's bucket with the bot's own answers there (no
    webhook): when a turn frees, answers waiting for it go first."""
    clock, sink = FakeClock(), FakeSink()
    outbox = Outbox(clock=clock, board_after=0.0, board_every=0.0)
    busy, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:  # another request on its way in the bucket
        async with outbox.pacer(sink.bucket).turn(lambda: Urgency.FINAL):
            busy.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await busy.wait()
    board = outbox.board(sink)
    assert outbox.board(sink) is board  # one per channel
    board.place("t", 5, 1)
    answer = StreamingDelivery(sink, clock=clock, interval=0, pacers=outbox.pacer)
    await answer.start()
    await answer.text("words")
    await _settle()
    assert sink.calls == []
    release.set()
    await holder
    await answer.finish(ok())
    await _settle()
    assert [c[2] for c in sink.calls] == ["words", "-# waiting in line: 1. <@5>"]
    board.place("t", 5, 0)
    await _settle()
    assert sink.calls[-1] == ("delete", 1, "")


async def test_a_board_that_fails_unexpectedly_tries_again_and_leaves_no_dead_task() -> None:
    """The board's task is awaited by nobody: whatever a post or edit raises is logged
    there and tried again ``every`` seconds later, never left for asyncio to report
    ("Task exception was never retrieved")."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    old = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
    try:
        clock = FakeClock()
        sink = FlakySink()
        board = _board(clock, sink, after=0.0, every=5.0)
        sink.failures["send"] = [RuntimeError("Session is closed")]
        board.place("t", 7, 3)
        await clock.wait_for_sleepers(1)  # failed, and waits to try again
        assert sink.messages == [] and board.shown is None
        await clock.advance(5.0)
        await sink.wait_push()
        assert sink.messages == ["-# waiting in line: 3. <@7>"]
        board.place("t", 7, 0)
        await _settle()
        assert sink.calls[-1] == ("delete", 0, "")
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(old)
    assert seen == []
