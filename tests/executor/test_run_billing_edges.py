"""Billing edges (issue 20).

- A run stopped with a request in flight (mid-stream, or waiting on the model) is
  charged that request's input tokens, as :mod:`executor.tokens` counts them, at the
  price with no output: the provider billed them though no usage ever arrives. The
  charge is on an attempt of its own, so the audit and the ledger agree.
- The compaction summariser's and the critic judge's calls are covered by the run's
  reservation before they are made, at their own tier's price, and charged to the run;
  one the budget cannot cover is not made.
- A candidate that fails over mid-stream (it began to answer, then failed) was billed
  by its provider: the run is charged what it reported, or else its request's input
  at the price with no output, on its attempt; a candidate that failed before it
  answered anything is not charged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from executor.agent import Bounds, Caller, Invocation, RunnableAgent, RunResult, RunStatus
from executor.budget import InMemoryBudgetLedger
from executor.compaction import CompactionHook
from executor.critic import CriticConfig, WatchdogCritic
from executor.errors import BudgetExceeded, Overloaded
from executor.events import (
    CompactionEvent,
    CriticVerdictEvent,
    ModelAttemptEvent,
    ModelRequestEvent,
    RunFinished,
)
from executor.messages import Message, Usage
from executor.models.base import (
    KeepAlive,
    Model,
    ModelProfile,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    TextDelta,
)
from executor.models.fallback import FallbackModel
from executor.run import Executor
from executor.spend import input_tokens
from executor.testing import AuditCapture, FakeClock, RecordingDelivery, Reply, ScriptedModel

Price = Callable[[int, int], int]


def standard(i: int, o: int) -> int:
    return 3 * i + 15 * o


def fast(i: int, o: int) -> int:
    return i + 5 * o


class Tiers:
    """A resolver: each tier one model at its own price."""

    def __init__(self, **tiers: tuple[Model, Price]) -> None:
        self.tiers = tiers

    def resolve(self, tier: str) -> Model:
        return self.tiers[tier][0]

    def estimate_micros(self, tier: str, input_tokens: int, output_tokens: int) -> int:
        return self.tiers[tier][1](input_tokens, output_tokens)


class Hanging:
    """Streams a few words, then waits for ever (a provider that stalls mid-answer);
    ``generate`` waits for ever too."""

    name = "test:hanging"

    def __init__(self, window: int = 200_000) -> None:
        self.profile = ModelProfile(provider="test", context_window=window)
        self.requests: list[ModelRequest] = []
        self.streaming = asyncio.Event()

    async def generate(self, request: ModelRequest) -> ModelResponse:
        self.requests.append(request)
        self.streaming.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        self.requests.append(request)
        yield TextDelta("a long ")
        yield TextDelta("answer, ")
        self.streaming.set()
        await asyncio.Event().wait()
        yield ResponseDone(await self.generate(request))


ALICE = Caller(user_id="alice")


# --- a request stopped in flight ----------------------------------------------------


async def test_a_run_stopped_mid_stream_is_charged_its_requests_input() -> None:
    model = Hanging()
    budget = InMemoryBudgetLedger(5_000_000)
    audit = AuditCapture()
    executor = Executor(models=Tiers(standard=(model, standard)), budget=budget, audit=audit)
    cancel = asyncio.Event()
    task = asyncio.create_task(
        executor.run(
            RunnableAgent(system_prompt="You are thorough.", tier="standard"),
            Invocation(
                [Message.user("Tell me everything about owls. " * 40)],
                caller=ALICE,
                delivery=RecordingDelivery(),
                cancel=cancel,
            ),
        )
    )
    await model.streaming.wait()
    cancel.set()  # the member cancels mid-stream
    result = await task

    (request,) = model.requests
    tokens = input_tokens(request.messages, request.tools)
    owed = standard(tokens, 0)
    assert result.status is RunStatus.CANCELLED
    assert owed > 0 and result.cost_micros == owed
    assert result.usage.input_tokens == tokens
    (stopped,) = audit.of_type(ModelAttemptEvent)
    assert stopped.attempt.error_kind == "stopped" and stopped.usage is not None
    assert stopped.usage.cost_micros == owed  # on the attempt: what recovery reads
    (sent,) = audit.of_type(ModelRequestEvent)
    assert (sent.input_tokens, sent.unanswered_micros, sent.attempts_before) == (tokens, owed, 0)
    (finished,) = audit.of_type(RunFinished)
    assert finished.result.cost_micros == owed  # the audit ...
    assert (await budget.status("alice")).spent_micros == owed  # ... and the ledger agree


async def test_a_run_past_its_time_limit_waiting_on_the_model_is_charged_its_input() -> None:
    model = Hanging()
    budget = InMemoryBudgetLedger(5_000_000)
    clock = FakeClock()
    executor = Executor(models=Tiers(standard=(model, standard)), budget=budget, clock=clock)
    task = asyncio.create_task(
        executor.run(
            RunnableAgent(tier="standard", bounds=Bounds(max_runtime_s=30)),
            Invocation([Message.user("Summarise the news.")], caller=ALICE),  # no stream
        )
    )
    await model.streaming.wait()
    await clock.wait_for_sleepers(1)
    await clock.advance(30)
    result = await task
    (request,) = model.requests
    owed = standard(input_tokens(request.messages, request.tools), 0)
    assert result.status is RunStatus.TIMEOUT and result.cost_micros == owed
    assert (await budget.status("alice")).spent_micros == owed


async def test_an_answered_request_is_charged_what_it_cost_not_its_input_twice() -> None:
    model = ScriptedModel(default=Reply(text="hi", usage=Usage(input_tokens=9, cost_micros=77)))
    audit = AuditCapture()
    executor = Executor(models=Tiers(standard=(model, standard)), audit=audit)
    result = await executor.run(RunnableAgent(tier="standard"), Invocation([Message.user("hi")]))
    assert result.cost_micros == 77
    (attempt,) = audit.of_type(ModelAttemptEvent)
    assert attempt.attempt.error is None and attempt.usage is not None
    assert attempt.usage.cost_micros == 77


# --- a mid-stream failover -----------------------------------------------------------


class Breaks:
    """Streams ``before`` (events), then fails as an overloaded provider does."""

    profile = ModelProfile(provider="test", context_window=200_000)

    def __init__(self, name: str, before: tuple[StreamEvent, ...], usage: Usage | None = None):
        self.name = name
        self.before = before
        self.usage = usage
        self.requests: list[ModelRequest] = []

    async def generate(self, request: ModelRequest) -> ModelResponse:
        raise AssertionError("streams only")

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        self.requests.append(request)
        for event in self.before:
            yield event
        error = Overloaded(f"{self.name}: overloaded", model=self.name)
        error.usage = self.usage
        raise error


def _failover(first: Breaks) -> tuple[Executor, InMemoryBudgetLedger, AuditCapture]:
    answer = ScriptedModel(
        default=Reply(text="Owls are birds.", usage=Usage(input_tokens=40, cost_micros=500))
    )
    model = FallbackModel([first, answer], name="tier:standard")
    budget = InMemoryBudgetLedger(5_000_000)
    audit = AuditCapture()
    executor = Executor(models=Tiers(standard=(model, standard)), budget=budget, audit=audit)
    return executor, budget, audit


async def _ask(
    executor: Executor,
    delivery: RecordingDelivery | None = None,
    cancel: asyncio.Event | None = None,
) -> RunResult:
    return await executor.run(
        RunnableAgent(tier="standard"),
        Invocation(
            [Message.user("Tell me about owls. " * 20)],
            caller=ALICE,
            delivery=delivery or RecordingDelivery(),
            cancel=cancel,
        ),
    )


async def test_a_candidate_that_fails_mid_stream_is_charged_its_input_on_its_attempt() -> None:
    first = Breaks("test:first", (TextDelta("Owls are "),))
    executor, budget, audit = _failover(first)
    result = await _ask(executor)
    assert result.status is RunStatus.OK and result.output == "Owls are birds."
    (request,) = first.requests
    tokens = input_tokens(request.messages, request.tools)
    owed = standard(tokens, 0)
    failed, answered = audit.of_type(ModelAttemptEvent)
    assert failed.attempt.error_kind == "overloaded" and failed.attempt.billed
    assert failed.usage is not None
    assert (failed.usage.cost_micros, failed.usage.input_tokens) == (owed, tokens)
    assert answered.usage is not None and answered.usage.cost_micros == 500
    assert owed > 0 and result.cost_micros == owed + 500
    (finished,) = audit.of_type(RunFinished)
    assert finished.result.cost_micros == owed + 500  # the audit ...
    assert (await budget.status("alice")).spent_micros == owed + 500  # ... and the ledger


async def test_a_candidate_that_reported_its_usage_is_charged_that() -> None:
    reported = Usage(input_tokens=120, output_tokens=3, cost_micros=444, requests=1)
    first = Breaks("test:first", (KeepAlive(), TextDelta("Owls ")), usage=reported)
    executor, budget, audit = _failover(first)
    result = await _ask(executor)
    failed, _ = audit.of_type(ModelAttemptEvent)
    assert failed.usage == reported
    assert result.cost_micros == 444 + 500
    assert (await budget.status("alice")).spent_micros == 444 + 500


async def test_a_candidate_that_failed_before_answering_is_not_charged() -> None:
    executor, budget, audit = _failover(Breaks("test:first", ()))
    result = await _ask(executor)
    failed, _ = audit.of_type(ModelAttemptEvent)
    assert failed.attempt.error_kind == "overloaded" and not failed.attempt.billed
    assert failed.usage is None
    assert result.cost_micros == 500 == (await budget.status("alice")).spent_micros


# --- a mid-stream failover, then a stop or the member's limit -------------------------


async def test_a_run_cancelled_while_the_backup_streams_is_charged_both_candidates() -> None:
    first = Breaks("test:first", (TextDelta("Owls are "),))
    backup = Hanging()
    model = FallbackModel([first, backup], name="tier:standard")
    budget = InMemoryBudgetLedger(5_000_000)
    audit = AuditCapture()
    executor = Executor(models=Tiers(standard=(model, standard)), budget=budget, audit=audit)
    cancel = asyncio.Event()
    task = asyncio.create_task(_ask(executor, cancel=cancel))
    await backup.streaming.wait()
    # Known before the backup answers: the failed attempt, charged, and the request
    # sent again to the backup (what crash recovery would charge were the process to
    # die now).
    (failed,) = audit.of_type(ModelAttemptEvent)
    assert failed.attempt.billed and failed.usage is not None
    cancel.set()  # the member stops the run while the backup streams
    result = await task

    (request,) = first.requests
    owed = standard(input_tokens(request.messages, request.tools), 0)
    assert result.status is RunStatus.CANCELLED
    failed, stopped = audit.of_type(ModelAttemptEvent)
    assert (failed.attempt.model, failed.attempt.error_kind) == ("test:first", "overloaded")
    assert stopped.attempt.error_kind == "stopped"
    assert failed.usage is not None and failed.usage.cost_micros == owed
    assert stopped.usage is not None and stopped.usage.cost_micros == owed
    asked = audit.of_type(ModelRequestEvent)
    assert [(r.attempts_before, r.unanswered_micros) for r in asked] == [(0, owed), (1, owed)]
    assert owed > 0 and result.cost_micros == 2 * owed  # both candidates
    (finished,) = audit.of_type(RunFinished)
    assert finished.result.cost_micros == 2 * owed  # the audit ...
    assert (await budget.status("alice")).spent_micros == 2 * owed  # ... and the ledger


class SlowReset(RecordingDelivery):
    """A delivery whose taking back of text waits (a Discord message edit)."""

    def __init__(self) -> None:
        super().__init__()
        self.resetting = asyncio.Event()

    async def reset(self) -> None:
        await super().reset()
        self.resetting.set()
        await asyncio.Event().wait()


async def test_a_run_cancelled_before_the_backup_is_asked_is_charged_one_candidate() -> None:
    """Stopped while the failed candidate's words are being taken back: the backup was
    never asked, so the run is charged one request's input, not two."""
    first = Breaks("test:first", (TextDelta("Owls are "),))
    backup = Hanging()
    model = FallbackModel([first, backup], name="tier:standard")
    budget = InMemoryBudgetLedger(5_000_000)
    audit = AuditCapture()
    executor = Executor(models=Tiers(standard=(model, standard)), budget=budget, audit=audit)
    cancel = asyncio.Event()
    delivery = SlowReset()
    task = asyncio.create_task(_ask(executor, delivery, cancel))
    await delivery.resetting.wait()
    cancel.set()
    result = await task
    (request,) = first.requests
    owed = standard(input_tokens(request.messages, request.tools), 0)
    assert result.status is RunStatus.CANCELLED and backup.requests == []
    assert owed > 0 and result.cost_micros == owed
    (finished,) = audit.of_type(RunFinished)
    assert finished.result.cost_micros == owed == (await budget.status("alice")).spent_micros


