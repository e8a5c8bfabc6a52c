"""Test doubles that ship with the kernel: a scripted model, a function model, a
resolver of one model for every tier, an audit capture, a checkpoint capture, a
recording delivery, an observer of runs' ends and a fake clock.

Usage::

    model = ScriptedModel([call("calculator", expression="2+2"), "It is 4."])
    result = await Executor(tools=registry).run(
        RunnableAgent(model=model, tools=("calculator",)), Invocation([Message.user("2+2?")])
    )
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from executor.agent import RunResult
from executor.events import RunEvent, RunFinished
from executor.messages import Message, TextPart, ToolCallPart, ToolResultPart, Usage
from executor.models.base import (
    Model,
    ModelProfile,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    TextDelta,
    ToolCallEvent,
)
from executor.ports import Checkpoint, Delivery, InMemoryAuditSink, InMemoryCheckpoints

__all__ = [
    "TEST_PROFILE",
    "AuditCapture",
    "CheckpointCapture",
    "FakeClock",
    "FunctionModel",
    "RecordingDelivery",
    "Reply",
    "RunEnds",
    "ScriptedModel",
    "ScriptedTiers",
    "call",
]

# What the doubles can do unless told otherwise: images in, JSON-schema output,
# a 32k window (so a test reaches compaction without megabytes of text).
TEST_PROFILE = ModelProfile(
    provider="test", context_window=32_000, structured_output="json_schema", sees_images=True
)

_ids = itertools.count(1)


def call(name: str, /, **arguments: Any) -> ToolCallPart:
    """A tool call for a script."""
    return ToolCallPart(id=f"call_{next(_ids)}", name=name, arguments=arguments)


@dataclass
class Reply:
    """One scripted answer: text and/or tool calls, optional stream chunks and usage."""

    text: str = ""
    tool_calls: list[ToolCallPart] = field(default_factory=list)
    chunks: list[str] | None = None  # stream deltas; default: the text in one chunk
    usage: Usage | None = None
    latency_s: float = 0.0  # awaited on the model's clock before answering
    fail_after_chunks: Exception | None = None  # raise mid-stream after the chunks


ScriptItem = str | Reply | ToolCallPart | list[ToolCallPart] | BaseException


def _as_reply(item: ScriptItem) -> Reply | BaseException:
    if isinstance(item, BaseException):
        return item
    if isinstance(item, str):
        return Reply(text=item)
    if isinstance(item, ToolCallPart):
        return Reply(tool_calls=[item])
    if isinstance(item, list):
        return Reply(tool_calls=list(item))
    return item


def _response(reply: Reply, name: str, request: ModelRequest) -> ModelResponse:
    parts: list[Any] = []
    if reply.text:
        parts.append(TextPart(text=reply.text))
    parts.extend(reply.tool_calls)
    usage = reply.usage or Usage(
        input_tokens=sum(len(p.text) for m in request.messages for p in m.parts if p.type == "text")
        // 4
        + 1,
        output_tokens=len(reply.text) // 4 + 1 + 20 * len(reply.tool_calls),
        requests=1,
    )
    return ModelResponse(
        message=Message(role="assistant", parts=tuple(parts)),
        usage=usage,
        model=name,
        stop_reason="tool_use" if reply.tool_calls else "end_turn",
    )


class ScriptedModel:
    """Answers from a queue: text, tool calls, stream chunks, errors. Records requests.

    When the script runs out it repeats ``default`` (or raises if None).
    """

    def __init__(
        self,
        script: Iterable[ScriptItem] = (),
        *,
        name: str = "test:scripted",
        default: ScriptItem | None = "ok",
        sleep: Callable[[float], Awaitable[None]] | None = None,
        profile: ModelProfile = TEST_PROFILE,
    ) -> None:
        self._script: list[ScriptItem] = list(script)
        self._name = name
        self.profile = profile
        self._default = default
        self._sleep = sleep or asyncio.sleep
        self.requests: list[ModelRequest] = []

    @property
    def name(self) -> str:
        return self._name

    def push(self, *items: ScriptItem) -> None:
        self._script.extend(items)

    def _next(self, request: ModelRequest) -> Reply:
        self.requests.append(request)
        if self._script:
            item = self._script.pop(0)
        elif self._default is not None:
            item = self._default
        else:
            raise AssertionError("ScriptedModel: the script ran out")
        reply = _as_reply(item)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def generate(self, request: ModelRequest) -> ModelResponse:
        reply = self._next(request)
        if reply.latency_s:
            await self._sleep(reply.latency_s)
        if reply.fail_after_chunks is not None:
            raise reply.fail_after_chunks
        return _response(reply, self._name, request)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        reply = self._next(request)
        if reply.latency_s:
            await self._sleep(reply.latency_s)
        chunks = reply.chunks if reply.chunks is not None else ([reply.text] if reply.text else [])
        for chunk in chunks:
            yield TextDelta(chunk)
        if reply.fail_after_chunks is not None:
            raise reply.fail_after_chunks
        for tc in reply.tool_calls:
            yield ToolCallEvent(tc)
        yield ResponseDone(_response(reply, self._name, request))


class FunctionModel:
    """A model whose answer is computed by a function of the request."""

    def __init__(
        self,
        fn: Callable[[ModelRequest], ScriptItem | Awaitable[ScriptItem]],
        *,
        name: str = "test:function",
        profile: ModelProfile = TEST_PROFILE,
    ) -> None:
        self._fn = fn
        self._name = name
        self.profile = profile
        self.requests: list[ModelRequest] = []

    @property
    def name(self) -> str:
        return self._name

    async def _reply(self, request: ModelRequest) -> Reply:
        self.requests.append(request)
        out = self._fn(request)
        # Why a Reply or a str first: isinstance against the Awaitable ABC is slow, and
        # benchmarks count this double's time as the kernel's.
        if not isinstance(out, Reply | str) and isinstance(out, Awaitable):
            out = await out
        reply = _as_reply(out)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def generate(self, request: ModelRequest) -> ModelResponse:
        return _response(await self._reply(request), self._name, request)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        reply = await self._reply(request)
        for chunk in (
            reply.chunks if reply.chunks is not None else ([reply.text] if reply.text else [])
        ):
            yield TextDelta(chunk)
        for tc in reply.tool_calls:
            yield ToolCallEvent(tc)
        yield ResponseDone(_response(reply, self._name, request))


class ScriptedTiers:
    """A model resolver whose every tier is the same model (a :class:`ScriptedModel`,
    say), estimated at ``micros_per_token`` micro-dollars a token, in or out."""

    def __init__(
        self,
        model: Model,
        *,
        tiers: tuple[str, ...] = ("fast", "standard", "smart"),
        default_tier: str = "standard",
        micros_per_token: int = 1,
    ) -> None:
        self.model = model
        self.tiers = tiers
        self.default_tier = default_tier
        self.micros_per_token = micros_per_token

    def resolve(self, tier: str | None = None) -> Model:
        return self.model

    def estimate_micros(self, tier: str | None, input_tokens: int, output_tokens: int) -> int:
        return (input_tokens + output_tokens) * self.micros_per_token


class RunEnds:
    """An executor observer: each run's ``RunFinished``, in order, for a test to await
    (``event = await ends.next()``) instead of sleeping."""

    def __init__(self) -> None:
        self.runs: asyncio.Queue[RunFinished] = asyncio.Queue()

    async def on_event(self, event: RunEvent) -> None:
        if isinstance(event, RunFinished):
            self.runs.put_nowait(event)

    async def next(self, timeout_s: float = 10.0) -> RunFinished:
        """The next run's end; ``TimeoutError`` if none comes within ``timeout_s``."""
        return await asyncio.wait_for(self.runs.get(), timeout_s)


