"""The bounded run loop: ``Executor.run(agent, invocation) -> RunResult``.

One run, in order:

1. resolve the model (the agent's own, or its tier through the resolver);
2. hooks' ``before_run`` (the dispatch guard refuses here, before any cost);
3. reserve the first model call's worst case (refusal: ``budget_denied``, nothing
   spent; see :mod:`executor.spend`);
4. the step loop, in a task of its own, raced against the runtime bound, the
   caller's cancel event and the critic's stop: the reservation grown to cover the
   next call (refusal: ``budget_exhausted``, with what the run has so far), model
   request (streamed when there is a delivery), tool calls (permission, approval,
   timeout), repeat;
5. always, whatever happened: settle the budget to the real cost, record
   ``RunFinished``, close the critic's watch, tell the delivery, and record
   ``RunDelivered`` when the delivery says whether the answer reached its member;
   then drop the run's checkpoint (kept when the host cancelled the run: a shutdown
   may offer it to resume).

Checkpoints (:class:`~executor.ports.Checkpoints`): before the first model call, and
after each response that asks for tools (before they run), the run saves where it
stands; a pending call that is neither read-only nor idempotent reports its result
as it finishes. ``Invocation.resume`` starts a new run from such a checkpoint: the
results it kept are reused, a read-only or idempotent call runs again, and any other
call asks the approver again (it may have run before the interruption).

The loop never knows which provider answered, except to record it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, runtime_checkable

from executor._deadlines import Deadlines, Group
from executor._trace import log_failure, new_ref
from executor.agent import DeliveryReport, Invocation, RunnableAgent, RunResult, RunStatus
from executor.budget import format_usd, out_of_budget_advice
from executor.errors import (
    AllModelsFailed,
    ApprovalDenied,
    BudgetDetails,
    BudgetExceeded,
    ConfigError,
    HostBusy,
    ModelAPIError,
    RunRefused,
    ToolFailed,
)
from executor.events import (
    ApprovalEvent,
    ModelAttemptEvent,
    ModelRequestEvent,
    RunDelivered,
    RunEvent,
    RunFinished,
    RunStarted,
    StepFinished,
    TextDeltaEvent,
    ToolCallFinished,
    ToolCallStarted,
    ToolChargeEvent,
)
from executor.hooks import RunHook, RunState
from executor.messages import Message, ToolCallPart, ToolResultPart, Usage
from executor.models.base import (
    Attempt,
    Failover,
    Model,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamReset,
    TextDelta,
    ToolDefinition,
)
from executor.ports import (
    ApprovalRequest,
    Approver,
    AuditSink,
    BudgetGate,
    Checkpoint,
    Checkpoints,
    Clock,
    Critic,
    CriticWatch,
    Delivery,
    DenyAllApprover,
    InMemoryAuditSink,
    InMemoryCheckpoints,
    NullDelivery,
    Observer,
    RealClock,
    RunControl,
    UnlimitedBudget,
)
from executor.redaction import excerpt, scrub
from executor.spend import InputCount, Price, RunBudget
from executor.tools.registry import ToolContext, ToolOutcome, ToolRegistry

__all__ = ["Executor", "ModelResolver", "outcome_note"]

log = logging.getLogger(__name__)

# How much of an unexpected exception's text the result (and so the audit) keeps.
_INTERNAL_EXCERPT = 300


@runtime_checkable
class ModelResolver(Protocol):
    """Turns a tier name into a model (with failover) and prices a run in advance."""

    def resolve(self, tier: str) -> Model: ...

    def estimate_micros(self, tier: str, input_tokens: int, output_tokens: int) -> int: ...


_DELTA_FREE = (TextDeltaEvent,)

# How many distinct system prompts an executor keeps built (personas, skills).
_SYSTEM_CACHE = 256


def _new_run_id() -> str:
    """``uuid.uuid4().hex`` without building a ``UUID`` (a few microseconds a run)."""
    n = int.from_bytes(os.urandom(16))
    n = (n & ~(0xF000 << 64) | (4 << 76)) & ~(0xC000 << 48) | (0x8000 << 48)
    return f"{n:032x}"


class _Stopped(Exception):
    """Internal: the step loop ended early with a status (bound reached, budget out)."""

    def __init__(
        self, status: RunStatus, reason: str, *, budget: BudgetDetails | None = None
    ) -> None:
        self.status = status
        self.reason = reason
        self.budget = budget
        super().__init__(reason)


class Executor:
    """The kernel's one entry point. Every port has a default: ``Executor()`` is
    a complete bounded in-memory agent (give the agent a ``model``)."""

    def __init__(
        self,
        *,
        models: ModelResolver | None = None,
        tools: ToolRegistry | None = None,
        audit: AuditSink | None = None,
        budget: BudgetGate | None = None,
        critic: Critic | None = None,
        approver: Approver | None = None,
        clock: Clock | None = None,
        observers: Sequence[Observer] = (),
        hooks: Sequence[RunHook] = (),
        checkpoints: Checkpoints | None = None,
    ) -> None:
        self.models = models
        self.tools = tools if tools is not None else ToolRegistry()
        self.audit: AuditSink = audit if audit is not None else InMemoryAuditSink()
        self.budget: BudgetGate = budget if budget is not None else UnlimitedBudget()
        self.critic = critic
        self.approver: Approver = approver if approver is not None else DenyAllApprover()
        self.clock: Clock = clock if clock is not None else RealClock()
        self.observers = list(observers)
        self.hooks = list(hooks)
        self.checkpoints: Checkpoints = (
            checkpoints if checkpoints is not None else InMemoryCheckpoints()
        )
        self._deadlines = Deadlines()
        # The system message of each prompt seen lately (frozen, so shared by runs).
        self._system: dict[str, Message] = {}

    # ------------------------------------------------------------------ public

    async def run(self, agent: RunnableAgent, invocation: Invocation) -> RunResult:
        run_id = invocation.run_id or _new_run_id()
        delivery: Delivery = invocation.delivery or NullDelivery()
        try:
            model = self._resolve(agent)
        except ConfigError as exc:
            result = RunResult(
                run_id=run_id, status=RunStatus.ERROR, error=str(exc), error_kind="config"
            )
            result.note = str(exc)
            await self._refused(agent, invocation, run_id, result, delivery, estimate=0)
            return result

        resume = invocation.resume
        state = RunState(
            run_id=run_id,
            agent=agent,
            invocation=invocation,
            model=model,
            delivery=delivery,
            messages=list(resume.messages)
            if resume is not None
            else [m for m in invocation.messages if m.role != "system"],
            started_monotonic=self.clock.monotonic(),
            count_input=InputCount(),
        )
        if resume is not None:
            _resumed(state, resume)
        money = RunBudget(self.budget, self._price(agent), price_of=self._tier_price)
        first_input, first_max = self._first_call(state)
        estimate = money.worst_case(first_input, first_max)

        try:
            for hook in self.hooks:
                await hook.before_run(state)
        except RunRefused as exc:
            result = RunResult(
                run_id=run_id, status=RunStatus.REFUSED, error=str(exc), error_kind="refused"
            )
            result.note = str(exc)
            await self._refused(agent, invocation, run_id, result, delivery, estimate=estimate)
            return result

        try:
            reservation = await money.open(invocation.caller, run_id, first_input, first_max)
        except BudgetExceeded as exc:
            result = RunResult(
                run_id=run_id,
                status=RunStatus.BUDGET_DENIED,
                error=str(exc),
                error_kind="budget",
                details={"budget": exc.details},
            )
            result.note = outcome_note(result)
            await self._refused(
                agent, invocation, run_id, result, delivery, estimate=exc.details.estimate_micros
            )
            return result

        state.budget = money
        return await self._run_reserved(state, reservation.amount_micros)

    # ------------------------------------------------------------------ internals

    def _resolve(self, agent: RunnableAgent) -> Model:
        if agent.model is not None:
            return agent.model
        if self.models is None:
            raise ConfigError(
                "no models are configured: give the agent a model or the Executor a resolver"
            )
        return self.models.resolve(agent.tier)

    def _price(self, agent: RunnableAgent) -> Price | None:
        """One call's worst case on the agent's tier; None when it has no price (an
        agent with its own model, an executor without a resolver)."""
        models = self.models
        if models is None or agent.model is not None:
            return None
        tier = agent.tier
        return lambda input_tok, output_tok: models.estimate_micros(tier, input_tok, output_tok)

    def _tier_price(self, tier: str) -> Price | None:
        """A tier's worst case per call (compaction's, the critic judge's); None
        without a resolver."""
        models = self.models
        if models is None:
            return None
        return lambda input_tok, output_tok: models.estimate_micros(tier, input_tok, output_tok)

    def _request_parts(self, state: RunState) -> tuple[list[Message], list[ToolDefinition]]:
        """The system message and the tool definitions every request of the run carries:
        built once a run (the budget's first estimate and the steps share them), again
        only when a hook gave the run another agent."""
        agent = state.agent
        built = state.request_parts
        if built is not None and built[0] is agent:
            return built[1], built[2]
        tools = self.tools.available(agent.tools, state.invocation.caller.privilege)
        system = [self._system_message(agent.system_prompt)] if agent.system_prompt else []
        definitions = [t.definition for t in tools]
        state.request_parts = (agent, system, definitions)
        return system, definitions

    def _system_message(self, prompt: str) -> Message:
        message = self._system.get(prompt)
        if message is None:
            if len(self._system) >= _SYSTEM_CACHE:
                self._system.clear()
            message = self._system[prompt] = Message.system(prompt)
        return message

    def _first_call(self, state: RunState) -> tuple[int, int]:
        """The first request's input estimate and its ``max_tokens``."""
        system, tool_defs = self._request_parts(state)
        bounds = state.agent.bounds
        max_tokens = min(bounds.max_tokens_per_response, bounds.max_output_tokens)
        assert state.count_input is not None
        return state.count_input(system + state.messages, tool_defs), max_tokens

    def _started_event(
        self, agent: RunnableAgent, inv: Invocation, run_id: str, estimate: int
    ) -> RunStarted:
        prompt = ""
        for m in reversed(inv.resume.messages if inv.resume is not None else inv.messages):
            if m.role == "user" and m.text:
                prompt = m.text
                break
        return RunStarted(
            run_id=run_id,
            at=self.clock.now(),
            agent=agent.name,
            tier=agent.tier if agent.model is None else agent.model.name,
            trigger=inv.trigger,
            caller=inv.caller,
            parent_run_id=inv.parent_run_id,
            persona=agent.persona,
            skill=agent.skill,
            prompt_excerpt=prompt[:500],
            estimate_micros=estimate,
            metadata=dict(inv.metadata),
            resumed_from=inv.resume.run_id if inv.resume is not None else None,
        )

    async def _refused(
        self,
        agent: RunnableAgent,
        inv: Invocation,
        run_id: str,
        result: RunResult,
        delivery: Delivery,
        *,
        estimate: int,
    ) -> None:
        """A run that never started still leaves its row, and its person an answer."""
        await self._emit(self._started_event(agent, inv, run_id, estimate), None)
        await self._emit(RunFinished(run_id=run_id, at=self.clock.now(), result=result), None)
        await self._deliver(delivery, result)

    async def _deliver(self, delivery: Delivery, result: RunResult) -> None:
        """Tell the delivery how the run ended, then record whether the answer
        reached its member (when the delivery says): on the result and in the audit."""
        try:
            report = await delivery.finish(result)
        except Exception as exc:
            # Why not raise: the run is settled and closed already; an answer that could
            # not be delivered is a fact about the run, for its audit row and its caller
            # (a scheduled slot fails with it), not an error out of the run.
            log.exception("run %s: the delivery failed to finish", result.run_id)
            report = DeliveryReport(delivered=False, error=f"{type(exc).__name__}: {exc}"[:300])
        if report is None:
            return
        result.delivery = report
        await self._emit(
            RunDelivered(
                run_id=result.run_id,
                at=self.clock.now(),
                delivered=report.delivered,
                error=report.error,
            ),
            None,
        )

    async def _emit(self, event: RunEvent, watch: CriticWatch | None) -> None:
        if not isinstance(event, _DELTA_FREE):
            await self.audit.record(event)
        if watch is not None:
            await watch.on_event(event)
        for obs in self.observers:
            await obs.on_event(event)

    async def _run_reserved(self, state: RunState, estimate: int) -> RunResult:
        agent, inv, delivery = state.agent, state.invocation, state.delivery
        watch: CriticWatch | None = None
        task = asyncio.current_task()
        assert task is not None, "Executor.run must run inside a task"
        # Why inline and not a child task: a stop (deadline, cancel event, critic)
        # cancels this task the way asyncio.timeout does, and ``uncancel`` tells our
        # own stop from the host's cancellation. One task less per run matters
        # when 200 runs share one event loop.
        armed = True
        requested = False

        def stop(reason: str, status: RunStatus) -> None:
            nonlocal requested
            if state.stop_status is None:
                state.stop_reason, state.stop_status = reason, status
            if armed and not requested:
                requested = True
                task.cancel()

        bounds = agent.bounds
        timers: list[Any] = []
        result: RunResult | None = None
        try:
            await self._emit(self._started_event(agent, inv, state.run_id, estimate), None)

            async def emit_side(event: RunEvent) -> None:
                await self._emit(event, None)

            if self.critic is not None:
                watch = self.critic.watch(
                    RunControl(
                        run_id=state.run_id,
                        agent=agent,
                        caller=inv.caller,
                        started_monotonic=state.started_monotonic,
                        delivery=delivery,
                        stop=stop,
                        usage_fn=lambda: state.usage,
                        emit=emit_side,
                        budget=state.budget,
                        add_usage=state.add_usage,
                    )
                )

            async def emit_hook(event: RunEvent, watch: CriticWatch | None = watch) -> None:
                await self._emit(event, watch)

            state.emit = emit_hook
            timeout_reason = f"the run passed its {bounds.max_runtime_s:g} s time limit"
            deadline: Group | None = None
            if isinstance(self.clock, RealClock):
                deadline = self._deadlines.add(
                    bounds.max_runtime_s, stop, timeout_reason, RunStatus.TIMEOUT
                )
            else:
                timers.append(
                    asyncio.create_task(
                        self._after(bounds.max_runtime_s, stop, timeout_reason, RunStatus.TIMEOUT)
                    )
                )
            if inv.cancel is not None:
                timers.append(asyncio.create_task(self._on_cancel(inv.cancel, stop)))
            try:
                await delivery.start()
                result = await self._steps(state, watch)
            finally:
                armed = False
                if deadline is not None:
                    deadline.pop(stop, None)
                for t in timers:
                    t.cancel()
        except asyncio.CancelledError:
            if requested and task.uncancel() == 0:
                # Our own stop: the run ends with the status the stop gave.
                status = state.stop_status or RunStatus.CANCELLED
                result = self._result(state, status, error=state.stop_reason, kind=status.value)
            else:
                # The host cancelled us (shutdown): close the run, then re-raise.
                result = self._result(
                    state, RunStatus.CANCELLED, error="the run was cancelled by its host"
                )
                # Its checkpoint is kept: the host may offer the run to resume (the
                # bot's drain does); one nobody offers is pruned with the ended runs.
                await asyncio.shield(self._finish(state, result, watch, keep_checkpoint=True))
                raise
        except Exception as exc:  # a bug of ours or a port's: still close the run
            result = self._internal_error(state, exc)
        else:
            if requested:
                # The stop landed after the last await of the run: the run is done
                # anyway; take back the cancellation we asked for.
                task.uncancel()
        assert result is not None
        # Why not shielded here (it is on the host-cancel path above): a shield is a
        # task per run, and a host cancelling exactly now is a shutdown, after which
        # start-up recovery settles what this finish could not.
        await self._finish(state, result, watch)
        return result

    async def _after(
        self, seconds: float, stop: Callable[[str, RunStatus], None], reason: str, status: RunStatus
    ) -> None:
        await self.clock.sleep(seconds)
        stop(reason, status)

    @staticmethod
    async def _on_cancel(event: asyncio.Event, stop: Callable[[str, RunStatus], None]) -> None:
        await event.wait()
        stop("cancelled by the person who asked", RunStatus.CANCELLED)

    def _internal_error(self, state: RunState, exc: Exception) -> RunResult:
        """A bug in the loop, a port, a hook or an observer: the traceback to the log,
        an excerpt to the audit, a reference to the member."""
        ref = new_ref()
        log_failure(log, exc, "run %s failed on our side (ref %s)", state.run_id, ref)
        error = excerpt(f"{type(exc).__name__}: {exc}", _INTERNAL_EXCERPT)
        # A busy host (the database's lock held past its timeout) is transient: say so.
        kind = "busy" if isinstance(exc, HostBusy) else "internal"
        return self._result(state, RunStatus.ERROR, error=error, kind=kind, ref=ref)

    def _result(
        self,
        state: RunState,
        status: RunStatus,
        *,
        error: str | None = None,
        kind: str | None = None,
        output: str | None = None,
        ref: str | None = None,
        budget: BudgetDetails | None = None,
    ) -> RunResult:
        out = output if output is not None else (state.partial_text or state.last_text)
        result = RunResult(
            run_id=state.run_id,
            status=status,
            output=out,
            steps=state.steps,
            usage=state.usage,
            attempts=list(state.attempts),
            error=error,
            error_kind=kind,
            model=state.answered_by,
            messages=list(state.messages),
            error_ref=ref,
            details={"budget": budget} if budget is not None else {},
        )
        result.note = outcome_note(result)
        return result

    async def _finish(
        self,
        state: RunState,
        result: RunResult,
        watch: CriticWatch | None,
        *,
        keep_checkpoint: bool = False,
    ) -> None:
        assert state.budget is not None
        assert state.budget.reservation is not None
        for hook in self.hooks:
            try:
                await hook.before_finish(state, result)
            except Exception as exc:  # a hook's bug must not keep the run from closing
                log_failure(log, exc, "run %s: a hook failed before the finish", state.run_id)
        try:
            try:
                if watch is not None:
                    # Why first: a judgement in flight ends here, and what it cost is in
                    # the run's usage before the run is settled (never after, unbilled).
                    await watch.close()
            finally:
                result.usage = state.usage
                await self.budget.settle(state.budget.reservation, result.usage.cost_micros)
        finally:
            try:
                await self._emit(
                    RunFinished(run_id=state.run_id, at=self.clock.now(), result=result), None
                )
            finally:
                try:
                    await self._deliver(state.delivery, result)
                finally:
                    if not keep_checkpoint:
                        await self._drop_checkpoint(state.run_id)

    async def _drop_checkpoint(self, run_id: str) -> None:
        try:
            await self.checkpoints.drop(run_id)
        except Exception:
            # Why not raise: the run is closed and settled. A checkpoint left behind is
            # never offered (its run is not interrupted) and start-up prunes it.
            log.warning("run %s: could not drop its checkpoint", run_id, exc_info=True)

    async def _checkpoint(
        self,
        state: RunState,
        pending: tuple[ToolCallPart, ...] = (),
        done: tuple[ToolResultPart, ...] = (),
    ) -> None:
        """Save where the run stands: its last completed step, ``pending`` its calls."""
        inv, agent = state.invocation, state.agent
        await self.checkpoints.save(
            Checkpoint(
                run_id=state.run_id,
                step=state.steps,
                messages=tuple(state.messages),
                usage=state.prior + state.usage,
                caller=inv.caller,
                trigger=inv.trigger,
                agent=agent.name,
                tier=agent.tier,
                persona=agent.persona,
                skill=agent.skill,
                parent_run_id=inv.parent_run_id,
                resumed_from=inv.resume.run_id if inv.resume is not None else None,
                pending=pending,
                done=done,
                metadata=inv.metadata,
            )
        )

    async def _resume_calls(
        self, state: RunState, resume: Checkpoint, watch: CriticWatch | None
    ) -> None:
        """The tool calls the interrupted run had started: a result it kept is reused,
        a read-only or idempotent call runs again, any other asks the approver again."""
        kept = {r.tool_call_id: r for r in resume.done}

        async def one(call: ToolCallPart) -> ToolResultPart:
            if call.id in kept:
                return kept[call.id]
            tool = self.tools.get(call.name)
            again = tool is not None and not tool.repeatable
            return await self._tool_call(state, call, watch, again=again)

        results = await asyncio.gather(*(one(c) for c in resume.pending))
        state.messages.append(Message(role="user", parts=tuple(results)))

    # ------------------------------------------------------------------ steps

    async def _steps(self, state: RunState, watch: CriticWatch | None) -> RunResult:
        bounds = state.agent.bounds
        system, tool_defs = self._request_parts(state)
        streaming = state.invocation.delivery is not None
        resume = state.invocation.resume
        try:
            if resume is not None:
                await self._checkpoint(state, resume.pending, resume.done)
                if resume.pending:
                    await self._resume_calls(state, resume, watch)
            else:
                await self._checkpoint(state)
            while True:
                if state.steps >= bounds.max_steps:
                    raise _Stopped(
                        RunStatus.STEP_LIMIT,
                        f"the run reached its limit of {bounds.max_steps} steps",
                    )
                spent = state.prior.output_tokens + state.usage.output_tokens
                remaining = bounds.max_output_tokens - spent
                if remaining <= 0:
                    raise _Stopped(
                        RunStatus.TOKEN_LIMIT,
                        f"the run used its {bounds.max_output_tokens} output tokens",
                    )
                state.steps += 1
                request = ModelRequest(
                    messages=system + state.messages,
                    tools=tool_defs,
                    max_tokens=min(bounds.max_tokens_per_response, remaining),
                    temperature=state.agent.temperature,
                )
                response = await self._model_step(state, request, watch, streaming)
                state.messages.append(response.message)
                text = response.text  # a property that joins the parts: once
                state.last_text = text or state.last_text
                state.partial_text = ""
                calls = response.tool_calls
                await self._emit(
                    StepFinished(
                        run_id=state.run_id,
                        at=self.clock.now(),
                        step=state.steps,
                        model=response.model,
                        usage=response.usage,
                        stop_reason=response.stop_reason,
                        text_excerpt=text[:500],
                        tool_calls=len(calls),
                    ),
                    watch,
                )
                money = state.budget
                cut = money is not None and money.cut is not None
                if cut and response.stop_reason == "max_tokens":
                    # The answer ran out of the tokens its budget could cover: stop here.
                    raise _Stopped(
                        RunStatus.BUDGET_EXHAUSTED,
                        "the answer was cut short to fit your budget",
                        budget=money.cut if money is not None else None,
                    )
                if not calls:
                    return self._result(state, RunStatus.OK, output=text)
                await self._checkpoint(state, tuple(calls))
                if len(calls) == 1:
                    # Why not gather: it wraps a lone call in a task of its own, two
                    # turns of the event loop more per step for nothing run beside it.
                    results = [await self._tool_call(state, calls[0], watch)]
                else:
                    results = await asyncio.gather(
                        *(self._tool_call(state, c, watch) for c in calls)
                    )
                state.messages.append(Message(role="user", parts=tuple(results)))
        except _Stopped as stopped:
            return self._result(
                state,
                stopped.status,
                error=stopped.reason,
                kind=stopped.status.value,
                budget=stopped.budget,
            )
        except AllModelsFailed as exc:
            error = scrub(str(exc))
            log.warning("run %s: %s", state.run_id, excerpt(error, 1000))
            return self._result(state, RunStatus.ERROR, error=error, kind="all_models_failed")
        except ModelAPIError as exc:
            # Why not in the note: a provider's text may echo the request, and a proxy's
            # may echo a credential. The audit keeps it scrubbed; the log has it by ref.
            ref = new_ref()
            error = scrub(str(exc))
            log.warning(
                "run %s: the model failed, %s (ref %s): %s",
                state.run_id,
                exc.kind,
                ref,
                excerpt(error, 1000),
            )
            return self._result(state, RunStatus.ERROR, error=error, kind=exc.kind, ref=ref)

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
                raise _Stopped(
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
                    raise _Stopped(
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
                raise _Stopped(
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

    async def _tool_call(
        self,
        state: RunState,
        call: ToolCallPart,
        watch: CriticWatch | None,
        *,
        again: bool = False,
    ) -> ToolResultPart:
        inv = state.invocation
        await self._emit(
            ToolCallStarted(
                run_id=state.run_id,
                at=self.clock.now(),
                step=state.steps,
                call_id=call.id,
                name=call.name,
                arguments=call.arguments,
            ),
            watch,
        )
        outcome: ToolOutcome
        refusal = self.tools.refusal(call.name, state.agent.tools, inv.caller.privilege)
        tool = self.tools.get(call.name)
        if refusal is not None or tool is None:
            outcome = ToolOutcome(content=f"refused: {refusal}", is_error=True)
        else:
            try:
                if tool.requires_approval or again:
                    await self._approve(state, call, watch, again=again)
                await state.delivery.status(tool.status_line(call.arguments))
                ctx = ToolContext(
                    run_id=state.run_id,
                    caller=inv.caller,
                    call_id=call.id,
                    agent=state.agent.name,
                    persona=state.agent.persona or "",
                    invocation=inv,
                    charge=self._charger(state, call, watch),
                )
                outcome = await tool.invoke(
                    call.arguments,
                    ctx,
                    deadlines=self._deadlines,
                )
            except ApprovalDenied as exc:
                outcome = ToolOutcome(content=f"denied: {exc}", is_error=True)
        await self._emit(
            ToolCallFinished(
                run_id=state.run_id,
                at=self.clock.now(),
                step=state.steps,
                call_id=call.id,
                name=call.name,
                arguments=call.arguments,
                result=outcome.content,
                is_error=outcome.is_error,
                duration_ms=outcome.duration_ms,
            ),
            watch,
        )
        part = ToolResultPart(
            tool_call_id=call.id, name=call.name, content=outcome.content, is_error=outcome.is_error
        )
        if refusal is None and tool is not None and not tool.repeatable:
            # Why at once: a resumed run must not run this call again blindly.
            await self.checkpoints.tool_done(state.run_id, part)
        return part

    def _charger(
        self, state: RunState, call: ToolCallPart, watch: CriticWatch | None
    ) -> Callable[[int, str], AbstractAsyncContextManager[None]]:
        """``ToolContext.charge`` for one call (see :meth:`_charge`)."""
        # Why a partial of one decorated method: decorating a function per call costs
        # more than the rest of a tool call's bookkeeping.
        return functools.partial(self._charge, state, call, watch)

    @contextlib.asynccontextmanager
    async def _charge(
        self,
        state: RunState,
        call: ToolCallPart,
        watch: CriticWatch | None,
        micros: int,
        what: str,
    ) -> AsyncIterator[None]:
        """Hold the price in the run's reservation around the priced request; charge
        and record it only if the request answered."""
        if micros <= 0:
            yield
            return
        money = state.budget
        if money is not None:
            try:
                # Why a hold, not a charge: a provider that fails is not paid; its
                # price goes back and the next provider is held for its own.
                await money.hold(state.usage.cost_micros, micros)
            except BudgetExceeded as exc:
                raise ToolFailed(
                    f"the member's budget cannot cover {what} ({format_usd(micros)}): {exc}"
                ) from None
        try:
            yield
        except BaseException:
            if money is not None:
                money.release(micros)
            raise
        # Why no await between: the hold never lapses before the charge is counted.
        state.add_usage(Usage(cost_micros=micros))
        if money is not None:
            money.release(micros)
        await self._emit(
            ToolChargeEvent(
                run_id=state.run_id,
                at=self.clock.now(),
                step=state.steps,
                call_id=call.id,
                name=call.name,
                cost_micros=micros,
                what=what,
            ),
            watch,
        )

    async def _approve(
        self,
        state: RunState,
        call: ToolCallPart,
        watch: CriticWatch | None,
        *,
        again: bool = False,
    ) -> None:
        decision = await self.approver.approve(
            ApprovalRequest(
                run_id=state.run_id,
                caller=state.invocation.caller,
                tool=call.name,
                call_id=call.id,
                arguments=call.arguments,
                delivery=state.delivery,
                again=again,
            )
        )
        await self._emit(
            ApprovalEvent(
                run_id=state.run_id,
                at=self.clock.now(),
                tool=call.name,
                call_id=call.id,
                approved=decision.approved,
                reason=decision.reason,
            ),
            watch,
        )
        if not decision.approved:
            raise ApprovalDenied(decision.reason or "the member did not approve this tool call")


def _billed(attempt: Attempt, unanswered: Usage | None) -> Usage | None:
    """What a failed attempt cost: None unless the provider billed it."""
    if attempt.error is None or not attempt.billed:
        return None
    return attempt.usage if attempt.usage is not None else unanswered


def _resumed(state: RunState, resume: Checkpoint) -> None:
    """A resumed run starts where the checkpoint left off: its steps and what its
    earlier attempts spent count against the bounds (its own usage starts at zero)."""
    state.steps = resume.step
    state.prior = resume.usage
    for m in reversed(resume.messages):
        if m.role == "assistant" and m.text:
            state.last_text = m.text
            break


def outcome_note(result: RunResult) -> str | None:
    """One plain sentence for the person who asked, when a run was not a plain success."""
    s = result.status
    if s is RunStatus.OK:
        return None
    if s is RunStatus.BUDGET_DENIED or s is RunStatus.BUDGET_EXHAUSTED:
        budget = result.details.get("budget")
        details = budget if isinstance(budget, BudgetDetails) else None
        if s is RunStatus.BUDGET_DENIED:
            return f"{result.error}. {out_of_budget_advice(details)}"
        spent = (
            f" (spent {format_usd(details.spent_micros)} of your 7-day limit "
            f"{format_usd(details.limit_micros, 2)})"
            if details is not None
            else ""
        )
        return f"Stopped: {result.error}{spent}. {out_of_budget_advice(details)}"
    if s is RunStatus.ERROR and result.error_kind == "all_models_failed":
        tried = ", ".join(
            f"{a.model} ({a.error_kind or 'error'})" for a in result.attempts if a.error
        )
        return (
            f"No model could answer right now; tried {tried}."
            if tried
            else "No model could answer right now."
        )
    if s is RunStatus.ERROR:
        kind = result.error_kind
        if kind == "config":
            return result.error  # an operator's message naming what to set; no secret
        ref = f" (ref {result.error_ref})" if result.error_ref else ""
        if kind == "context_too_long":
            return (
                f"The conversation is too long for the model, even shortened; start a new one{ref}."
            )
        if kind == "busy":
            return f"coterie is busy right now; try again in a moment{ref}."
        if kind is None or kind == "internal":
            return f"Something went wrong on our side; the admins can find it in the log{ref}."
        # A provider's error: its text stays in the audit and the log, never here.
        return f"The model could not answer this request; the admins can find it in the log{ref}."
    if s is RunStatus.STEP_LIMIT:
        return f"Stopped: {result.error}."
    if s is RunStatus.TOKEN_LIMIT:
        return f"Stopped: {result.error}."
    if s is RunStatus.TIMEOUT:
        return f"Stopped: {result.error}."
    if s is RunStatus.KILLED:
        return f"Stopped by the critic: {result.error}."
    if s is RunStatus.CANCELLED:
        return "Cancelled."
    return result.error
