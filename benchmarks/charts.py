"""The spend chart: render time for 14 days x 20 personas, and the event loop's worst lag
while it draws (off the loop with ``asyncio.to_thread``, as ``/budget chart`` does),
beside the baseline of drawing on the loop itself.

    .venv/bin/python benchmarks/charts.py [--repeats 15]

Prints figures, asserts nothing (goal: under 1 s a chart; the loop stays responsive).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.discord.charts import ChartData, chart_data, render_spend_chart

DAYS, PERSONAS = 14, 20
TICK_S = 0.002


@dataclass(frozen=True)
class Row:
    day: date
    label: str
    cost_micros: int


def sample() -> ChartData:
    last = date(2026, 1, 14)
    rows = [
        Row(last - timedelta(days=d), f"persona-{p:02d}", 1_000 * (p + 1) * (d % 5 + 1))
        for d in range(DAYS)
        for p in range(PERSONAS)
    ]
    return chart_data(rows, last_day=last, days=DAYS)


async def worst_lag(draw: object, data: ChartData, repeats: int) -> tuple[float, float]:
    """(worst lag, median lag) of a 2 ms ticker while ``draw`` runs ``repeats`` charts."""
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            before = loop.time()
            await asyncio.sleep(TICK_S)
            lags.append(loop.time() - before - TICK_S)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)  # the ticker is running
    for _ in range(repeats):
        if draw == "thread":
            await asyncio.to_thread(render_spend_chart, data, title="bench")
        else:
            render_spend_chart(data, title="bench")  # blocks the loop: the baseline
            await asyncio.sleep(0)
    stop.set()
    await task
    return max(lags), statistics.median(lags)


def cold_start_s() -> float:
    """First chart in a fresh interpreter: matplotlib's import included."""
    code = (
        f"import sys, time; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r});"
        "from benchmarks.charts import sample; from adapters.discord.charts import "
        "render_spend_chart; d = sample(); t = time.perf_counter(); "
        "render_spend_chart(d, title='x'); print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    data = sample()
    cold = cold_start_s()
    render_spend_chart(data, title="warm-up")
    times = []
    size = 0
    for _ in range(args.repeats):
        t = time.perf_counter()
        size = len(render_spend_chart(data, title="bench"))
        times.append(time.perf_counter() - t)
    off_worst, off_median = asyncio.run(worst_lag("thread", data, args.repeats))
    on_worst, on_median = asyncio.run(worst_lag("loop", data, args.repeats))
    ms = 1000
    print(f"spend chart, {DAYS} days x {PERSONAS} personas, {size / 1024:.0f} KiB PNG")
    print(f"  first chart in a fresh process (matplotlib import included): {cold * ms:.0f} ms")
    print(
        f"  render, warm: median {statistics.median(times) * ms:.0f} ms, "
        f"max {max(times) * ms:.0f} ms over {args.repeats} (goal < 1000 ms)"
    )
    print(
        f"  event-loop lag while drawing off the loop (to_thread): worst {off_worst * ms:.1f} ms, "
        f"median {off_median * ms:.2f} ms"
    )
    print(
        f"  baseline, drawing on the loop: worst {on_worst * ms:.1f} ms, "
        f"median {on_median * ms:.2f} ms"
    )


if __name__ == "__main__":
    main()
