"""Budget warnings: one DM when a member passes 50 % of their limit, one at 80 %.

After each settled run (``SqlBudgetLedger.after_settle``) :meth:`BudgetAlerts.check`
reads the member's budget where they ran, and for each threshold
(``COTERIE_BUDGET_WARN_PERCENT``, ``[50, 80]`` by default) they are now at or past,
*claims* the warning in the store (a row per member and threshold: it survives
restarts) before telling them; a threshold already claimed is not sent again. When
their spend is back under a threshold (spend rolled out of the window, a grant, a
higher limit) its claim is released, so the next crossing warns again: once per
crossing. Several thresholds crossed by one run send one DM, naming the highest.

The DM goes through an :class:`AlertSender` attached by the host (the Discord client
in ``setup_hook``); with none attached a warning is logged and still claimed, so a
restart does not send it late.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from adapters.services.budgets import BudgetReader
from executor.agent import Caller
from executor.budget import BudgetStatus, format_usd

__all__ = ["AlertSender", "AlertStore", "BudgetAlerts", "InMemoryAlertStore", "warning_text"]

log = logging.getLogger(__name__)


class AlertStore(Protocol):
    async def claimed(self, user_id: str) -> set[int]:
        """The thresholds already warned about in the member's current crossing."""
        ...

    async def claim(self, user_id: str, threshold_pct: int) -> bool:
        """Mark the threshold as warned about; False when it already was (by anyone)."""
        ...

    async def release(self, user_id: str, thresholds: Sequence[int]) -> None:
        """The member is back under these thresholds: the next crossing warns again."""
        ...


class AlertSender(Protocol):
    async def send_warning(self, user_id: str, text: str) -> None: ...


class InMemoryAlertStore:
    def __init__(self) -> None:
        self._sent: dict[str, set[int]] = {}

    async def claimed(self, user_id: str) -> set[int]:
        return set(self._sent.get(user_id, ()))

    async def claim(self, user_id: str, threshold_pct: int) -> bool:
        mine = self._sent.setdefault(user_id, set())
        if threshold_pct in mine:
            return False
        mine.add(threshold_pct)
        return True

    async def release(self, user_id: str, thresholds: Sequence[int]) -> None:
        self._sent.get(user_id, set()).difference_update(thresholds)

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
        ledger: BudgetReader,
        store: AlertStore,
        *,
        thresholds: Sequence[int] = (50, 80),
    ) -> None:
        bad = [t for t in thresholds if not 0 < t <= 100]
        if bad:
            raise ValueError(f"budget warning thresholds must be 1-100 (got {bad})")
        self.ledger = ledger
        self.store = store
        self.thresholds = tuple(sorted(set(thresholds)))
        self._sender: AlertSender | None = None

    def attach(self, sender: AlertSender) -> None:
        self._sender = sender

    def detach(self, sender: AlertSender) -> None:
        if self._sender is sender:
            self._sender = None

    async def check(self, caller: Caller) -> int | None:
        """Warn ``caller`` of a newly crossed threshold; returns the one sent, or None."""
        if not self.thresholds:
            return None
        status = await self.ledger.status(caller.user_id, context=caller)
        if status.limit_micros <= 0:
            return None  # a zero budget refuses every run: nothing to warn about
        # Why spent only: a reservation is an estimate that is settled a moment later.
        pct = status.spent_micros * 100 / status.limit_micros
        passed = [t for t in self.thresholds if pct >= t]
        claimed = await self.store.claimed(caller.user_id)
        under = [t for t in claimed if t not in passed]
        if under:
            await self.store.release(caller.user_id, under)
        new = [t for t in passed if t not in claimed and await self.store.claim(caller.user_id, t)]
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