class Answers:
    """Answers whole (a backup), noting what its member's budget holds as it is asked
    and whether another run of theirs could reserve ``probe`` then."""

    name = "test:backup"
    profile = ModelProfile(provider="test", context_window=200_000)

    def __init__(self, budget: InMemoryBudgetLedger, probe: int) -> None:
        self.budget = budget
        self.probe = probe
        self.requests: list[ModelRequest] = []
        self.reserved: list[int] = []
        self.other_run: list[bool] = []

    async def generate(self, request: ModelRequest) -> ModelResponse:
        raise AssertionError("streams only")

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        self.requests.append(request)
        self.reserved.append((await self.budget.status("alice")).reserved_micros)
        try:
            other = await self.budget.reserve(ALICE, "another-run", self.probe)
        except BudgetExceeded:
            self.other_run.append(False)
        else:
            self.other_run.append(True)
            await self.budget.settle(other, 0)
        yield TextDelta("Owls are birds.")
        yield ResponseDone(
            ModelResponse(
                message=Message.assistant("Owls are birds."),
                usage=Usage(input_tokens=40, cost_micros=500, requests=1),
                model=self.name,
            )
        )


def _near_the_limit(
    headroom: int,
) -> tuple[Executor, InMemoryBudgetLedger, AuditCapture, Answers, int, int]:
    """A member whose limit covers the first call's worst case and the failed
    candidate's charge, plus ``headroom`` (negative: short of it)."""
    agent = RunnableAgent(tier="standard")
    bounds = agent.bounds
    system = [Message.system(agent.system_prompt)] if agent.system_prompt else []
    tokens = input_tokens([*system, Message.user("Tell me about owls. " * 20)], [])
    worst = standard(tokens, min(bounds.max_tokens_per_response, bounds.max_output_tokens))
    failed = standard(tokens, 0)
    budget = InMemoryBudgetLedger(worst + failed + headroom)
    first = Breaks("test:first", (TextDelta("Owls are "),))
    backup = Answers(budget, probe=max(headroom, 0) + 1)
    model = FallbackModel([first, backup], name="tier:standard")
    audit = AuditCapture()
    executor = Executor(models=Tiers(standard=(model, standard)), budget=budget, audit=audit)
    return executor, budget, audit, backup, worst, failed


