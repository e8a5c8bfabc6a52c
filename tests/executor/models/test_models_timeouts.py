"""Failover's first-token and idle timeouts (issue 20): a provider that accepts the
request and hangs is left after the tier's first-token timeout, one that stalls
mid-stream after its idle timeout, and the next candidate answers.

The real SDKs talk over TCP to loopback servers (``loopback.py``): one accepts and
hangs, one answers. Time is a fake clock the tests move: no sleeps, no timed
assertions, and the attempt's recorded latency is exactly the timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from executor.agent import Invocation, RunnableAgent, RunStatus
from executor.errors import AllModelsFailed
from executor.events import ModelAttemptEvent
from executor.messages import Message, Usage
from executor.models.base import (
    KeepAlive,
    ModelProfile,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    StreamReset,
    TextDelta,
)
from executor.models.config import DEFAULT_TIERS, load_tier_config
from executor.models.fallback import FallbackModel
from executor.models.providers import ProviderRegistry, ProviderSettings
from executor.models.tiers import TierResolver
from executor.ports import InMemoryAuditSink
from executor.run import Executor
from executor.testing import FakeClock, RecordingDelivery
from tests.executor.models.loopback import (
    PARTIAL_TEXT,
    AnsweringServer,
    HangingServer,
    HangMode,
)

REQ = ModelRequest(messages=[Message.user("hi")])
ANSWER = "Answered by the fallback."
PRIMARY = "anthropic:claude-haiku-4-5"
FALLBACK = "openai:gpt-5-mini"


@dataclass
class Loopback:
    hang: HangingServer
    answer: AnsweringServer
    clock: FakeClock
    tiers: TierResolver


@asynccontextmanager
async def loopback(mode: HangMode) -> AsyncIterator[Loopback]:
    """The default tiers, Anthropic on a server that hangs, OpenAI on one that answers."""
    hang, answer = HangingServer(mode), AnsweringServer(ANSWER)
    await hang.start()
    await answer.start()
    registry = ProviderRegistry(
        ProviderSettings(
            anthropic_api_key="sk-ant-test",
            anthropic_base_url=hang.url,
            openai_api_key="sk-test",
            openai_base_url=answer.url + "/v1",
        )
    )
    clock = FakeClock()
    try:
        yield Loopback(
            hang, answer, clock, TierResolver(load_tier_config(None, {}), registry, clock=clock)
        )
    finally:
        await registry.aclose()
        await hang.stop()
        await answer.stop()


async def collect(events: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [e async for e in events]


def done_of(events: list[StreamEvent]) -> ModelResponse:
    done = events[-1]
    assert isinstance(done, ResponseDone)
    return done.response


# --- the real SDKs against a loopback server that hangs -----------------------------------


@pytest.mark.parametrize("mode", ["silent", "headers"])
async def test_a_provider_that_accepts_and_hangs_is_left_at_the_first_token_timeout(
    mode: HangMode,
) -> None:
    async with loopback(mode) as lb:
        tier = lb.tiers.tier("fast")
        assert tier.first_token_s < tier.timeout_s
        task = asyncio.create_task(collect(lb.tiers.resolve("fast").stream(REQ)))
        await lb.hang.hanging.wait()
        await lb.clock.wait_for_sleepers(1)
        await lb.clock.advance(tier.first_token_s - 1)
        assert not task.done() and lb.answer.requests == 0  # still waiting on the primary
        await lb.clock.advance(1)
        events = await task

    response = done_of(events)
    assert response.model == FALLBACK and response.text == ANSWER
    timed_out, answered = response.attempts
    assert (timed_out.model, timed_out.error_kind) == (PRIMARY, "provider_timeout")
    assert "first-token timeout" in (timed_out.error or "")
    assert timed_out.latency_ms == tier.first_token_s * 1000  # not the 30 s deadline
    assert (answered.model, answered.error) == (FALLBACK, None)
    assert not any(isinstance(e, StreamReset) for e in events)  # nothing to take back
    assert lb.tiers.cooldowns.cooling(PRIMARY)


async def test_a_stream_that_stalls_after_text_is_reset_and_fails_over_at_the_idle_timeout() -> (
    None
):
    async with loopback("after_text") as lb:
        tier = lb.tiers.tier("fast")
        seen: list[StreamEvent] = []
        got_text = asyncio.Event()

        async def consume() -> None:
            async for event in lb.tiers.resolve("fast").stream(REQ):
                seen.append(event)
                if isinstance(event, TextDelta):
                    got_text.set()

        task = asyncio.create_task(consume())
        await got_text.wait()
        await lb.clock.wait_for_sleepers(1)  # the idle timer, the first one's is gone
        await lb.clock.advance(tier.idle_s - 1)
        assert not task.done() and lb.answer.requests == 0
        await lb.clock.advance(1)
        await task

    texts = [e.text for e in seen if isinstance(e, TextDelta)]
    assert texts[0] == PARTIAL_TEXT
    reset = next(i for i, e in enumerate(seen) if isinstance(e, StreamReset))
    assert seen[reset] == StreamReset(f"{PRIMARY} failed mid-stream: provider_timeout")
    after = "".join(e.text for e in seen[reset:] if isinstance(e, TextDelta))
    assert after == ANSWER
    response = done_of(seen)
    assert [(a.model, a.error_kind) for a in response.attempts] == [
        (PRIMARY, "provider_timeout"),
        (FALLBACK, None),
    ]
    assert "idle timeout" in (response.attempts[0].error or "")


class Watching(RecordingDelivery):
    def __init__(self) -> None:
        super().__init__()
        self.got_text = asyncio.Event()

    async def text(self, delta: str) -> None:
        await super().text(delta)
        self.got_text.set()


async def test_a_run_takes_back_the_stalled_text_and_records_the_timeout() -> None:
    """Through the run loop: the member's message is reset, the audit has the timeout."""
    async with loopback("after_text") as lb:
        audit = InMemoryAuditSink()
        delivery = Watching()
        run = asyncio.create_task(
            Executor(audit=audit, clock=lb.clock).run(
                RunnableAgent(model=lb.tiers.resolve("fast")),
                Invocation(messages=[Message.user("hi")], delivery=delivery),
            )
        )
        await delivery.got_text.wait()
        await lb.clock.wait_for_sleepers(2)  # the run's time limit and the idle timer
        await lb.clock.advance(lb.tiers.tier("fast").idle_s)
        result = await run

    assert result.status == RunStatus.OK and result.output == ANSWER
    assert delivery.log[1:3] == [("text", PARTIAL_TEXT), ("reset", None)]
    assert delivery.text_so_far == ANSWER
    attempts = [e.attempt for e in audit.events if isinstance(e, ModelAttemptEvent)]
    assert [(a.model, a.error_kind) for a in attempts] == [
        (PRIMARY, "provider_timeout"),
        (FALLBACK, None),
    ]


