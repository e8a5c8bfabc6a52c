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
the time the consumer takes with each event), and ``first_token_s`` can demand
that the stream starts sooner.

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

from executor.errors import (
    AllModelsFailed,
    ModelAPIError,
    ProviderConnectionError,
    ProviderTimeout,
    RateLimited,
)
from executor.models.base import (
    Attempt,
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
        cooldowns: Cooldowns | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        name: str | None = None,
    ) -> None:
        if not candidates:
            raise ValueError("FallbackModel needs at least one candidate")
        self.candidates = tuple(candidates)
        self.timeout_s = timeout_s
        self.first_token_s = first_token_s
        self.cooldowns = cooldowns or Cooldowns(monotonic=monotonic)
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
            started = time.perf_counter()
            try:
                try:
                    async with asyncio.timeout(self.timeout_s):
                        response = await model.generate(request)
                except TimeoutError as exc:
                    raise self._timeout(model) from exc
            except ModelAPIError as exc:
                self._failed(model, exc, started, attempts)
                continue
            self.cooldowns.ok(model.name)
            attempts.append(Attempt(model=model.name, latency_ms=_ms_since(started)))
            return dataclasses.replace(response, attempts=tuple(attempts))
        raise AllModelsFailed(attempts, tier=self._tier_name())

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        attempts: list[Attempt] = []
        loop = asyncio.get_running_loop()
        for model in self.cooldowns.order(self.candidates):
            started = time.perf_counter()
            deadline = loop.time() + self.timeout_s
            sent_output = False
            events = aiter(model.stream(request))
            try:
                while True:
                    wait = deadline - loop.time()
                    if not sent_output and self.first_token_s is not None:
                        wait = min(wait, self.first_token_s)
                    try:
                        # Why per event: a timeout around a `yield` would cancel the
                        # consumer's work, not the provider's.
                        async with asyncio.timeout(max(wait, 0.0)):
                            event = await anext(events)
                    except StopAsyncIteration:
                        raise ProviderConnectionError(
                            f"{model.name}: the stream ended without a final response",
                            model=model.name,
                        ) from None
                    except TimeoutError as exc:
                        raise self._timeout(model) from exc
                    if isinstance(event, ResponseDone):
                        self.cooldowns.ok(model.name)
                        attempts.append(Attempt(model=model.name, latency_ms=_ms_since(started)))
                        yield ResponseDone(
                            dataclasses.replace(event.response, attempts=tuple(attempts))
                        )
                        return
                    if isinstance(event, TextDelta | ToolCallEvent):
                        sent_output = True
                    yield event
            except ModelAPIError as exc:
                self._failed(model, exc, started, attempts)
                if sent_output:
                    yield StreamReset(reason=f"{model.name} failed mid-stream: {exc.kind}")
            finally:
                await _aclose(events)
        raise AllModelsFailed(attempts, tier=self._tier_name())

    # --- helpers -------------------------------------------------------------------

    def _timeout(self, model: Model) -> ProviderTimeout:
        return ProviderTimeout(
            f"{model.name}: no answer within our {self.timeout_s:g}s deadline", model=model.name
        )

    def _failed(
        self, model: Model, exc: ModelAPIError, started: float, attempts: list[Attempt]
    ) -> None:
        attempts.append(
            Attempt(
                model=model.name,
                latency_ms=_ms_since(started),
                error=str(exc),
                error_kind=exc.kind,
            )
        )
        if not exc.retriable:
            raise exc
        self.cooldowns.fail(model.name, exc)

    def _tier_name(self) -> str | None:
        return self._name.removeprefix("tier:") if self._name.startswith("tier:") else None


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


async def _aclose(events: AsyncIterator[StreamEvent]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
