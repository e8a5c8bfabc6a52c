"""Times typed by people: ``7d``, ``2h``, ``30m``, ``2w`` back from now, or an ISO date or
date and time (UTC unless it says otherwise). Shared by ``/audit`` and ``coterie audit``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from adapters.services.errors import InvalidSetting

__all__ = ["parse_when"]

_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """``text`` as an aware datetime; :class:`InvalidSetting` (for people) when it is not."""
    value = text.strip().lower()
    if value and value[-1] in _UNITS and value[:-1].isdigit():
        back = timedelta(seconds=int(value[:-1]) * _UNITS[value[-1]])
        return (now or datetime.now(UTC)) - back
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise InvalidSetting(
            f"“{text[:40]}” is not a time: use a span back like 2h, 7d, 2w, or a date like "
            "2026-01-31."
        ) from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)
