"""Rolling budgets: the rules every budget gate follows, and an in-memory gate.

A member's spend is the sum of their charges in the last 7 x 24 hours: a ledger of
timestamped charges, not a counter that resets. Their limit is a default, or an
override set for them, plus any one-off grants that have not expired. A run reserves
an estimate first; the gate refuses when ``spent + reserved + estimate`` would pass
the limit, saying when enough spend rolls out of the window. Before each model call
the run grows its reservation to cover that call's worst case (``grow``, refused the
same way), so a run never spends what its member does not have. After the run the
reservation is settled: the real cost is charged, the rest released.

Budgets are keyed by ``Caller.user_id`` alone: one allowance per person across every
guild (the operator's console runs use their own id, "console" by default).

:class:`InMemoryBudgetLedger` is the kernel's default with limits (state lives in the
process; ``adapters.storage.budget.SqlBudgetLedger`` is the durable one). Both pass the same
conformance suite.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from executor.agent import Caller
from executor.errors import BudgetDetails, BudgetExceeded
from executor.ports import Clock, RealClock, Reservation

__all__ = [
    "WINDOW",
    "BudgetStatus",
    "InMemoryBudgetLedger",
    "dollars_to_micros",
    "format_usd",
    "frees_at",
    "out_of_budget_advice",
]

#: The rolling window over which spend counts.
WINDOW = timedelta(days=7)


def dollars_to_micros(usd: float) -> int:
    """Dollars (as configured) to integer micro-dollars, rounded to the nearest micro."""
    return round(usd * 1_000_000)


def frees_at(
    charges: Iterable[tuple[datetime, int]], excess_micros: int, window: timedelta = WINDOW
) -> datetime | None:
    """When ``excess_micros`` of spend will have rolled out of the window.

    ``charges`` are the (time, amount) charges inside the window, oldest first. None
    when rolling out is not enough (reservations and the estimate alone pass the limit).
    """
    if excess_micros <= 0:
        return None
    rolled = 0
    for at, amount in charges:
        rolled += amount
        if rolled >= excess_micros:
            return at + window
    return None


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """One member's budget now."""

    user_id: str
    limit_micros: int  # base (default or override) plus active grants
    base_limit_micros: int
    overridden: bool  # the base is an override, not the default
    granted_micros: int  # active grants included in limit_micros
    spent_micros: int  # charges in the window
    reserved_micros: int  # open reservations

    @property
    def available_micros(self) -> int:
        return self.limit_micros - self.spent_micros - self.reserved_micros


def _check_amount(name: str, micros: int) -> None:
    if micros < 0:
        raise ValueError(f"{name} must not be negative (got {micros})")


@dataclass(slots=True)
class _Grant:
    amount_micros: int
    expires_at: datetime


