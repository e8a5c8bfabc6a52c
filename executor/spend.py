"""Keeping a run inside its member's budget: the reservation covers every model call.

A run's first reservation is the worst case of its first model call (``max_tokens``
at the tier's dearest output price plus the input estimate at its input price), not a
guess at the whole run. Before each later call the reservation grows, atomically in
the ledger (:meth:`~executor.ports.BudgetGate.grow`), to what the run has spent plus
that call's worst case. So however many steps a run takes, what it can spend is what
its member had: a run whose calls all cost their worst case stops at the limit.

When the budget cannot cover a call at its full ``max_tokens``, the call is cut to the
most output tokens it can cover (at least :data:`MIN_CALL_TOKENS`): a member with a
$0.01 limit still gets a short answer to "Hello". When it cannot cover even that, the
gate's refusal ends the run (``budget_denied`` before any call, ``budget_exhausted``
after some).

An agent with a model of its own, or an executor without a resolver, has no price:
it reserves nothing and never grows (the cost is known only once spent).

Calls beside the run's own (compaction's summary, the critic's judgement) are covered
the same way before they are made (:meth:`RunBudget.covered` wraps their model), at
their own tier's price, and counted in the run's usage as soon as they answer; one
that cannot be covered is refused (:class:`BudgetExceeded`), not made. The reservation
covers, at every moment, what the run has spent plus the worst case of every call in
flight (a judgement may run while the run's own call streams).

A request whose usage never arrives (the run is stopped, or its judgement times out,
with it in flight) is charged its input tokens as counted from the request, at the
price with no output: the provider has billed them (:meth:`RunBudget.unanswered`).

A call that fails over after its first candidate began to answer is charged that
candidate too (its provider billed it) as soon as it fails, and the reservation grows
at once to what the run has spent with it plus the call's worst case again
(:meth:`RunBudget.failed_over`), before the next candidate is asked. When the budget
cannot cover that, the next candidate is not asked: the run ends
``budget_exhausted``, charged what the failed candidate cost. So a failover never takes
a member past their limit, and a concurrent run of theirs sees the money as held.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import operator
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from executor.agent import Caller
from executor.errors import BudgetDetails, BudgetExceeded
from executor.messages import Message, Usage
from executor.models.base import (
    Model,
    ModelProfile,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    ToolDefinition,
    profile_of,
)
from executor.ports import BudgetGate, Reservation
from executor.tokens import CHARS_PER_TOKEN, estimate_message_tokens, estimate_tokens

__all__ = [
    "MIN_CALL_TOKENS",
    "CoveredModel",
    "InputCount",
    "Price",
    "RunBudget",
    "affordable_tokens",
    "input_tokens",
]

# ``json.dumps(x, default=str)`` without building an encoder on every call.
_JSON = json.JSONEncoder(default=str)

#: The fewest output tokens a call is cut to before the run stops for its budget.
MIN_CALL_TOKENS = 256

#: ``(input tokens, output tokens) -> micro-dollars``: the worst case of one call.
Price = Callable[[int, int], int]


def input_tokens(messages: Sequence[Message], tools: Sequence[ToolDefinition] = ()) -> int:
    """The input estimate of one request: its messages and its tool definitions."""
    return estimate_tokens(messages) + _schema_tokens(tools)


def _schema_tokens(tools: Sequence[ToolDefinition]) -> int:
    schema = sum(len(t.name) + len(t.description) + len(_JSON.encode(t.parameters)) for t in tools)
    return schema // CHARS_PER_TOKEN


class InputCount:
    """:func:`input_tokens` for the requests of one run, remembering what it counted.

    Each request of a run repeats the one before and adds a message or two, and sends
    the same tool definitions: only the messages it has not seen at their place are
    counted again (by identity: a hook that replaces messages, a compaction, is
    counted afresh from the first one replaced). The figures are :func:`input_tokens`'s.
    """

    __slots__ = ("_messages", "_schema", "_sums", "_tools")

    def __init__(self) -> None:
        self._messages: list[Message] = []
        self._sums: list[float] = []  # the running sum of the estimates, per message
        self._tools: Sequence[ToolDefinition] | None = None
        self._schema = 0

    def __call__(self, messages: Sequence[Message], tools: Sequence[ToolDefinition] = ()) -> int:
        if tools is not self._tools:
            self._tools, self._schema = tools, _schema_tokens(tools)
        known, sums = self._messages, self._sums
        same = min(len(known), len(messages))
        if not all(map(operator.is_, known, messages)):  # map stops at the shorter
            same = next(i for i in range(same) if known[i] is not messages[i])
        if same < len(known):
            del known[same:], sums[same:]
        # Why summed in order from zero: the same float additions as estimate_tokens.
        total = sums[-1] if sums else 0
        for m in messages[same:]:
            total += estimate_message_tokens(m)
            known.append(m)
            sums.append(total)
        return int(total) + 1 + self._schema


def affordable_tokens(price: Price, input_tok: int, max_tokens: int, room: int) -> int | None:
    """The most output tokens, up to ``max_tokens`` and at least :data:`MIN_CALL_TOKENS`
    (or ``max_tokens`` when smaller), whose worst case fits in ``room``; None if none."""
    lo = min(MIN_CALL_TOKENS, max_tokens)
    if price(input_tok, lo) > room:
        return None
    hi = max_tokens
    while lo < hi:  # the price grows with the output: bisect
        mid = (lo + hi + 1) // 2
        if price(input_tok, mid) <= room:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _headroom(d: BudgetDetails) -> int:
    """What the member could still reserve, by the gate's refusal."""
    return d.limit_micros - d.spent_micros - d.reserved_micros


