"""A run cannot overrun its member's budget (issue 12): the reservation covers the worst
case of each model call, grown before the call; a run the budget cannot cover further
ends ``budget_exhausted`` with what it has; the first reservation is the first call's
worst case, cut to what the budget allows, so a $0.01 member can still say hello."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from executor.agent import Bounds, Caller, Invocation, RunnableAgent, RunStatus
from executor.budget import InMemoryBudgetLedger
from executor.errors import BudgetDetails
from executor.events import RunFinished, RunStarted
from executor.messages import Message, TextPart, ToolCallPart, Usage
from executor.models.base import (
    DEFAULT_PROFILE,
    Model,
    ModelProfile,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StopReason,
    StreamEvent,
)
from executor.ports import Reservation
from executor.run import Executor
from executor.spend import MIN_CALL_TOKENS, affordable_tokens, input_tokens
from executor.testing import AuditCapture, RecordingDelivery
from executor.tools.registry import ToolRegistry, tool

IN, OUT = 3, 15  # micro-dollars a token: Sonnet's list price


def price(input_tok: int, output_tok: int) -> int:
    return input_tok * IN + output_tok * OUT


class WorstCaseModel:
    """Every answer costs its worst case: the input the run estimated, all of
    ``max_tokens`` out. ``steps`` answers call a tool, then one says "done"."""

    def __init__(self, steps: int = 0, *, stop: StopReason | None = None) -> None:
        self.steps = steps
        self.stop = stop
        self.requests: list[ModelRequest] = []

    @property
    def name(self) -> str:
        return "test:worst"

    @property
    def profile(self) -> ModelProfile:
        return DEFAULT_PROFILE

    async def generate(self, request: ModelRequest) -> ModelResponse:
        self.requests.append(request)
        used = Usage(
            input_tokens=input_tokens(request.messages, request.tools),
            output_tokens=request.max_tokens,
            requests=1,
        )
        usage = used.model_copy(
            update={"cost_micros": price(used.input_tokens, used.output_tokens)}
        )
        n = len(self.requests)
        if n <= self.steps:
            parts: tuple[Any, ...] = (ToolCallPart(id=f"c{n}", name="work", arguments={}),)
            stop: StopReason = "tool_use"
        else:
            parts, stop = (TextPart(text=f"done after {n - 1} tools"),), "end_turn"
        return ModelResponse(
            message=Message(role="assistant", parts=parts),
            usage=usage,
            model=self.name,
            stop_reason=self.stop or stop,
        )

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        yield ResponseDone(await self.generate(request))


class Tier:
    """A resolver whose one tier is ``model`` at :func:`price`."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def resolve(self, tier: str) -> Model:
        return self.model

    def estimate_micros(self, tier: str, input_tokens: int, output_tokens: int) -> int:
        return price(input_tokens, output_tokens)


def _tools() -> ToolRegistry:
    @tool
    def work() -> str:
        """Do some work."""
        return "worked"

    return ToolRegistry([work])


AGENT = RunnableAgent(
    system_prompt="You are brief.",
    tools=("work",),
    bounds=Bounds(max_steps=20, max_output_tokens=100_000),
)


def _inv(user: str = "m", text: str = "Hello", **kw: Any) -> Invocation:
    return Invocation([Message.user(text)], caller=Caller(user_id=user), **kw)


class Recording(InMemoryBudgetLedger):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.reserved: list[int] = []
        self.grown: list[int] = []

    async def reserve(self, caller: Caller, run_id: str, estimate_micros: int) -> Reservation:
        self.reserved.append(estimate_micros)
        return await super().reserve(caller, run_id, estimate_micros)

    async def grow(self, reservation: Reservation, amount_micros: int) -> Reservation:
        self.grown.append(amount_micros)
        return await super().grow(reservation, amount_micros)


async def test_the_first_reservation_is_the_first_calls_worst_case() -> None:
    model = WorstCaseModel()
    budget = Recording(10_000_000)
    audit = AuditCapture()
    executor = Executor(models=Tier(model), tools=_tools(), budget=budget, audit=audit)
    result = await executor.run(AGENT, _inv())
    assert result.status is RunStatus.OK
    (request,) = model.requests
    first = price(input_tokens(request.messages, request.tools), 2048)
    assert request.max_tokens == 2048
    assert budget.reserved == [first]  # one call's worst case, not three steps' worth
    assert budget.grown == []  # the one call was covered already
    assert result.cost_micros == first
    (started,) = audit.of_type(RunStarted)
    assert started.estimate_micros == first


async def test_each_call_is_covered_before_it_is_made() -> None:
    model = WorstCaseModel(steps=3)
    budget = Recording(10_000_000)
    executor = Executor(models=Tier(model), tools=_tools(), budget=budget)
    result = await executor.run(AGENT, _inv())
    assert result.status is RunStatus.OK and result.steps == 4
    costs = [price(input_tokens(r.messages, r.tools), r.max_tokens) for r in model.requests]
    # Before call n the reservation holds what calls 1..n-1 cost plus call n's worst case.
    assert budget.grown == [sum(costs[: n + 1]) for n in range(1, 4)]
    assert (await budget.status("m")).spent_micros == sum(costs) == result.cost_micros