# --- the rules, on models the test scripts -------------------------------------------------


class Paced:
    """Streams ``script``; a number in it is that many seconds of silence on ``clock``."""

    def __init__(
        self,
        name: str,
        clock: FakeClock,
        script: list[float | StreamEvent],
        *,
        silent_while_thinking: bool = False,
    ) -> None:
        self._name = name
        self.clock = clock
        self.script = script
        self._profile = ModelProfile(silent_while_thinking=silent_while_thinking)

    @property
    def name(self) -> str:
        return self._name

    @property
    def profile(self) -> ModelProfile:
        return self._profile

    def _response(self, text: str) -> ModelResponse:
        return ModelResponse(
            message=Message.assistant(text), usage=Usage(requests=1), model=self.name
        )

    async def generate(self, request: ModelRequest) -> ModelResponse:
        text = ""
        for step in self.script:
            if isinstance(step, int | float):
                await self.clock.sleep(step)
            elif isinstance(step, TextDelta):
                text += step.text
        return self._response(text)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        text = ""
        for step in self.script:
            if isinstance(step, int | float):
                await self.clock.sleep(step)
                continue
            if isinstance(step, TextDelta):
                text += step.text
            yield step
        yield ResponseDone(self._response(text))


def backup(clock: FakeClock) -> Paced:
    return Paced("p:backup", clock, [TextDelta("rescued")])


def timed(clock: FakeClock, *models: Paced, timeout_s: float = 60) -> FallbackModel:
    return FallbackModel(models, timeout_s=timeout_s, first_token_s=10, idle_s=10, clock=clock)


