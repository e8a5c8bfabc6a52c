"""StreamingDelivery against a fake sink and a fake clock: no sleeping, no Discord."""

from __future__ import annotations

import asyncio
from typing import Any

from adapters.discord.streaming import StreamingDelivery
from executor.agent import Caller, RunResult, RunStatus
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

    async def send(self, content: str) -> Any:
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


async def test_queue_position_then_started() -> None:
    clock, sink = FakeClock(), FakeSink()
    d = StreamingDelivery(sink, clock=clock, interval=0)
    await d.queued(2)
    await sink.wait_push()
    assert sink.messages == ["-# waiting in line (position 2)"]
    await d.start()
    await sink.wait_push()
    assert sink.messages == ["-# working…"]
    await d.text("answer")
    await d.finish(ok())
    assert sink.messages == ["answer"]


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
