"""The data API: one entry point deletes what coterie keeps about a member
(``/forgetme``, ``coterie forget``) and one exports it (``/mydata``, ``coterie
export-member``), like Red's ``red_delete_data_for_user``.

Every store that keeps a member's data implements :class:`MemberData`: a name for its
part (``data_name``: "personas", "memory notes", ...), ``delete_user_data(user_id)``
(deletes or anonymises the member's rows and says how many it touched) and
``export_user_data(user_id)`` (everything it keeps about them, as JSON-able data). The
composition root collects the stores *by type* (``App.member_data``), never by a list
written by hand, so a store added later is asked too; ``tests/services/test_deletion.py``
seeds every table with a member column and fails when one is left out of either.

What a part keeps after a forget is the part's own decision, said in its docstring (the
audit keeps runs anonymised for accounting; the budget decides what it must keep of the
rolling window): the orchestrator only asks each part, in order.

:meth:`DataDeletion.forget` and :meth:`DataDeletion.export` run under a per-member lock
(two requests for one member never interleave). A part that fails does not stop the
others; the report names it and the error is raised once all have been asked, so
nothing is reported done that was not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from executor.ports import utcnow

__all__ = [
    "DataDeletion",
    "DeletionFailed",
    "DeletionReport",
    "Export",
    "ExportFailed",
    "Forget",
    "MemberData",
    "collect_member_data",
]

log = logging.getLogger(__name__)

Forget = Callable[[str], Awaitable[int]]
"""Deletes or anonymises one member's rows of one noun; returns how many."""

Export = Callable[[str], Awaitable[Any]]
"""Everything one noun keeps about one member, as JSON-able data."""


@runtime_checkable
class MemberData(Protocol):
    """A store that keeps data about members: it can delete and export one member's."""

    #: The part's name in reports and in the export ("memory notes").
    data_name: str

    async def delete_user_data(self, user_id: str) -> int:
        """Delete (or anonymise) the member's rows; how many were touched."""
        ...

    async def export_user_data(self, user_id: str) -> Any:
        """Everything kept about the member, JSON-able (dicts, lists, strings, numbers)."""
        ...


def collect_member_data(objects: Iterable[object]) -> list[MemberData]:
    """The objects that are :class:`MemberData`, once each, in order."""
    found: list[MemberData] = []
    seen: set[int] = set()
    for obj in objects:
        if isinstance(obj, MemberData) and id(obj) not in seen:
            seen.add(id(obj))
            found.append(obj)
    return found


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


class ExportFailed(Exception):
    def __init__(self, failed: dict[str, str]) -> None:
        self.failed = failed
        super().__init__(
            "could not export everything: " + ", ".join(f"{k} ({v})" for k, v in failed.items())
        )


class DataDeletion:
    """Asks every part to delete, or export, one member's data.

    ``parts``: the :class:`MemberData` stores (the app's, collected by type), or, for a
    part that is a function, a mapping of name -> :data:`Forget` (it exports nothing).
    """

    def __init__(
        self,
        parts: Iterable[MemberData] | Mapping[str, Forget],
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.parts: dict[str, Forget] = {}
        self.exports: dict[str, Export] = {}
        self._clock = clock
        if isinstance(parts, Mapping):
            self.parts.update(parts)
        else:
            for store in parts:
                name = store.data_name
                if name in self.parts:
                    raise ValueError(f"two stores call their member data {name!r}")
                self.parts[name] = store.delete_user_data
                self.exports[name] = store.export_user_data
        self._locks: dict[str, asyncio.Lock] = {}

    @asynccontextmanager
    async def _member(self, user_id: str) -> AsyncIterator[None]:
        if not user_id:
            raise ValueError("a user id is needed")
        lock = self._locks.setdefault(user_id, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked():
                self._locks.pop(user_id, None)

    async def forget(self, user_id: str) -> DeletionReport:
        async with self._member(user_id):
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

    async def export(self, user_id: str) -> dict[str, Any]:
        """Everything coterie keeps about ``user_id``: ``{"user_id", "exported_at",
        "data": {part: what it keeps}}``. Raises :class:`ExportFailed` naming the
        parts that failed (after asking every part)."""
        async with self._member(user_id):
            data: dict[str, Any] = {}
            failed: dict[str, str] = {}
            for name, export in self.exports.items():
                try:
                    data[name] = await export(user_id)
                except Exception as exc:
                    log.exception("exporting %s's %s failed", user_id, name)
                    failed[name] = type(exc).__name__
            if failed:
                raise ExportFailed(failed)
            return {
                "user_id": user_id,
                "exported_at": self._clock().isoformat(),
                "data": data,
            }