class InMemoryBudgetLedger:
    """A rolling 7-day budget per member, in memory.

    Atomic by construction: no ``await`` sits between the check and the reservation,
    so concurrent tasks on one event loop can never over-reserve.
    """

    def __init__(
        self,
        default_limit_micros: int,
        *,
        clock: Clock | None = None,
        window: timedelta = WINDOW,
    ) -> None:
        _check_amount("default_limit_micros", default_limit_micros)
        self.default_limit_micros = default_limit_micros
        self.clock: Clock = clock if clock is not None else RealClock()
        self.window = window
        self._limits: dict[str, int] = {}
        self._grants: dict[str, list[_Grant]] = {}
        self._charges: dict[str, list[tuple[datetime, int, str | None]]] = {}
        self._open: dict[int, Reservation] = {}
        self._ids = itertools.count(1)

    # --- the gate ----------------------------------------------------------------

    async def reserve(self, caller: Caller, run_id: str, estimate_micros: int) -> Reservation:
        _check_amount("estimate_micros", estimate_micros)
        status = self._status(caller.user_id)
        if status.spent_micros + status.reserved_micros + estimate_micros > status.limit_micros:
            excess = (
                status.spent_micros + status.reserved_micros + estimate_micros - status.limit_micros
            )
            raise BudgetExceeded(
                BudgetDetails(
                    spent_micros=status.spent_micros,
                    reserved_micros=status.reserved_micros,
                    estimate_micros=estimate_micros,
                    limit_micros=status.limit_micros,
                    frees_at=frees_at(self._window_charges(caller.user_id), excess, self.window),
                )
            )
        token = next(self._ids)
        reservation = Reservation(
            run_id=run_id, caller=caller, amount_micros=estimate_micros, token=token
        )
        self._open[token] = reservation
        return reservation

    async def grow(self, reservation: Reservation, amount_micros: int) -> Reservation:
        _check_amount("amount_micros", amount_micros)
        current = self._open.get(reservation.token)
        if current is None:
            raise ValueError(f"the reservation of run {reservation.run_id} is settled already")
        extra = amount_micros - current.amount_micros
        if extra <= 0:
            return current
        user_id = current.caller.user_id
        status = self._status(user_id)
        total = status.spent_micros + status.reserved_micros + extra
        if total > status.limit_micros:
            raise BudgetExceeded(
                BudgetDetails(
                    spent_micros=status.spent_micros,
                    reserved_micros=status.reserved_micros,
                    estimate_micros=extra,
                    limit_micros=status.limit_micros,
                    frees_at=frees_at(
                        self._window_charges(user_id), total - status.limit_micros, self.window
                    ),
                )
            )
        grown = replace(current, amount_micros=amount_micros)
        self._open[reservation.token] = grown
        return grown

    async def settle(self, reservation: Reservation, cost_micros: int) -> None:
        _check_amount("cost_micros", cost_micros)
        if self._open.pop(reservation.token, None) is None:
            return  # settled already: settling twice must not charge twice
        if cost_micros:
            self._charges.setdefault(reservation.caller.user_id, []).append(
                (self.clock.now(), cost_micros, reservation.run_id)
            )

    # --- admin -------------------------------------------------------------------

    async def set_limit(self, user_id: str, limit_micros: int | None) -> None:
        """Override one member's limit; None returns them to the default."""
        if limit_micros is None:
            self._limits.pop(user_id, None)
        else:
            _check_amount("limit_micros", limit_micros)
            self._limits[user_id] = limit_micros

    async def grant(
        self,
        user_id: str,
        amount_micros: int,
        *,
        granted_by: str = "",
        expires_at: datetime | None = None,
        note: str = "",
    ) -> None:
        """A one-off grant: extra allowance until it expires (one window by default)."""
        _check_amount("amount_micros", amount_micros)
        until = expires_at if expires_at is not None else self.clock.now() + self.window
        self._grants.setdefault(user_id, []).append(_Grant(amount_micros, until))

    async def status(self, user_id: str) -> BudgetStatus:
        return self._status(user_id)

    async def delete_user_data(self, user_id: str) -> None:
        """Forget a member but not their budget: what the gate needs stays under their
        id (it is what the gate keys on), so forgetting never resets a budget.

        Kept: the amount and time of each charge in the window (the run it paid for is
        forgotten; older charges go), the limit set for them (the host's decision about
        that id), grants that have not expired (amount and expiry only), open
        reservations (runs in flight settle them).
        """
        since = self.clock.now() - self.window
        self._charges[user_id] = [
            (at, amount, None) for at, amount, _ in self._charges.get(user_id, []) if at > since
        ]
        now = self.clock.now()
        self._grants[user_id] = [g for g in self._grants.get(user_id, []) if g.expires_at > now]

    # --- internals -----------------------------------------------------------------

    def _window_charges(self, user_id: str) -> list[tuple[datetime, int]]:
        since = self.clock.now() - self.window
        charges = self._charges.get(user_id, [])
        # Why prune here: the window only moves forward, so old charges never count again.
        kept = [c for c in charges if c[0] > since]
        if len(kept) != len(charges):
            self._charges[user_id] = kept
        return sorted((at, amount) for at, amount, _ in kept)

    def _status(self, user_id: str) -> BudgetStatus:
        now = self.clock.now()
        override = self._limits.get(user_id)
        base = override if override is not None else self.default_limit_micros
        granted = sum(g.amount_micros for g in self._grants.get(user_id, []) if g.expires_at > now)
        spent = sum(amount for _, amount in self._window_charges(user_id))
        reserved = sum(r.amount_micros for r in self._open.values() if r.caller.user_id == user_id)
        return BudgetStatus(
            user_id=user_id,
            limit_micros=base + granted,
            base_limit_micros=base,
            overridden=override is not None,
            granted_micros=granted,
            spent_micros=spent,
            reserved_micros=reserved,
        )


def out_of_budget_advice(details: BudgetDetails | None) -> str:
    """What a member whose budget ran out can do, in one sentence."""
    wait = (
        f"wait until {details.frees_at:%Y-%m-%d %H:%M} UTC (enough of your spend rolls out "
        "of the 7-day window then), or "
        if details is not None and details.frees_at is not None
        else ""
    )
    return f"You can {wait}ask a server admin for a one-off grant or a higher limit."


def format_usd(micros: int, places: int = 4) -> str:
    """Integer micro-dollars as dollars for people, at the precision they have:
    at least ``places`` decimals, more when the amount has them (down to the
    micro-dollar). ``format_usd(4200) == "$0.0042"``, ``format_usd(1_500_000, 2) ==
    "$1.50"``, ``format_usd(1_000, 2) == "$0.001"`` (never "$0.00" for a grant of a
    tenth of a cent); thousands separated, the sign in front. Integer arithmetic: no
    float rounding."""
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(micros), 1_000_000)
    digits = f"{fraction:06d}".rstrip("0").ljust(min(max(places, 0), 6), "0")
    return f"{sign}${whole:,}" + (f".{digits}" if digits else "")