class AuditCapture(InMemoryAuditSink):
    """An audit sink for assertions."""

    def kinds(self, run_id: str | None = None) -> list[str]:
        return [type(e).__name__ for e in self.events if run_id is None or e.run_id == run_id]

    def of_type(self, kind: type[RunEvent] | Any) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


class CheckpointCapture(InMemoryCheckpoints):
    """Checkpoints that remember every save and keep each run's last one after it
    ended (as a crash would leave it): ``last(run_id)`` is what a resume starts from."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[Checkpoint] = []
        self.dropped: list[str] = []
        self._last: dict[str, Checkpoint] = {}

    async def save(self, checkpoint: Checkpoint) -> None:
        await super().save(checkpoint)
        self.history.append(checkpoint)
        self._last[checkpoint.run_id] = checkpoint

    async def tool_done(self, run_id: str, result: ToolResultPart) -> None:
        await super().tool_done(run_id, result)
        if run_id in self.saved:
            self._last[run_id] = self.saved[run_id]

    async def drop(self, run_id: str) -> None:
        await super().drop(run_id)
        self.dropped.append(run_id)

    def last(self, run_id: str) -> Checkpoint:
        return self._last[run_id]


class RecordingDelivery(Delivery):
    """A delivery that keeps what it was given, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []
        self.text_so_far = ""
        self.result: RunResult | None = None
        self.finished = asyncio.Event()

    async def start(self) -> None:
        self.log.append(("start", None))

    async def text(self, delta: str) -> None:
        self.text_so_far += delta
        self.log.append(("text", delta))

    async def reset(self) -> None:
        self.text_so_far = ""
        self.log.append(("reset", None))

    async def status(self, line: str) -> None:
        self.log.append(("status", line))

    async def finish(self, result: RunResult) -> None:
        self.result = result
        self.log.append(("finish", result.status))
        self.finished.set()


class FakeClock:
    """A clock that moves only when told: ``await clock.advance(5)``.

    ``sleep`` parks the caller until the clock passes its wake time; ``advance``
    wakes every sleeper that is due, in order, letting each run before the next.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._start = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._t = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        # Made on first use: a Condition binds to the running loop, and a clock
        # may be built before there is one.
        self._changed: asyncio.Condition | None = None

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._t)

    def monotonic(self) -> float:
        return self._t

    @property
    def sleepers(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._t + seconds, next(self._seq), fut))
        await self._notify()
        await fut

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        changed = self._condition()
        async with changed:
            changed.notify_all()

    async def wait_for_sleepers(self, n: int = 1) -> None:
        """Wait until at least ``n`` tasks are parked in ``sleep``."""
        changed = self._condition()
        async with changed:
            await changed.wait_for(lambda: self.sleepers >= n)

    async def advance(self, seconds: float) -> None:
        target = self._t + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, fut = heapq.heappop(self._sleepers)
            self._t = max(self._t, when)
            if not fut.done():
                fut.set_result(None)
                # Let the woken task run before waking the next one.
                for _ in range(5):
                    await asyncio.sleep(0)
        self._t = target
        for _ in range(5):
            await asyncio.sleep(0)