@dataclass(slots=True)
class RunBudget:
    """One run's reservation, grown before each model call to cover its worst case.

    ``cut`` is the refusal that cut the call just covered to fewer output tokens
    (None: it was not cut); the run reports it if that call's answer runs out.
    """

    gate: BudgetGate
    price: Price | None
    reservation: Reservation | None = None
    cut: BudgetDetails | None = None
    #: A tier's price (None: no price known), for the calls beside the run's own.
    price_of: Callable[[str], Price | None] | None = None
    _first_cap: int | None = None
    _first_cut: BudgetDetails | None = None
    _call: int = 0  # the worst case of the run's own call in flight
    _side: int = 0  # the worst cases of the calls beside it in flight

    def worst_case(self, input_tok: int, max_tokens: int) -> int:
        return self.price(input_tok, max_tokens) if self.price is not None else 0

    def unanswered(self, input_tok: int) -> int:
        """What a request of ``input_tok`` input tokens costs when its usage never
        arrives: its input at the run's price, no output."""
        return self.worst_case(input_tok, 0)

    def call_done(self) -> None:
        """The run's own call ended (and what it cost is in the run's usage now)."""
        self._call = 0

    def _keep(self, grown: Reservation) -> None:
        # Why the larger: two grows of one run (its call and a judgement beside it) may
        # return out of order; the ledger keeps the larger.
        if self.reservation is None or grown.amount_micros >= self.reservation.amount_micros:
            self.reservation = grown

    async def _grow(self, want: int) -> None:
        assert self.reservation is not None, "open() first"
        if want > self.reservation.amount_micros:
            self._keep(await self.gate.grow(self.reservation, want))

    async def failed_over(self, spent_micros: int) -> None:
        """The run's own call failed over (:class:`~executor.models.base.Failover`) and
        what the failed candidate cost is in ``spent_micros`` now: grow the reservation
        to cover it plus the same call's worst case again, before the next candidate is
        asked, so the member's hold shows that money as soon as it is owed.

        Raises :class:`BudgetExceeded` (the reservation left as it was) when the budget
        cannot cover it: the run stops there rather than ask the next candidate.
        """
        if self.price is None or self.reservation is None:
            return
        await self._grow(spent_micros + self._side + self._call)

    async def hold(self, spent_micros: int, worst_micros: int) -> None:
        """Grow the reservation to cover a call beside the run's own (a judgement, a
        priced tool call), of ``worst_micros`` at worst, on top of ``spent_micros`` and
        every call in flight; :meth:`release` it once what it cost is in the run's usage
        (or once it failed and cost nothing).

        Raises :class:`BudgetExceeded` (and holds nothing) when it cannot be covered.
        """
        if worst_micros <= 0 or self.reservation is None:
            return
        # Why counted before the grow: a concurrent grow (the run's own next call) must
        # see this call's worst case while the ledger is asked.
        self._side += worst_micros
        try:
            await self._grow(spent_micros + self._call + self._side)
        except BaseException:
            self._side -= worst_micros
            raise

    def release(self, worst_micros: int) -> None:
        if worst_micros > 0 and self.reservation is not None:
            self._side = max(0, self._side - worst_micros)

    def covered(
        self,
        model: Model,
        price: Price | None,
        *,
        spent: Callable[[], int],
        count: Callable[[Usage, str], None],
    ) -> Model:
        """``model`` with each request covered by this run's reservation before it is
        made (at ``price``; None: no price, nothing held) and counted with ``count``
        (its usage and the model that answered, into the run's usage) as soon as it
        answers."""
        return CoveredModel(model, self, price, spent=spent, count=count)

    async def open(
        self, caller: Caller, run_id: str, input_tok: int, max_tokens: int
    ) -> Reservation:
        """Reserve the first call's worst case, cut to what the budget allows.

        Raises :class:`BudgetExceeded` when not even a :data:`MIN_CALL_TOKENS` call fits.
        """
        worst = self.worst_case(input_tok, max_tokens)
        try:
            self.reservation = await self.gate.reserve(caller, run_id, worst)
            return self.reservation
        except BudgetExceeded as exc:
            if self.price is None:
                raise
            fits = affordable_tokens(self.price, input_tok, max_tokens, _headroom(exc.details))
            tokens = fits if fits is not None else min(MIN_CALL_TOKENS, max_tokens)
            # Why ask again even when nothing fits: the gate's refusal then names the
            # smallest call, and says when enough of the member's spend rolls out for it.
            self.reservation = await self.gate.reserve(
                caller, run_id, self.worst_case(input_tok, tokens)
            )
            self._first_cap, self._first_cut = tokens, exc.details
            return self.reservation

    async def cover(
        self, spent_micros: int, request: ModelRequest, tokens: int | None = None
    ) -> ModelRequest:
        """The request as it may be sent: the reservation grown to ``spent_micros`` plus
        its worst case, its ``max_tokens`` cut when the budget cannot cover all of it.
        ``tokens``: its input, when the caller has counted it already.

        Raises :class:`BudgetExceeded` when not even a :data:`MIN_CALL_TOKENS` call fits.
        """
        assert self.reservation is not None, "open() first"
        self.cut = None
        if self.price is None:
            return request
        cut: BudgetDetails | None = None
        if self._first_cap is not None:  # the first call, cut when the run was reserved
            if request.max_tokens > self._first_cap:
                request = dataclasses.replace(request, max_tokens=self._first_cap)
                cut = self._first_cut
            self._first_cap = self._first_cut = None
        if tokens is None:
            tokens = input_tokens(request.messages, request.tools)
        # Why set before the grow: a judgement beside the run asks the ledger with it.
        self._call = self.worst_case(tokens, request.max_tokens)
        try:
            try:
                await self._grow(spent_micros + self._side + self._call)
            except BudgetExceeded as exc:
                room = (
                    self.reservation.amount_micros
                    + _headroom(exc.details)
                    - spent_micros
                    - self._side
                )
                fits = affordable_tokens(self.price, tokens, request.max_tokens, room)
                if fits is None:
                    raise
                self._call = self.worst_case(tokens, fits)
                await self._grow(spent_micros + self._side + self._call)
                request, cut = dataclasses.replace(request, max_tokens=fits), exc.details
        except BaseException:
            self._call = 0
            raise
        self.cut = cut
        return request


