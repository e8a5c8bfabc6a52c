"""One tool call of a run (:class:`ToolCalls`, a part of
:class:`~executor.run.Executor`): its permission, its approval, its run under the
registry's deadline, a priced request held in the run's reservation and charged only
when it answered, and its result kept for a resumed run."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from executor._run_parts import RunParts
from executor.budget import format_usd
from executor.errors import ApprovalDenied, BudgetExceeded, ToolFailed
from executor.events import ApprovalEvent, ToolCallFinished, ToolCallStarted, ToolChargeEvent
from executor.hooks import RunState
from executor.messages import ToolCallPart, ToolResultPart, Usage
from executor.ports import ApprovalRequest, CriticWatch
from executor.tools.registry import ToolContext, ToolOutcome

__all__ = ["ToolCalls"]


class ToolCalls(RunParts):
    """The executor's tool calls."""

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
