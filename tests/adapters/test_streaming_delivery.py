"""StreamingDelivery against a fake sink and a fake clock: no sleeping, no Discord."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import aiohttp

from adapters.discord.streaming import StreamingDelivery
from executor.agent import Caller, DeliveryReport, RunResult, RunStatus
from executor.ports import ApprovalDecision, ApprovalRequest
from executor.testing import FakeClock


class FakeSink:
    def __init__(self, prefix: str = "") -> None:
        self._prefix = prefix
        self.calls: list[tuple[str, int, str]] = []  # (op, message index, content)
        self.messages: list[str] = []
        self.typings = 0
        self.pushed = asyncio.Event()

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def bucket(self) -> str:
        return "channel:1"

    async def send(self, content: str, *, nonce: int | None = None) -> Any:
        self.messages.append(content)
        self.calls.append(("send", len(self.messages) - 1, content))
        self.pushed.set()
        return len(self.messages) - 1

    async def edit(self, handle: Any, content: str) -> Any:
        self.messages[handle] = content
        self.calls.append(("edit", handle, content))
        self.pushed.set()
        return handle

    async def delete(self, handle: Any) -> None:
        self.calls.append(("delete", handle, ""))

    async def typing(self) -> None:
        self.typings += 1

    async def ready(self) -> None:
        return None

    async def wait_push(self) -> None:
        await self.pushed.wait()
        self.pushed.clear()


def ok(text: str = "") -> RunResult:
    return RunResult(run_id="r", status=RunStatus.OK, output=text)


async def test_first_token_posts_at_once_then_edits_are_throttled() -> None:
    clock, sink = FakeClock(), FakeSink()
    d = StreamingDelivery(sink, clock=clock, interval=1.0)
    await d.start()
    await d.text("Hel")
    await sink.wait_push()
    assert sink.calls == [("send", 0, "Hel")]
    await d.text("lo")
    await d.text(", world")
    await clock.wait_for_sleepers(1)  # the flusher waits out the interval
    assert len(sink.calls) == 1
    await clock.advance(1.0)
    await sink.wait_push()
    assert sink.calls[-1] == ("edit", 0, "Hello, world")
    await d.finish(ok("Hello, world"))
    assert sink.messages == ["Hello, world"]
    assert len(sink.calls) == 2  # the final render was already shown


async def test_typing_until_first_token() -> None:
    clock, sink = FakeClock(), FakeSink()
    d = StreamingDelivery(sink, clock=clock, typing_every=8)
    await d.start()
    await clock.wait_for_sleepers(1)
    assert sink.typings == 1
    await clock.advance(8)
    await clock.wait_for_sleepers(1)
    assert sink.typings == 2
    await d.text("hi")
    await sink.wait_push()
    await clock.advance(30)
    assert sink.typings == 2
    await d.finish(ok("hi"))


async def test_long_answers_continue_in_new_messages() -> None:
    clock, sink = FakeClock(), FakeSink(prefix="**researcher**\n")
    d = StreamingDelivery(sink, clock=clock)
    await d.start()
    para = "p" * 1500
    for chunk in (para, "\n\n", para, "\n\n", para):
        await d.text(chunk)
    await d.finish(ok())
    assert len(sink.messages) == 3
    assert all(len(m) <= 2000 for m in sink.messages)
    assert sink.messages[0].startswith("**researcher**\n")
    assert not sink.messages[1].startswith("**")


async def test_status_line_shows_until_text_resumes() -> None:
    clock, sink = FakeClock(), FakeSink()
    d = StreamingDelivery(sink, clock=clock, interval=0)
    await d.start()
    await d.status("reading example.com")
    await sink.wait_push()
    assert sink.messages == ["-# reading example.com"]
    await d.text("Found it.")
    await sink.wait_push()
    assert sink.messages == ["Found it."]
    await d.finish(ok())


async def test_a_note_ends_a_run_that_was_not_a_plain_success() -> None:
    clock, sink = FakeClock(), FakeSink()
    d = StreamingDelivery(sink, clock=clock)
    d.note("Only the last 3 messages were read.")
    result = RunResult(run_id="r", status=RunStatus.BUDGET_DENIED, note="budget exceeded: ...")
    await d.finish(result)  # refused before start: finish alone
    assert sink.messages == ["-# Only the last 3 messages were read.\n-# budget exceeded: ..."]


async def test_reset_discards_text_and_extra_messages() -> None:
    clock, sink = FakeClock(), FakeSink()
    d = StreamingDelivery(sink, clock=clock, interval=0)
    await d.start()
    await d.text("x" * 2500)
    await sink.wait_push()
    assert len(sink.messages) == 2
    await d.reset()
    await d.text("short")
    await d.finish(ok())
    assert sink.messages[0] == "short"
    assert ("delete", 1, "") in sink.calls


async def test_a_place_in_line_goes_to_the_board_not_to_a_message() -> None:
    """A queued request has no placeholder of its own (one per request, each edited as
    the line moved, was most of what a 300-run queue sent): its place goes to
    ``show_place`` (the channel's queue board), and is taken back when it starts."""
    clock, sink = FakeClock(), FakeSink()
    places: list[int] = []
    d = StreamingDelivery(sink, clock=clock, interval=0, show_place=places.append)
    await d.queued(2)
    await d.queued(1)
    for _ in range(5):
        await asyncio.sleep(0)
    assert sink.calls == [] and places == [2, 1]
    await d.queued(0)
    await d.start()
    await d.text("answer")
    await d.finish(ok())
    assert places == [2, 1, 0]  # taken back once
    assert sink.messages == ["answer"]


async def test_a_request_refused_while_in_line_leaves_the_board() -> None:
    clock, sink = FakeClock(), FakeSink()
    places: list[int] = []
    d = StreamingDelivery(sink, clock=clock, show_place=places.append)
    await d.queued(7)
    refused = RunResult(run_id="r", status=RunStatus.REFUSED, note="coterie is restarting")
    await d.start()
    await d.finish(refused)
    assert places == [7, 0]
    assert sink.messages == ["-# coterie is restarting"]


async def test_approval_is_asked_through_the_asker_and_denied_without_one() -> None:
    clock, sink = FakeClock(), FakeSink()
    asked: list[str] = []

    async def ask(req: ApprovalRequest) -> ApprovalDecision:
        asked.append(req.tool)
        return ApprovalDecision(approved=True)

    req = ApprovalRequest(run_id="r", caller=Caller(), tool="t", call_id="c", arguments={})
    d = StreamingDelivery(sink, clock=clock, ask_approval=ask)
    assert (await d.ask_approval(req)).approved
    assert asked == ["t"]
    bare = StreamingDelivery(FakeSink(), clock=clock)
    assert not (await bare.ask_approval(req)).approved


# --- the first words, the queue, transient failures (issues 19 and 20) ----------------


class FlakySink(FakeSink):
    """A FakeSink whose next calls of one kind fail with the given errors first."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__(prefix)
        self.failures: dict[str, list[BaseException]] = {"send": [], "edit": [], "typing": []}
        self.nonces: list[int | None] = []

    def _maybe_fail(self, op: str) -> None:
        pending = self.failures[op]
        if pending:
            raise pending.pop(0)

    async def send(self, content: str, *, nonce: int | None = None) -> Any:
        self.nonces.append(nonce)
        self._maybe_fail("send")
        return await super().send(content, nonce=nonce)

    async def edit(self, handle: Any, content: str) -> Any:
        self._maybe_fail("edit")
        return await super().edit(handle, content)

    async def typing(self) -> None:
        self._maybe_fail("typing")
        await super().typing()


def _reset() -> BaseException:
    return aiohttp.ServerDisconnectedError()


async def test_plain_start_posts_no_placeholder_and_the_first_words_go_at_once() -> None:
    clock, sink = FakeClock(), FakeSink()
    d = StreamingDelivery(sink, clock=clock, interval=1.0)
    await d.queued(0)  # the lane had room: started at once
    await d.start()
    await asyncio.sleep(0)
    assert sink.calls == []  # no bare "…": the typing indicator says we are on it
    await d.text("Hi")
    await sink.wait_push()
    assert sink.calls == [("send", 0, "Hi")]
    await d.finish(ok("Hi"))


async def test_first_text_edit_goes_before_the_throttle_after_a_status_line() -> None:
    clock, sink = FakeClock(), FakeSink()
    d = StreamingDelivery(sink, clock=clock, interval=1.0)
    await d.start()
    await d.status("reading example.com")
    await sink.wait_push()
    assert sink.messages == ["-# reading example.com"]
    await d.text("The answer")
    await sink.wait_push()  # ... which go out now, the clock never moved
    assert clock.monotonic() == 0
    assert sink.calls[-1] == ("edit", 0, "The answer")
    await d.text(" is 42.")
    await clock.wait_for_sleepers(1)  # later edits are throttled from the first words
    assert sink.calls[-1] == ("edit", 0, "The answer")
    await clock.advance(1.0)
    await sink.wait_push()
    assert sink.calls[-1] == ("edit", 0, "The answer is 42.")
    await d.finish(ok())


async def test_a_final_edit_that_fails_in_transit_is_tried_again() -> None:
    clock, sink = FakeClock(), FlakySink()
    d = StreamingDelivery(sink, clock=clock, interval=1.0, retry_delays=(0.0, 0.0, 0.0))
    await d.start()
    await d.text("Hel")
    await sink.wait_push()
    await d.text("lo")
    await clock.wait_for_sleepers(1)  # the throttle holds "lo" back
    sink.failures["edit"] = [_reset(), ConnectionResetError(104, "Connection reset by peer")]
    report = await d.finish(ok("Hello"))
    assert report == DeliveryReport(delivered=True)
    assert sink.calls == [("send", 0, "Hel"), ("edit", 0, "Hello")]
    assert sink.messages == ["Hello"]


async def test_an_edit_that_keeps_failing_posts_the_answer_anew() -> None:
    clock, sink = FakeClock(), FlakySink()
    d = StreamingDelivery(sink, clock=clock, interval=1.0, retry_delays=())
    await d.start()
    await d.text("partial")
    await sink.wait_push()
    await d.text(" and the rest")
    sink.failures["edit"] = [_reset()]
    report = await d.finish(ok())
    assert report.delivered
    assert sink.messages == ["partial", "partial and the rest"]
    assert sink.calls[-1] == ("send", 1, "partial and the rest")


async def test_an_answer_that_never_arrives_is_reported_not_raised() -> None:
    clock, sink = FakeClock(), FlakySink()
    d = StreamingDelivery(sink, clock=clock, retry_delays=(0.0,))
    await d.start()
    sink.failures["send"] = [_reset(), _reset(), _reset(), _reset()]
    await d.text("lost")
    report = await d.finish(ok())
    assert report == DeliveryReport(
        delivered=False, error="ServerDisconnectedError: Server disconnected"
    )
    assert sink.messages == []


async def test_retried_posts_carry_one_nonce() -> None:
    clock, sink = FakeClock(), FlakySink()
    d = StreamingDelivery(sink, clock=clock, retry_delays=(0.0,))
    await d.start()
    sink.failures["send"] = [_reset()]
    await d.text("once")
    assert (await d.finish(ok())).delivered
    assert len(sink.nonces) == 2 and sink.nonces[0] == sink.nonces[1] is not None


async def test_transport_errors_leave_no_unretrieved_task_exception() -> None:
    """The flusher and the typing task used to die on a transport error with nobody
    awaiting them: asyncio's "Task exception was never retrieved"."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    old = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
    try:
        clock, sink = FakeClock(), FlakySink()
        d = StreamingDelivery(sink, clock=clock, retry_delays=())
        sink.failures["typing"] = [_reset()]
        await d.start()
        await clock.wait_for_sleepers(1)  # the typing task went on after its failure
        sink.failures["send"] = [_reset()]
        await d.text("first")
        for _ in range(10):
            await asyncio.sleep(0)
        assert sink.messages == []  # that push failed; the flusher is alive
        await d.text(" words")
        await sink.wait_push()
        assert sink.messages == ["first words"]
        assert (await d.finish(ok())).delivered
        del d
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(old)
    assert seen == []


async def test_an_unexpected_error_in_the_flusher_is_logged_and_the_flusher_goes_on(
    caplog: Any,
) -> None:
    """Not only the known transport errors: anything a push raises between two pushes
    (discord.py's "Session is closed" on a client that closed meanwhile, a bug) is
    logged where it happens; the flusher stays alive, the next change pushes, and no
    task dies with nobody to retrieve its exception."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    old = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
    try:
        clock, sink = FakeClock(), FlakySink()
        d = StreamingDelivery(sink, clock=clock, interval=0, retry_delays=())
        sink.failures["typing"] = [RuntimeError("typing broke")]
        await d.start()
        await clock.wait_for_sleepers(1)  # the typing task went on after its failure
        sink.failures["send"] = [RuntimeError("Session is closed")]
        await d.text("first")
        for _ in range(10):
            await asyncio.sleep(0)
        assert sink.messages == []
        await d.text(" words")
        await sink.wait_push()
        assert sink.messages == ["first words"]
        sink.failures["edit"] = [RuntimeError("Session is closed")]
        await d.text(" more")
        for _ in range(10):
            await asyncio.sleep(0)
        assert (await d.finish(ok())).delivered
        assert sink.messages == ["first words more"]
        del d
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(old)
    assert seen == []
    assert "Session is closed" in caplog.text
