"""Budget warnings: one DM when a member passes 50 % of their limit, one at 80 %.

After each settled run (``SqlBudgetLedger.after_settle``) :meth:`BudgetAlerts.check`
reads the member's budget where they ran, and for each threshold
(``COTERIE_BUDGET_WARN_PERCENT``, ``[50, 80]`` by default) they are now at or past,
*claims* the warning in the store (a row per member and threshold, stamped with the
ledger's clock: it survives restarts) before telling them; a threshold already
claimed is not sent again. A claim is released once the member was back under its
threshold: now (a grant, a higher limit), or just before this run's charge, later
than the claim (spend rolled out of the window since; spend only falls between
charges, so that is the lowest it was). The next crossing then warns again: once per
crossing. Several thresholds crossed by one run send one DM, naming the highest.

The DM goes through an :class:`AlertSender` attached by the host (the Discord client
in ``setup_hook``); with none attached a warning is logged and still claimed, so a
restart does not send it late.

After a settle, the ledger hands over what it read in the settle's own transaction (a
:class:`SettledCharge`: the budget just after the charge and just before it, the
warnings claimed), so a run that crosses nothing costs the warnings no read at all.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from adapters.services.budgets import BudgetReader
from executor.agent import Caller
from executor.budget import BudgetStatus, format_usd
from executor.ports import Clock, RealClock

__all__ = [
    "AlertSender",
    "AlertStore",
    "BudgetAlerts",
    "InMemoryAlertStore",
    "SettledCharge",
    "warning_text",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SettledCharge:
    """What a settle's transaction saw of the member it charged."""

    status: BudgetStatus  # their budget just after the charge
    spent_before_micros: int  # their window's spend just before it
    claimed: Mapping[int, datetime]  # the warnings already claimed, and when


class AlertStore(Protocol):
    async def claimed(self, user_id: str) -> dict[int, datetime]:
        """The thresholds already warned about, and when."""
        ...

    async def claim(self, user_id: str, threshold_pct: int, at: datetime) -> bool:
        """Mark the threshold as warned about; False when it already was (by anyone)."""
        ...

    async def release(self, user_id: str, thresholds: Sequence[int]) -> None:
        """The member is back under these thresholds: the next crossing warns again."""
        ...


class AlertSender(Protocol):
    async def send_warning(self, user_id: str, text: str) -> None: ...


class SpendReader(BudgetReader, Protocol):
    async def spent_at(self, user_id: str, at: datetime) -> int:
        """The member's window spend as it was at ``at``."""
        ...


class InMemoryAlertStore:
    def __init__(self) -> None:
        self._sent: dict[str, dict[int, datetime]] = {}

    async def claimed(self, user_id: str) -> dict[int, datetime]:
        return dict(self._sent.get(user_id, {}))

    async def claim(self, user_id: str, threshold_pct: int, at: datetime) -> bool:
        mine = self._sent.setdefault(user_id, {})
        if threshold_pct in mine:
            return False
        mine[threshold_pct] = at
        return True

    async def release(self, user_id: str, thresholds: Sequence[int]) -> None:
        mine = self._sent.get(user_id, {})
        for t in thresholds:
            mine.pop(t, None)

    async def delete_user_data(self, user_id: str) -> int:
        return len(self._sent.pop(user_id, ()))


def warning_text(threshold_pct: int, status: BudgetStatus) -> str:
    used = status.spent_micros
    return (
        f"Heads up: you have used {threshold_pct} % of your 7-day coterie budget "
        f"({format_usd(used, 2)} of {format_usd(status.limit_micros, 2)}). Spend rolls "
        "out of the window 7 days after it was made; `/budget me` shows when you can "
        "afford your next run. A server admin can give you more with `/budget grant`."
    )


class BudgetAlerts:
    def __init__(
        self,
        ledger: SpendReader,
        store: AlertStore,
        *,
        thresholds: Sequence[int] = (50, 80),
        clock: Clock | None = None,
    ) -> None:
        bad = [t for t in thresholds if not 0 < t <= 100]
        if bad:
            raise ValueError(f"budget warning thresholds must be 1-100 (got {bad})")
        self.ledger = ledger
        self.store = store
        self.thresholds = tuple(sorted(set(thresholds)))
        self.clock: Clock = clock if clock is not None else RealClock()
        self._sender: AlertSender | None = None

    def attach(self, sender: AlertSender) -> None:
        self._sender = sender

    def detach(self, sender: AlertSender) -> None:
        if self._sender is sender:
            self._sender = None

    async def check(
        self,
        caller: Caller,
        charged_at: datetime | None = None,
        settled: SettledCharge | None = None,
    ) -> int | None:
        """Warn ``caller`` of a newly crossed threshold after a charge made at
        ``charged_at`` (``settled``: what the settle read; None: read it here);
        returns the threshold sent, or None."""
        if not self.thresholds:
            return None
        now = self.clock.now()
        if settled is not None:
            status = settled.status
        else:
            status = await self.ledger.status(caller.user_id, context=caller)
        limit = status.limit_micros
        if limit <= 0:
            return None  # a zero budget refuses every run: nothing to warn about
        # Why spent only: a reservation is an estimate that is settled a moment later.
        pct = status.spent_micros * 100 / limit
        passed = [t for t in self.thresholds if pct >= t]
        if settled is not None:
            claimed = dict(settled.claimed)
        else:
            claimed = await self.store.claimed(caller.user_id)
        under = [t for t in claimed if t not in passed]
        if charged_at is not None and len(under) < len(claimed):
            # The lowest the member's spend was since the last charge: just before this one.
            if settled is not None:
                spent_before = settled.spent_before_micros
            else:
                just_before = charged_at - timedelta(microseconds=1)
                spent_before = await self.ledger.spent_at(caller.user_id, just_before)
            before = spent_before * 100 / limit
            under += [
                t
                for t, sent in claimed.items()
                if t not in under and before < t and sent < charged_at
            ]
        if under:
            await self.store.release(caller.user_id, under)
            for t in under:
                claimed.pop(t)
        new = [
            t for t in passed if t not in claimed and await self.store.claim(caller.user_id, t, now)
        ]
        if not new:
            return None
        highest = max(new)
        sender = self._sender
        if sender is None:
            log.info("budget warning %d %% for %s: no sender attached", highest, caller.user_id)
            return highest
        try:
            await sender.send_warning(caller.user_id, warning_text(highest, status))
        except Exception:  # Why: DMs closed or Discord down; the claim stays (no late DM)
            log.warning("could not DM %s their budget warning", caller.user_id, exc_info=True)
        return highest
