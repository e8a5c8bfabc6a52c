"""One entry point deletes what coterie keeps about a member (``/forgetme``,
``coterie forget``), like Red's ``red_delete_data_for_user``.

Every noun that stores a member's data registers a :data:`Forget` function under
its name (personas, skills and schedules, thread bindings, budget, audit); each
deletes or anonymises that member's rows and says how many it touched.
:meth:`DataDeletion.forget` asks them all, in order, under a per-member lock (two
requests for one member never interleave), and returns a :class:`DeletionReport`.
A part that fails does not stop the others; the report names it and the error is
re-raised once all have been asked, so nothing is reported done that was not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["DataDeletion", "DeletionFailed", "DeletionReport", "Forget"]

log = logging.getLogger(__name__)

Forget = Callable[[str], Awaitable[int]]
"""Deletes or anonymises one member's rows of one noun; returns how many."""


@dataclass(slots=True)
class DeletionReport:
    user_id: str
    counts: dict[str, int] = field(default_factory=dict)  # part -> rows touched
    failed: dict[str, str] = field(default_factory=dict)  # part -> error

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        parts = [f"{name}: {n}" for name, n in self.counts.items()]
        return ", ".join(parts) or "nothing was stored"


class DeletionFailed(Exception):
    def __init__(self, report: DeletionReport) -> None:
        self.report = report
        super().__init__(
            "could not delete everything: "
            + ", ".join(f"{k} ({v})" for k, v in report.failed.items())
        )


class DataDeletion:
    def __init__(self, parts: Mapping[str, Forget]) -> None:
        self.parts = dict(parts)
        self._locks: dict[str, asyncio.Lock] = {}

    async def forget(self, user_id: str) -> DeletionReport:
        if not user_id:
            raise ValueError("a user id is needed")
        lock = self._locks.setdefault(user_id, asyncio.Lock())
        try:
            async with lock:
                report = DeletionReport(user_id=user_id)
                for name, forget in self.parts.items():
                    try:
                        report.counts[name] = await forget(user_id)
                    except Exception as exc:
                        log.exception("deleting %s's %s failed", user_id, name)
                        report.failed[name] = type(exc).__name__
                log.info("forgot member %s: %s", user_id, report.summary())
                if report.failed:
                    raise DeletionFailed(report)
                return report
        finally:
            if not lock.locked():
                self._locks.pop(user_id, None)
