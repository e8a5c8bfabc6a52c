"""Rows as JSON-able dicts, for the stores' ``export_user_data`` (``/mydata``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

__all__ = ["jsonable", "jsonable_rows"]


def _value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    """One row (``Row._mapping``, a dict) with datetimes as ISO 8601 text."""
    return {str(k): _value(v) for k, v in row.items()}


def jsonable_rows(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """Rows of a Core ``select`` (``result.mappings()`` or rows with ``_mapping``)."""
    return [jsonable(r if isinstance(r, Mapping) else r._mapping) for r in rows]
