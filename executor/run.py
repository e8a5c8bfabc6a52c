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

The executor is this module and its parts: a model call (budget, request, stream,
attempts, failover) in :mod:`executor._model_calls`, a tool call (permission,
approval, charge) in :mod:`executor._tool_calls`, what they share in
:mod:`executor._run_parts`, and the member's note in :mod:`executor.notes`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from executor._deadlines import Deadlines, Group
from executor._model_calls import ModelCalls
from executor._run_parts import Stopped
from executor._tool_calls import ToolCalls
from executor._trace import log_failure, new_ref
from executor.agent import DeliveryReport, Invocation, RunnableAgent, RunResult, RunStatus
from executor.errors import (
    AllModelsFailed,
    BudgetDetails,
    BudgetExceeded,
    ConfigError,
    HostBusy,
    ModelAPIError,
    RunRefused,
)
from executor.events import (
    RunDelivered,
    RunEvent,
    RunFinished,
    RunStarted,
    StepFinished,
)
from executor.hooks import RunHook, RunState
from executor.messages import Message, ToolCallPart, ToolResultPart
from executor.models.base import (
    Model,
    ModelRequest,
    ToolDefinition,
)
from executor.notes import outcome_note
from executor.ports import (
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
from executor.tools.registry import ToolRegistry

__all__ = ["Executor", "ModelResolver"]

log = logging.getLogger(__name__)

# How much of an unexpected exception's text the result (and so the audit) keeps.
_INTERNAL_EXCERPT = 300


@runtime_checkable
class ModelResolver(Protocol):
    """Turns a tier name into a model (with failover) and prices a run in advance."""

    def resolve(self, tier: str) -> Model: ...

    def estimate_micros(self, tier: str, input_tokens: int, output_tokens: int) -> int: ...


# How many distinct system prompts an executor keeps built (personas, skills).
_SYSTEM_CACHE = 256


def _new_run_id() -> str:
    """``uuid.uuid4().hex`` without building a ``UUID`` (a few microseconds a run)."""
    n = int.from_bytes(os.urandom(16))
    n = (n & ~(0xF000 << 64) | (4 << 76)) & ~(0xC000 << 48) | (0x8000 << 48)
    return f"{n:032x}"


class Executor(ModelCalls, ToolCalls):
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
                    raise Stopped(
                        RunStatus.STEP_LIMIT,
                        f"the run reached its limit of {bounds.max_steps} steps",
                    )
                spent = state.prior.output_tokens + state.usage.output_tokens
                remaining = bounds.max_output_tokens - spent
                if remaining <= 0:
                    raise Stopped(
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
                    raise Stopped(
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
        except Stopped as stopped:
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


def _resumed(state: RunState, resume: Checkpoint) -> None:
    """A resumed run starts where the checkpoint left off: its steps and what its
    earlier attempts spent count against the bounds (its own usage starts at zero)."""
    state.steps = resume.step
    state.prior = resume.usage
    for m in reversed(resume.messages):
        if m.role == "assistant" and m.text:
            state.last_text = m.text
            break
