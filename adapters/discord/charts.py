"""The spend chart: spend per day, stacked by persona or skill, as a PNG attachment.

Drawn with matplotlib on its headless Agg backend, through the object API (a
``Figure`` and an Agg canvas per chart, never ``pyplot``'s global state, so charts
may be drawn from worker threads). :func:`spend_chart` draws off the event loop
(``asyncio.to_thread``); matplotlib is imported only when the first chart is drawn,
so the bot starts (and ``coterie --help`` runs) without loading it.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Protocol

import discord

from adapters.discord.ui import png_file
from executor.budget import format_usd

__all__ = [
    "CHART_DPI",
    "CHART_SIZE_IN",
    "ChartData",
    "SpendRow",
    "alt_text",
    "chart_data",
    "render_spend_chart",
    "spend_chart",
]

CHART_SIZE_IN = (10.0, 5.0)
CHART_DPI = 100  # 1000 x 500 pixels
MAX_SERIES = 20  # past this the smallest are drawn together as "other"


class SpendRow(Protocol):
    """One day's spend of one persona or skill (``AuditQueries.spend_by_label``)."""

    @property
    def day(self) -> date: ...
    @property
    def label(self) -> str: ...
    @property
    def cost_micros(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ChartData:
    days: list[date]
    # label -> micro-dollars per day (aligned with ``days``), biggest total first
    series: dict[str, list[int]]

    @property
    def total_micros(self) -> int:
        return sum(sum(v) for v in self.series.values())


def chart_data(rows: Sequence[SpendRow], *, last_day: date, days: int) -> ChartData:
    """Rows -> one value per day for each label, the ``days`` days up to ``last_day``."""
    span = [last_day - timedelta(days=days - 1 - i) for i in range(days)]
    index = {d: i for i, d in enumerate(span)}
    series: dict[str, list[int]] = {}
    for row in rows:
        i = index.get(row.day)
        if i is None:
            continue
        series.setdefault(row.label, [0] * days)[i] += row.cost_micros
    ordered = sorted(series.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
    if len(ordered) > MAX_SERIES:
        keep, rest = ordered[: MAX_SERIES - 1], ordered[MAX_SERIES - 1 :]
        other = [sum(v[i] for _, v in rest) for i in range(days)]
        ordered = [*keep, (f"other ({len(rest)})", other)]
    return ChartData(days=span, series=dict(ordered))


def render_spend_chart(data: ChartData, *, title: str) -> bytes:
    """The chart as PNG bytes (CPU-bound: call it off the event loop).

    Each series is one ``PolyCollection`` of its day bars, not one ``Rectangle`` artist
    per bar (20 personas x 14 days is 280 artists otherwise): a few draw calls instead
    of hundreds, which is most of the time a chart takes, and of the GIL it holds.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=CHART_SIZE_IN, dpi=CHART_DPI)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    days = len(data.days)
    bottom = [0.0] * days
    colours = colormaps["tab20"]
    handles = []
    half = 0.4
    for n, (label, values) in enumerate(data.series.items()):
        colour = colours(n % 20)
        bars = []
        for i, micros in enumerate(values):
            if micros:
                low, high = bottom[i], bottom[i] + micros / 1_000_000
                bars.append([(i - half, low), (i + half, low), (i + half, high), (i - half, high)])
                bottom[i] = high
        ax.add_collection(PolyCollection(bars, facecolors=[colour], edgecolors="none"))
        handles.append(Patch(facecolor=colour, label=label))
    top = max(bottom, default=0.0)
    ax.set_xlim(-0.6, days - 0.4)
    ax.set_ylim(0, top * 1.05 if top > 0 else 1.0)
    ax.set_xticks(range(days), [d.strftime("%b %d") for d in data.days], rotation=45, ha="right")
    ax.set_ylabel("spend (USD)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if handles:
        ax.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize="small",
            frameon=False,
        )
    else:
        ax.text(0.5, 0.5, "no spend", ha="center", va="center", transform=ax.transAxes)
    fig.subplots_adjust(left=0.08, right=0.78, bottom=0.2, top=0.9)
    out = io.BytesIO()
    canvas.print_png(out)  # type: ignore[no-untyped-call]
    return out.getvalue()


def alt_text(data: ChartData, *, scope: str) -> str:
    """The attachment's description: what the chart shows, in words."""
    days = len(data.days)
    if not data.series:
        return f"Spend per day for {scope} over the last {days} days: nothing was spent."
    top = ", ".join(
        f"{label} {format_usd(sum(values))}" for label, values in list(data.series.items())[:3]
    )
    return (
        f"Bar chart of spend per day for {scope} over the last {days} days "
        f"({data.days[0]:%b %d} to {data.days[-1]:%b %d}), stacked by persona or skill: "
        f"{format_usd(data.total_micros)} in total; most: {top}."
    )


async def spend_chart(data: ChartData, *, title: str, scope: str) -> discord.File:
    """Draw off the event loop and wrap as an attachment with alt text."""
    png = await asyncio.to_thread(render_spend_chart, data, title=title)
    return png_file(png, "spend.png", description=alt_text(data, scope=scope))