async def test_the_failed_candidates_charge_is_held_before_the_backup_is_asked() -> None:
    executor, budget, audit, backup, worst, failed = _near_the_limit(0)
    result = await _ask(executor)
    assert result.status is RunStatus.OK and result.output == "Owls are birds."
    # While the backup answered, the member's hold covered what the failed candidate
    # cost and the backup's worst case: another run of theirs could not take that money.
    assert backup.reserved == [worst + failed]
    assert backup.other_run == [False]
    assert result.cost_micros == failed + 500
    (finished,) = audit.of_type(RunFinished)
    assert finished.result.cost_micros == failed + 500
    status = await budget.status("alice")
    assert (status.spent_micros, status.reserved_micros) == (failed + 500, 0)


async def test_a_member_who_cannot_cover_the_failover_is_stopped_before_the_backup() -> None:
    executor, budget, audit, backup, _, failed = _near_the_limit(-1)
    delivery = RecordingDelivery()
    result = await _ask(executor, delivery)
    assert result.status is RunStatus.BUDGET_EXHAUSTED
    assert backup.requests == []  # the backup was never asked
    assert result.note is not None and "budget" in result.note
    # The failed candidate's words were taken back; they are not the run's output.
    assert ("reset", None) in delivery.log and result.output == ""
    # Charged the failed candidate (its provider billed it), never past the limit.
    assert result.cost_micros == failed
    (attempt,) = audit.of_type(ModelAttemptEvent)
    assert attempt.attempt.billed and attempt.usage is not None
    assert attempt.usage.cost_micros == failed
    assert len(audit.of_type(ModelRequestEvent)) == 1  # none to the backup
    (finished,) = audit.of_type(RunFinished)
    assert finished.result.cost_micros == failed
    status = await budget.status("alice")
    assert (status.spent_micros, status.reserved_micros) == (failed, 0)
    assert status.spent_micros <= status.limit_micros


