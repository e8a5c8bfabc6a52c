"""One model call of a run (:class:`ModelCalls`, a part of
:class:`~executor.run.Executor`): the budget grown to cover it, the request recorded
before it is sent, the answer streamed to the delivery, each attempt recorded (and
charged when its provider billed it) as it happens, a failover's next candidate
recorded as a request of its own, a stop with the request in flight charged."""

from __future__ import annotations

import asyncio
import logging
import time

from executor._run_parts import RunParts, Stopped
from executor.agent import RunStatus
from executor.errors import BudgetExceeded, ModelAPIError
from executor.events import ModelAttemptEvent, ModelRequestEvent, TextDeltaEvent
from executor.hooks import RunState
from executor.messages import Usage
from executor.models.base import (
    Attempt,
    Failover,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamReset,
    TextDelta,
)
from executor.ports import CriticWatch
from executor.spend import InputCount

__all__ = ["ModelCalls"]

log = logging.getLogger("executor.run")


class ModelCalls(RunParts):
    """The executor's model calls."""

    async def _model_step(
        self, state: RunState, request: ModelRequest, watch: CriticWatch | None, streaming: bool
    ) -> ModelResponse:
        retry = 0
        money = state.budget
        count = state.count_input or InputCount()
        while True:
            try:
                for hook in self.hooks:
                    request = await hook.before_model_request(state, request)
                tokens = count(request.messages, request.tools)
                if money is not None:
                    request = await money.cover(state.usage.cost_micros, request, tokens)
            except BudgetExceeded as exc:
                # The next call, or a call a hook makes for it (a compaction), cannot be
                # covered: neither is made.
                raise Stopped(
                    RunStatus.BUDGET_EXHAUSTED,
                    "your budget cannot cover the next step",
                    budget=exc.details,
                ) from None
            unanswered = money.unanswered(tokens) if money is not None else 0
            owed = Usage(input_tokens=tokens, cost_micros=unanswered, requests=1)
            before = len(state.attempts)
            await self._emit(self._request_event(state, request, owed), watch)
            started = time.perf_counter()
            state.requesting = True
            try:
                if streaming:
                    response = await self._stream(state, request, watch, owed)
                else:
                    response = await state.model.generate(request)
            except asyncio.CancelledError:
                # The run was stopped (its deadline, the critic, its member, the host)
                # with the request in flight: its usage never arrives, but the provider
                # has billed the input. Charge that, on an attempt of its own.
                if money is not None:
                    money.call_done()
                if not state.requesting:
                    # Stopped between a failover and the next candidate's request: that
                    # one was never asked (the failed one is charged on its attempt).
                    raise
                state.requesting = False
                attempt = Attempt(
                    model=state.model.name,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    error="the run stopped before the model answered",
                    error_kind="stopped",
                )
                try:
                    # The charge is in the run's usage before the audit is written.
                    await self._record_attempt(state, attempt, owed, watch)
                except Exception:
                    # Why not raised: the stop must go on (the charge is in the run's
                    # usage, which it is settled to); the audit's error is in the log.
                    log.exception("run %s: recording the stopped request failed", state.run_id)
                raise
            except ModelAPIError as exc:
                if money is not None:
                    money.call_done()
                attempts = getattr(exc, "attempts", None) or [
                    Attempt(
                        model=exc.model or state.model.name,
                        latency_ms=(time.perf_counter() - started) * 1000,
                        error=str(exc),
                        error_kind=exc.kind,
                        billed=exc.usage is not None or bool(state.partial_text),
                        usage=exc.usage,
                    )
                ]
                await self._record_attempts(
                    state, list(attempts), watch, unanswered=owed, since=before
                )
                retry += 1
                # Why the cap first: past it no hook's work (a compaction) can help.
                try:
                    again = retry <= 2 and any(
                        [await h.on_model_error(state, exc, retry) for h in self.hooks]
                    )
                except BudgetExceeded as refused:
                    raise Stopped(
                        RunStatus.BUDGET_EXHAUSTED,
                        "your budget cannot cover the next step",
                        budget=refused.details,
                    ) from None
                if again:
                    continue
                raise
            except BaseException:
                if money is not None:
                    money.call_done()
                raise
            # Why no await between: the reservation always covers what the run spent
            # plus every call in flight (a judgement beside the run grows it too).
            state.add_usage(response.usage)
            if money is not None:
                money.call_done()
            attempts = list(response.attempts) or [
                Attempt(model=response.model, latency_ms=(time.perf_counter() - started) * 1000)
            ]
            # Why the usage on the attempt: it is written at once, so a crash before the
            # step's end still charges what this response cost.
            await self._record_attempts(
                state, attempts, watch, usage=response.usage, unanswered=owed, since=before
            )
            state.answered_by = response.model
            for hook in self.hooks:
                await hook.after_model_response(state, response)
            return response

    def _request_event(
        self, state: RunState, request: ModelRequest, owed: Usage
    ) -> ModelRequestEvent:
        """The request about to be sent (to a model, or to the next candidate after a
        failover): ``owed`` is what it is charged if its usage never arrives."""
        return ModelRequestEvent(
            run_id=state.run_id,
            at=self.clock.now(),
            step=state.steps,
            message_count=len(request.messages),
            input_tokens=owed.input_tokens,
            unanswered_micros=owed.cost_micros,
            attempts_before=len(state.attempts),
        )

    async def _record_attempts(
        self,
        state: RunState,
        attempts: list[Attempt],
        watch: CriticWatch | None,
        *,
        usage: Usage | None = None,
        unanswered: Usage | None = None,
        since: int = 0,
    ) -> None:
        """Record each attempt; ``usage`` (the response's) goes on the one that answered.

        A failed attempt the provider billed (it failed mid-stream) is charged to the
        run here, on its attempt: what the provider reported it cost, or else
        ``unanswered`` (the request's input at the run's price). An attempt recorded
        already, at its failover (:meth:`_failed_over`: in ``state.attempts`` from
        ``since`` on), is not recorded again.
        """
        known = state.attempts[since:]
        answered = len(attempts) - 1  # the last one that did not fail
        while answered >= 0 and attempts[answered].error:
            answered -= 1
        for i, a in enumerate(attempts):
            if any(a is k for k in known):
                continue
            if i == answered:
                # Its usage is the response's, which the step adds to the run.
                await self._record_attempt(state, a, usage, watch, charge=False)
            else:
                await self._record_attempt(state, a, _billed(a, unanswered), watch)

    async def _record_attempt(
        self,
        state: RunState,
        attempt: Attempt,
        cost: Usage | None,
        watch: CriticWatch | None,
        *,
        charge: bool = True,
    ) -> None:
        """One attempt on the run and in the audit (``cost`` on its row, written at
        once); with ``charge``, its cost is added to the run's usage too."""
        state.attempts.append(attempt)
        if charge and cost is not None:
            state.add_usage(cost)
        await self._emit(
            ModelAttemptEvent(
                run_id=state.run_id,
                at=self.clock.now(),
                step=state.steps,
                attempt=attempt,
                usage=cost,
            ),
            watch,
        )

    async def _failed_over(
        self,
        state: RunState,
        attempt: Attempt,
        request: ModelRequest,
        watch: CriticWatch | None,
        owed: Usage,
    ) -> None:
        """A candidate failed and the next is about to be asked (:class:`Failover`).

        The failed attempt is recorded and, when its provider billed it, charged now
        (written at once, so a stop or a crash while the next candidate answers charges
        both); the reservation grows to cover it before the next candidate is asked,
        and when the budget cannot cover that the run stops here, ``budget_exhausted``.
        Then the request to the next candidate is recorded as a request of its own
        (crash recovery charges its input if no attempt follows it).
        """
        state.requesting = False
        cost = _billed(attempt, owed)
        await self._record_attempt(state, attempt, cost, watch)
        money = state.budget
        if money is not None and cost is not None:
            try:
                await money.failed_over(state.usage.cost_micros)
            except BudgetExceeded as exc:
                raise Stopped(
                    RunStatus.BUDGET_EXHAUSTED,
                    "your budget cannot cover asking another model after one failed",
                    budget=exc.details,
                ) from None
        await self._emit(self._request_event(state, request, owed), watch)
        state.requesting = True

    async def _stream(
        self, state: RunState, request: ModelRequest, watch: CriticWatch | None, owed: Usage
    ) -> ModelResponse:
        delivery = state.delivery
        final: ModelResponse | None = None
        stream = state.model.stream(request)
        try:
            async for event in stream:
                if isinstance(event, TextDelta):
                    state.partial_text += event.text
                    await delivery.text(event.text)
                    if self.observers:
                        await self._emit(
                            TextDeltaEvent(
                                run_id=state.run_id, at=self.clock.now(), text=event.text
                            ),
                            None,
                        )
                elif isinstance(event, StreamReset):
                    state.partial_text = ""
                    await delivery.reset()
                elif isinstance(event, Failover):
                    await self._failed_over(state, event.attempt, request, watch, owed)
                elif isinstance(event, ResponseDone):
                    final = event.response
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        if final is None:
            raise ModelAPIError(
                "the model's stream ended without a response", model=state.model.name
            )
        return final


def _billed(attempt: Attempt, unanswered: Usage | None) -> Usage | None:
    """What a failed attempt cost: None unless the provider billed it."""
    if attempt.error is None or not attempt.billed:
        return None
    return attempt.usage if attempt.usage is not None else unanswered
