"""`coterie --help` wall time and peak RSS, beside a bare interpreter and beside
what importing one provider SDK alone would cost (the reason SDKs load lazily).

    python benchmarks/cli_startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def measure(cmd: list[str], runs: int) -> tuple[float, float]:
    """Median wall seconds and median peak RSS (MB) of ``cmd`` over ``runs`` runs."""
    walls: list[float] = []
    rss: list[float] = []
    for _ in range(runs + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        walls.append(time.perf_counter() - t0)
        rss.append(usage.ru_maxrss / 1024)
    return statistics.median(walls[1:]), statistics.median(rss[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    py = sys.executable
    rows = [
        ("python -c pass (floor)", [py, "-c", "pass"]),
        ("coterie --help", [py, "-m", "bot", "--help"]),
        ("python -c 'import anthropic'", [py, "-c", "import anthropic"]),
        ("python -c 'import openai'", [py, "-c", "import openai"]),
    ]
    print(f"{'command':<32} {'wall ms (median)':>17} {'peak RSS MB':>12}")
    for label, cmd in rows:
        wall, rss = measure(cmd, args.runs)
        print(f"{label:<32} {wall * 1000:>17.0f} {rss:>12.1f}")
    leaked = subprocess.run(
        [
            py,
            "-c",
            "import sys; from bot.cli import build_parser; build_parser();"
            "print(','.join(m for m in ('anthropic', 'openai', 'discord', 'sqlalchemy') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(f"heavy modules imported by --help: {leaked or 'none'}")


if __name__ == "__main__":
    main()