# --- compaction ---------------------------------------------------------------------


def _long_conversation() -> list[Message]:
    out: list[Message] = []
    for i in range(30):
        out.append(Message.user(f"question {i} " + "q" * 400))
        out.append(Message.assistant(f"answer {i} " + "a" * 400))
    return out


def _compacting_run(budget: InMemoryBudgetLedger) -> tuple[Executor, ScriptedModel, ScriptedModel]:
    main = ScriptedModel(
        default=Reply(text="done", usage=Usage(input_tokens=10, cost_micros=100)),
        profile=ModelProfile(provider="test", context_window=4_000),
    )
    summariser = ScriptedModel(
        default=Reply(text="they talked", usage=Usage(input_tokens=50, cost_micros=500)),
        name="test:summariser",
    )
    tiers = Tiers(standard=(main, standard), fast=(summariser, fast))
    hook = CompactionHook("fast", resolver=tiers)
    return Executor(models=tiers, budget=budget, hooks=[hook]), main, summariser


async def test_the_summary_is_covered_before_it_is_made_and_charged_to_the_run() -> None:
    budget = InMemoryBudgetLedger(50_000_000)
    executor, _, summariser = _compacting_run(budget)
    held: list[tuple[int, int]] = []
    answer = summariser.generate

    async def covered_first(request: ModelRequest) -> ModelResponse:
        worst = fast(input_tokens(request.messages, request.tools), request.max_tokens)
        held.append(((await budget.status("alice")).reserved_micros, worst))
        return await answer(request)

    summariser.generate = covered_first  # type: ignore[method-assign]
    audit = AuditCapture()
    executor.audit = audit
    result = await executor.run(
        RunnableAgent(tier="standard"), Invocation(_long_conversation(), caller=ALICE)
    )
    assert result.status is RunStatus.OK
    [(reserved, worst)] = held
    assert reserved >= worst > 0  # covered when it was made
    assert result.cost_micros == 600 == (await budget.status("alice")).spent_micros
    (event,) = audit.of_type(CompactionEvent)
    assert event.usage.cost_micros == 500