async def test_keepalives_hold_off_the_idle_timeout() -> None:
    """A tool call's arguments streaming for longer than the idle timeout, in pieces."""
    clock = FakeClock()
    script: list[float | StreamEvent] = [TextDelta("Writing the file.")]
    for _ in range(6):
        script += [8, KeepAlive()]  # 48 s in all, never 10 s of silence
    task = asyncio.create_task(
        collect(timed(clock, Paced("p:slow", clock, script), backup(clock)).stream(REQ))
    )
    for _ in range(6):
        await clock.wait_for_sleepers(2)  # the model's pause and the idle timer
        await clock.advance(8)
    response = done_of(await task)
    assert response.model == "p:slow"
    assert [a.error for a in response.attempts] == [None]


async def test_silence_after_the_first_event_is_an_idle_timeout() -> None:
    clock = FakeClock()
    stalls = Paced("p:stalls", clock, [KeepAlive(), 11, TextDelta("late")])
    task = asyncio.create_task(collect(timed(clock, stalls, backup(clock)).stream(REQ)))
    await clock.wait_for_sleepers(2)
    await clock.advance(10)
    response = done_of(await task)
    assert response.model == "p:backup"
    assert response.attempts[0].error_kind == "provider_timeout"
    assert response.attempts[0].latency_ms == 10_000
    assert "idle timeout" in (response.attempts[0].error or "")


async def test_a_silent_thinker_has_until_the_deadline_for_its_first_token() -> None:
    clock = FakeClock()
    thinker = Paced(
        "openai:gpt-5.4", clock, [25, TextDelta("thought it through")], silent_while_thinking=True
    )
    task = asyncio.create_task(
        collect(timed(clock, thinker, backup(clock), timeout_s=30).stream(REQ))
    )
    await clock.wait_for_sleepers(2)  # its thinking and the deadline
    await clock.advance(25)
    response = done_of(await task)
    assert response.model == "openai:gpt-5.4" and response.text == "thought it through"

    hung = Paced("openai:gpt-5.4", clock, [999], silent_while_thinking=True)
    task = asyncio.create_task(collect(timed(clock, hung, timeout_s=30).stream(REQ)))
    await clock.wait_for_sleepers(2)
    await clock.advance(30)
    with pytest.raises(AllModelsFailed) as info:
        await task
    (attempt,) = info.value.attempts
    assert attempt.error_kind == "provider_timeout" and attempt.latency_ms == 30_000
    assert "30s deadline" in (attempt.error or "")


async def test_the_deadline_still_bounds_a_stream_that_never_stalls() -> None:
    clock = FakeClock()
    trickle: list[float | StreamEvent] = []
    for _ in range(10):
        trickle += [7, TextDelta(".")]  # a dot every 7 s: never idle, never done in 30 s
    model = timed(clock, Paced("p:trickle", clock, trickle), backup(clock), timeout_s=30)
    task = asyncio.create_task(collect(model.stream(REQ)))
    for pause in (7, 7, 7, 7, 2):  # dots at 7, 14, 21, 28; the deadline at 30
        await clock.wait_for_sleepers(2)
        await clock.advance(pause)
    events = await task
    response = done_of(events)
    assert response.model == "p:backup"
    assert response.attempts[0].latency_ms == 30_000
    assert "30s deadline" in (response.attempts[0].error or "")
    assert any(isinstance(e, StreamReset) for e in events)


async def test_a_hung_generate_is_left_at_the_deadline_on_the_clock() -> None:
    """``generate`` has no first token: the deadline alone applies, on the same clock."""
    clock = FakeClock()
    model = timed(clock, Paced("p:hangs", clock, [999]), backup(clock), timeout_s=30)
    task = asyncio.create_task(model.generate(REQ))
    await clock.wait_for_sleepers(2)
    await clock.advance(30)
    response = await task
    assert response.model == "p:backup" and response.text == "rescued"
    assert response.attempts[0].error_kind == "provider_timeout"
    assert response.attempts[0].latency_ms == 30_000


def test_every_default_tier_has_a_first_token_and_an_idle_timeout() -> None:
    for tier in DEFAULT_TIERS.values():
        assert 0 < tier.first_token_s < tier.timeout_s, tier.name
        assert 0 < tier.idle_s < tier.timeout_s, tier.name