async def test_a_one_cent_member_can_say_hello() -> None:
    model = WorstCaseModel()
    budget = Recording(10_000)  # $0.01; a full 2,048-token call is $0.031
    result = await Executor(models=Tier(model), tools=_tools(), budget=budget).run(
        RunnableAgent(system_prompt="You are brief."), _inv()
    )
    assert result.status is RunStatus.OK, result.note
    (request,) = model.requests
    tokens = input_tokens(request.messages, request.tools)
    assert MIN_CALL_TOKENS <= request.max_tokens < 2048
    assert request.max_tokens == affordable_tokens(price, tokens, 2048, 10_000)
    assert budget.reserved[-1] == price(tokens, request.max_tokens) <= 10_000


async def test_a_run_the_budget_cannot_cover_further_stops_with_what_it_has() -> None:
    model = WorstCaseModel(steps=100)
    budget = InMemoryBudgetLedger(200_000)  # about six full calls
    delivery = RecordingDelivery()
    audit = AuditCapture()
    executor = Executor(models=Tier(model), tools=_tools(), budget=budget, audit=audit)
    result = await executor.run(AGENT, _inv(delivery=delivery))
    assert result.status is RunStatus.BUDGET_EXHAUSTED
    assert result.error == "your budget cannot cover the next step"
    details = result.details["budget"]
    assert isinstance(details, BudgetDetails) and details.limit_micros == 200_000
    note = result.note or ""
    assert note.startswith("Stopped: your budget cannot cover the next step (spent")
    assert "ask a server admin for a one-off grant or a higher limit" in note
    assert delivery.result is result
    spent = (await budget.status("m")).spent_micros
    assert spent == result.cost_micros <= 200_000
    # Calls were cut to fit before it stopped, and none fell below the floor.
    assert min(r.max_tokens for r in model.requests) >= MIN_CALL_TOKENS
    assert [e.result.status for e in audit.of_type(RunFinished)] == [RunStatus.BUDGET_EXHAUSTED]


async def test_a_cut_answer_that_runs_out_ends_budget_exhausted_with_its_text() -> None:
    model = WorstCaseModel(stop="max_tokens")
    budget = InMemoryBudgetLedger(10_000)
    result = await Executor(models=Tier(model), budget=budget).run(
        RunnableAgent(system_prompt="You are brief."), _inv()
    )
    assert result.status is RunStatus.BUDGET_EXHAUSTED
    assert result.error == "the answer was cut short to fit your budget"
    assert result.output == "done after 0 tools"
    assert (await budget.status("m")).spent_micros == result.cost_micros <= 10_000


async def test_nothing_affordable_is_refused_before_any_call_and_says_what_to_do() -> None:
    model = WorstCaseModel()
    budget = InMemoryBudgetLedger(1_000)  # not even a 256-token call
    result = await Executor(models=Tier(model), budget=budget).run(
        RunnableAgent(system_prompt="You are brief."), _inv()
    )
    assert result.status is RunStatus.BUDGET_DENIED
    assert model.requests == []
    tokens = input_tokens([Message.system("You are brief."), Message.user("Hello")])
    # The refusal names the smallest call, the one the member would need room for.
    assert result.details["budget"].estimate_micros == price(tokens, MIN_CALL_TOKENS)
    assert "ask a server admin for a one-off grant or a higher limit" in (result.note or "")


async def test_an_agent_with_its_own_model_reserves_nothing_and_never_grows() -> None:
    class NoGrow(InMemoryBudgetLedger):
        async def grow(self, reservation: Reservation, amount_micros: int) -> Reservation:
            raise AssertionError("an unpriced run never grows")

    model = WorstCaseModel(steps=2)
    result = await Executor(tools=_tools(), budget=NoGrow(0)).run(
        RunnableAgent(model=model, tools=("work",)), _inv()
    )
    assert result.status is RunStatus.OK


async def test_200_concurrent_runs_costing_3x_their_old_estimate_stay_within_the_limit() -> None:
    # Each run would make 9 calls at their worst case: three times the three-call
    # estimate it used to reserve. All for one member.
    limit = 5_000_000
    budget = InMemoryBudgetLedger(limit)
    models = [WorstCaseModel(steps=8) for _ in range(200)]

    async def one(model: WorstCaseModel) -> Any:
        return await Executor(models=Tier(model), tools=_tools(), budget=budget).run(AGENT, _inv())

    results = await asyncio.gather(*(one(m) for m in models))
    spent = (await budget.status("m")).spent_micros
    assert spent == sum(r.cost_micros for r in results)
    assert spent <= limit
    statuses = {r.status for r in results}
    assert statuses <= {RunStatus.OK, RunStatus.BUDGET_EXHAUSTED, RunStatus.BUDGET_DENIED}
    assert RunStatus.BUDGET_EXHAUSTED in statuses
    assert (await budget.status("m")).reserved_micros == 0