async def test_a_summary_the_budget_cannot_cover_is_not_made() -> None:
    # A member who can afford the run's first call at its full size, not the summary
    # (priced here far above the main tier's first call).
    bounds = RunnableAgent().bounds
    first_max = min(bounds.max_tokens_per_response, bounds.max_output_tokens)
    limit = standard(input_tokens(_long_conversation(), []), first_max)

    def dear(i: int, o: int) -> int:
        return 1_000 * (i + o)

    budget = InMemoryBudgetLedger(limit)
    executor, main, summariser = _compacting_run(budget)
    assert executor.models is not None
    tiers = executor.models
    assert isinstance(tiers, Tiers)
    tiers.tiers["fast"] = (summariser, dear)
    result = await executor.run(
        RunnableAgent(tier="standard"), Invocation(_long_conversation(), caller=ALICE)
    )
    assert result.status is RunStatus.BUDGET_EXHAUSTED
    assert summariser.requests == [] and main.requests == []  # neither call was made
    assert (await budget.status("alice")).spent_micros == 0


# --- the critic's judge ---------------------------------------------------------------


def _judged_run(
    limit: int, judge_price: Price
) -> tuple[FakeClock, Executor, Hanging, ScriptedModel, InMemoryBudgetLedger, AuditCapture]:
    clock = FakeClock()
    model = Hanging()
    judge = ScriptedModel(
        default=Reply(
            text='{"progress": true, "reason": "getting there", "more_seconds": 1000}',
            usage=Usage(input_tokens=40, output_tokens=8, cost_micros=321),
        ),
        name="test:judge",
    )
    tiers = Tiers(standard=(model, standard), fast=(judge, judge_price))
    critic = WatchdogCritic(
        CriticConfig(soft_runtime_s=10, hard_runtime_s=10_000, judge="fast"),
        clock=clock,
        resolver=tiers,
    )
    budget = InMemoryBudgetLedger(limit)
    audit = AuditCapture()
    executor = Executor(models=tiers, budget=budget, critic=critic, clock=clock, audit=audit)
    return clock, executor, model, judge, budget, audit