class CoveredModel:
    """A model whose every request is covered by a run's reservation before it is made
    and counted in the run as soon as it answers (:meth:`RunBudget.covered`).

    A request the budget cannot cover raises :class:`BudgetExceeded` and is not made.
    One cancelled in flight (a judgement's timeout, the run's end) is counted at its
    input tokens, no output: the provider has billed them.
    """

    def __init__(
        self,
        model: Model,
        budget: RunBudget,
        price: Price | None,
        *,
        spent: Callable[[], int],
        count: Callable[[Usage, str], None],
    ) -> None:
        self.model = model
        self._budget = budget
        self._price = price
        self._spent = spent
        self._count = count

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def profile(self) -> ModelProfile:
        return profile_of(self.model)

    async def generate(self, request: ModelRequest) -> ModelResponse:
        tokens = input_tokens(request.messages, request.tools)
        price = self._price
        worst = price(tokens, request.max_tokens) if price is not None else 0
        await self._budget.hold(self._spent(), worst)
        # Why no await between counting and releasing: the hold never lapses before
        # what the call cost is in the run's usage.
        try:
            response = await self.model.generate(request)
        except asyncio.CancelledError:
            if price is not None:
                unanswered = Usage(input_tokens=tokens, cost_micros=price(tokens, 0), requests=1)
                self._count(unanswered, self.model.name)
            self._budget.release(worst)
            raise
        except BaseException:
            self._budget.release(worst)
            raise
        self._count(response.usage, response.model)
        self._budget.release(worst)
        return response

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """One event: the whole response (these calls are not shown to anyone)."""
        yield ResponseDone(await self.generate(request))
