"""Failover: a model that wraps models and tries them in order.

:class:`FallbackModel` moves to the next candidate only on a retriable
:class:`~executor.errors.ModelAPIError` (rate limit, overload, 5xx, timeout,
connection, one provider's auth failure). A :class:`~executor.errors.BadRequest`
is re-raised at once (the same request fails everywhere), and any other
exception is our own bug and propagates untouched. When every candidate fails,
:class:`~executor.errors.AllModelsFailed` carries every attempt.

Each attempt runs under *our* deadline (``timeout_s``), not the SDK's: the SDK's
read timeout resets with every byte, so a trickling endpoint never times out.
For a stream the deadline counts the time spent waiting on the provider (not
the time the consumer takes with each event), and two shorter limits catch a
provider that accepted the request and then hung, long before the deadline:

- ``first_token_s``: the stream's first event must come within this (the
  request, the response's headers and the first event all count against it);
- ``idle_s``: every later event must come within this of the one before.

Either one raises :class:`~executor.errors.ProviderTimeout`, so failover moves
on. An event is anything the provider sent, a
:class:`~executor.models.base.KeepAlive` included (a tool call's arguments
streaming are not a stall). A candidate whose profile is
``silent_while_thinking`` (it sends nothing while it reasons) has until the
deadline for its first event. A stall after text was streamed fails over the
way any mid-stream error does: :class:`~executor.models.base.StreamReset`
takes the partial text back, and the next candidate answers from the start.
The failed attempt is marked ``billed`` (with the provider's usage when it reported
one): the provider began to answer, so it charges the input, and the run loop
charges the run for it. Before the next candidate is asked, the stream sends
:class:`~executor.models.base.Failover` with the failed attempt: the run loop records
and charges it then (not when the answer comes), grows the run's reservation to
cover it, and may stop there (the member's budget cannot cover asking again).
A call that does not stream (``generate``) has no first token to wait for: only
the deadline applies to it.

Time is the :class:`~executor.ports.Clock`'s (``clock``; a fake one in tests),
the limits run on the event loop's timers when it is the real clock.

A candidate that failed cools down for ``cooldown_s`` (or the provider's
``retry-after`` when longer) in a :class:`Cooldowns` shared by every tier and
run, so a dead provider is not tried first every time. Cooling candidates go
after the others, soonest-recovered first; they are still tried.

Its :attr:`~FallbackModel.profile` is the profile of the candidate tried first
now (pydantic-ai's ``WrapperModel.profile``): the batteries size compaction and
choose a structured-output mode for the model that will answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType

from executor.errors import (
    AllModelsFailed,
    ModelAPIError,
    ProviderConnectionError,
    ProviderTimeout,
    RateLimited,
)
from executor.models.base import (
    Attempt,
    Failover,
    Model,
    ModelProfile,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    StreamReset,
    TextDelta,
    ToolCallEvent,
    profile_of,
)
from executor.ports import Clock, RealClock

__all__ = ["Cooldowns", "FallbackModel"]


class Cooldowns:
    """When each failed model may be preferred again. Shared across tiers and runs."""

    def __init__(
        self, cooldown_s: float = 60.0, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.cooldown_s = cooldown_s
        self._monotonic = monotonic
        self._until: dict[str, float] = {}

    def fail(self, model: str, error: ModelAPIError) -> None:
        wait = self.cooldown_s
        if isinstance(error, RateLimited) and error.retry_after:
            wait = max(wait, error.retry_after)
        self._until[model] = self._monotonic() + wait

    def ok(self, model: str) -> None:
        self._until.pop(model, None)

    def cooling(self, model: str) -> bool:
        until = self._until.get(model)
        return until is not None and until > self._monotonic()

    def order(self, models: Sequence[Model]) -> list[Model]:
        """Ready models in their order, then cooling ones, soonest-recovered first."""
        ready = [m for m in models if not self.cooling(m.name)]
        cooling = sorted(
            (m for m in models if self.cooling(m.name)), key=lambda m: self._until[m.name]
        )
        return ready + cooling


class FallbackModel:
    """A :class:`~executor.models.base.Model` that fails over between ``candidates``."""

    def __init__(
        self,
        candidates: Sequence[Model],
        *,
        timeout_s: float = 60.0,
        first_token_s: float | None = None,
        idle_s: float | None = None,
        cooldowns: Cooldowns | None = None,
        monotonic: Callable[[], float] | None = None,
        clock: Clock | None = None,
        name: str | None = None,
    ) -> None:
        if not candidates:
            raise ValueError("FallbackModel needs at least one candidate")
        self.candidates = tuple(candidates)
        self.timeout_s = timeout_s
        self.first_token_s = first_token_s
        self.idle_s = idle_s
        self.clock: Clock = clock if clock is not None else RealClock()
        self.cooldowns = cooldowns or Cooldowns(monotonic=monotonic or self.clock.monotonic)
        self._name = name or "fallback:" + ",".join(m.name for m in self.candidates)

    @property
    def name(self) -> str:
        return self._name

    @property
    def profile(self) -> ModelProfile:
        """The profile of the candidate the next request goes to first.

        Before any failure that is the first candidate; after a failover the one
        that answered, since the failed ones cool down behind it (the cooldowns
        are shared, so every run sees the same order).
        """
        return profile_of(self.cooldowns.order(self.candidates)[0])

    async def generate(self, request: ModelRequest) -> ModelResponse:
        attempts: list[Attempt] = []
        for model in self.cooldowns.order(self.candidates):
            started = self.clock.monotonic()
            try:
                try:
                    async with self._within(self.timeout_s):
                        response = await model.generate(request)
                except TimeoutError as exc:
                    raise self._timeout(model, self._deadline_note()) from exc
            except ModelAPIError as exc:
                self._failed(model, exc, started, attempts, billed=exc.usage is not None)
                continue
            self.cooldowns.ok(model.name)
            attempts.append(Attempt(model=model.name, latency_ms=self._ms_since(started)))
            return dataclasses.replace(response, attempts=tuple(attempts))
        raise AllModelsFailed(attempts, tier=self._tier_name())

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        attempts: list[Attempt] = []
        order = self.cooldowns.order(self.candidates)
        for n, model in enumerate(order, 1):
            started = self.clock.monotonic()
            deadline = started + self.timeout_s
            # Why not for a silent thinker: its silence is its reasoning, not a hang.
            first = None if profile_of(model).silent_while_thinking else self.first_token_s
            heard = False  # any event yet: the first-token timeout is over
            sent_output = False  # text or a tool call reached the consumer
            events = aiter(model.stream(request))
            try:
                while True:
                    wait, note = self._wait(deadline, self.idle_s if heard else first, heard)
                    try:
                        # Why per event: a timeout around a `yield` would cancel the
                        # consumer's work, not the provider's.
                        async with self._within(wait):
                            event = await anext(events)
                    except StopAsyncIteration:
                        raise ProviderConnectionError(
                            f"{model.name}: the stream ended without a final response",
                            model=model.name,
                        ) from None
                    except TimeoutError as exc:
                        raise self._timeout(model, note) from exc
                    heard = True
                    if isinstance(event, ResponseDone):
                        self.cooldowns.ok(model.name)
                        attempts.append(
                            Attempt(model=model.name, latency_ms=self._ms_since(started))
                        )
                        yield ResponseDone(
                            dataclasses.replace(event.response, attempts=tuple(attempts))
                        )
                        return
                    if isinstance(event, TextDelta | ToolCallEvent):
                        sent_output = True
                    yield event
            except ModelAPIError as exc:
                # Why billed once heard: the provider had accepted the request and begun
                # to answer, so it charges the input even though its answer is dropped.
                self._failed(model, exc, started, attempts, billed=heard or exc.usage is not None)
                if sent_output:
                    yield StreamReset(reason=f"{model.name} failed mid-stream: {exc.kind}")
                if n < len(order):
                    # Why before the next candidate is asked: the consumer charges a
                    # billed attempt and covers it in the run's budget first (it may stop
                    # here), and a stop or a crash while the next one answers still
                    # knows the failed one. Why after the reset: it is the last event
                    # before the next candidate is asked, so the consumer may count that
                    # request as sent once it has handled it.
                    yield Failover(attempts[-1])
            finally:
                await _aclose(events)
        raise AllModelsFailed(attempts, tier=self._tier_name())

    # --- helpers -------------------------------------------------------------------

    def _wait(self, deadline: float, limit: float | None, heard: bool) -> tuple[float, str]:
        """How long to wait for the next event, and what to say if it does not come."""
        left = max(deadline - self.clock.monotonic(), 0.0)
        if limit is None or limit >= left:
            return left, self._deadline_note()
        if heard:
            return limit, f"the stream stalled for {limit:g}s (the idle timeout)"
        return limit, f"nothing streamed within the {limit:g}s first-token timeout"

    def _deadline_note(self) -> str:
        return f"no answer within our {self.timeout_s:g}s deadline"

    def _within(self, seconds: float) -> AbstractAsyncContextManager[object]:
        if isinstance(self.clock, RealClock):
            return asyncio.timeout(seconds)
        return _ClockTimeout(self.clock, seconds)

    def _timeout(self, model: Model, note: str) -> ProviderTimeout:
        return ProviderTimeout(f"{model.name}: {note}", model=model.name)

    def _ms_since(self, started: float) -> float:
        return (self.clock.monotonic() - started) * 1000.0

    def _failed(
        self,
        model: Model,
        exc: ModelAPIError,
        started: float,
        attempts: list[Attempt],
        *,
        billed: bool = False,
    ) -> None:
        attempts.append(
            Attempt(
                model=model.name,
                latency_ms=self._ms_since(started),
                error=str(exc),
                error_kind=exc.kind,
                billed=billed,
                usage=exc.usage,
            )
        )
        if not exc.retriable:
            raise exc
        self.cooldowns.fail(model.name, exc)

    def _tier_name(self) -> str | None:
        return self._name.removeprefix("tier:") if self._name.startswith("tier:") else None


class _ClockTimeout:
    """``asyncio.timeout(seconds)`` with the seconds counted on a :class:`Clock`.

    Why not ``asyncio.timeout`` alone: it counts the event loop's time, and a test's
    fake clock moves only when told. The clock's ``sleep`` fires the timeout; the
    cancellation and its translation to :class:`TimeoutError` stay asyncio's.
    """

    def __init__(self, clock: Clock, seconds: float) -> None:
        self._clock = clock
        self._seconds = seconds
        self._timeout = asyncio.timeout(None)
        self._timer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()
        self._timer = asyncio.create_task(self._fire())

    async def _fire(self) -> None:
        await self._clock.sleep(self._seconds)
        self._timeout.reschedule(asyncio.get_running_loop().time())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self._timer is not None:
            self._timer.cancel()
        await self._timeout.__aexit__(exc_type, exc, tb)
        return None


async def _aclose(events: AsyncIterator[StreamEvent]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