async def _past_the_soft_limit(
    clock: FakeClock, executor: Executor, model: Hanging
) -> tuple[asyncio.Task[RunResult], asyncio.Event]:
    """A run hanging mid-stream, past the critic's soft limit; its cancel event."""
    cancel = asyncio.Event()
    task = asyncio.create_task(
        executor.run(
            RunnableAgent(tier="standard"),
            Invocation([Message.user("go")], caller=ALICE, cancel=cancel),
        )
    )
    await model.streaming.wait()
    await clock.wait_for_sleepers(2)  # the run's deadline and the critic's timer
    await clock.advance(10)
    return task, cancel


async def test_the_judges_call_is_covered_and_charged_to_the_run() -> None:
    clock, executor, model, judge, budget, audit = _judged_run(5_000_000, fast)
    held: list[tuple[int, int]] = []
    answer = judge.generate

    async def covered_first(request: ModelRequest) -> ModelResponse:
        # The run's own call streams meanwhile: both must be covered at once.
        (own,) = model.requests
        both = standard(input_tokens(own.messages, own.tools), own.max_tokens) + fast(
            input_tokens(request.messages, request.tools), request.max_tokens
        )
        held.append(((await budget.status("alice")).reserved_micros, both))
        return await answer(request)

    judge.generate = covered_first  # type: ignore[method-assign]
    task, cancel = await _past_the_soft_limit(clock, executor, model)
    [(reserved, both)] = held
    assert reserved >= both
    (verdict,) = audit.of_type(CriticVerdictEvent)
    assert verdict.verdict == "continue" and verdict.usage.cost_micros == 321
    cancel.set()
    result = await task
    (request,) = model.requests
    owed = standard(input_tokens(request.messages, request.tools), 0)
    assert len(judge.requests) == 1
    assert result.cost_micros == 321 + owed
    assert (await budget.status("alice")).spent_micros == 321 + owed


async def test_a_judgement_the_budget_cannot_cover_is_not_asked_for() -> None:
    def dear(i: int, o: int) -> int:
        return 10**9

    clock, executor, model, judge, _, audit = _judged_run(5_000_000, dear)
    task, cancel = await _past_the_soft_limit(clock, executor, model)
    (verdict,) = audit.of_type(CriticVerdictEvent)
    assert verdict.verdict == "warn" and "budget cannot cover" in verdict.reason
    assert judge.requests == []
    cancel.set()
    await task
