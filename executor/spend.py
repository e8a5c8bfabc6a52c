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
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from executor.agent import Caller
from executor.errors import BudgetDetails, BudgetExceeded
from executor.messages import Message
from executor.models.base import ModelRequest, ToolDefinition
from executor.ports import BudgetGate, Reservation
from executor.tokens import CHARS_PER_TOKEN, estimate_tokens

__all__ = ["MIN_CALL_TOKENS", "Price", "RunBudget", "affordable_tokens", "input_tokens"]

#: The fewest output tokens a call is cut to before the run stops for its budget.
MIN_CALL_TOKENS = 256

#: ``(input tokens, output tokens) -> micro-dollars``: the worst case of one call.
Price = Callable[[int, int], int]


def input_tokens(messages: Sequence[Message], tools: Sequence[ToolDefinition] = ()) -> int:
    """The input estimate of one request: its messages and its tool definitions."""
    schema = sum(
        len(t.name) + len(t.description) + len(json.dumps(t.parameters, default=str)) for t in tools
    )
    return estimate_tokens(messages) + schema // CHARS_PER_TOKEN


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
    _first_cap: int | None = None
    _first_cut: BudgetDetails | None = None

    def worst_case(self, input_tok: int, max_tokens: int) -> int:
        return self.price(input_tok, max_tokens) if self.price is not None else 0

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

    async def cover(self, spent_micros: int, request: ModelRequest) -> ModelRequest:
        """The request as it may be sent: the reservation grown to ``spent_micros`` plus
        its worst case, its ``max_tokens`` cut when the budget cannot cover all of it.

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
        tokens = input_tokens(request.messages, request.tools)
        want = spent_micros + self.worst_case(tokens, request.max_tokens)
        if want > self.reservation.amount_micros:
            try:
                self.reservation = await self.gate.grow(self.reservation, want)
            except BudgetExceeded as exc:
                room = self.reservation.amount_micros + _headroom(exc.details) - spent_micros
                fits = affordable_tokens(self.price, tokens, request.max_tokens, room)
                if fits is None:
                    raise
                self.reservation = await self.gate.grow(
                    self.reservation, spent_micros + self.worst_case(tokens, fits)
                )
                request, cut = dataclasses.replace(request, max_tokens=fits), exc.details
        self.cut = cut
        return request

    async def cover_extra(self, spent_micros: int, extra_micros: int) -> None:
        """Grow the reservation to ``spent_micros`` plus ``extra_micros`` (a priced tool
        call). Raises :class:`BudgetExceeded` when the member's budget cannot."""
        assert self.reservation is not None, "open() first"
        want = spent_micros + extra_micros
        if want > self.reservation.amount_micros:
            self.reservation = await self.gate.grow(self.reservation, want)
