"""What coterie costs a small VM, beside the floor of the libraries it stands on.

    python benchmarks/footprint.py [--runs 3] [--chats 100] [--before REV]

Printed side by side, in one run, each a real process:

* the import floor: discord.py, SQLModel, aiosqlite, anthropic, openai and APScheduler
  imported together in a bare interpreter (RSS, import time);
* ``coterie run`` idle after start: connected to the fake Discord
  (``tests/fakediscord``), both providers configured (a loopback LLMock), RSS once
  the "ready" line is out, and the time from process start to that line;
* the same process after ``--chats`` concurrent chat runs (every member's mention
  answered; ``COTERIE_LANE_SLOTS`` raised so that all of them are in flight at once);
* the same process's first member message after "ready" beside the next ones: from
  the fake Discord sending the mention to the LLMock receiving the model request
  (issue 19: the first paid for the provider's SDK import, 474 ms vs 17-19 ms);
* ``coterie ask`` from process start to its answer against the LLMock, with one
  provider's key (OpenAI's, Anthropic's) and with both, beside ``import anthropic``
  alone in a bare interpreter (only a configured provider's SDK is imported).

Goals: idle within 30 MB of the floor, under 250 MB after the 100 runs, ready in
under 3 s (issue 11); the first message as fast as the next ones, ``ask`` with an
Anthropic key under 2 s (issue 19). Figures, not a test: nothing here asserts.
Every child process may cache its bytecode (``PYTHONDONTWRITEBYTECODE`` is dropped):
an installed coterie has its ``.pyc`` files, and compiling on each start is not a
cost users pay. Needs the dev extras (``pip install -e '.[dev]'``: llmock, aiohttp).

``--before REV`` measures the code of commit ``REV`` too (``git archive`` into a
temporary directory; the worktree is left alone), each round of processes run for
the old code and then the new, so both share the machine's load; the figures are
printed in a column beside today's. ``coterie ask`` is also given in CPU seconds
(user + system, the process's own), which the load of the machine moves less.

``--only ask`` measures only ``coterie ask`` (about a minute): each round runs
``import anthropic`` alone, then ``ask`` with an Anthropic key for each code root, so
every figure shares its round's load; it prints the median and the range of each,
and what ``ask`` adds to the import in wall and CPU seconds (per round; the goal is at
most 0.55 s).
``--only bot`` measures only ``coterie run``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _revision import checkout

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakediscord import FakeDiscord  # noqa: E402
from tests.lifecycle.conftest import SHIM, Proc  # noqa: E402

FLOOR = (
    "import time; t = time.perf_counter();"
    "import discord, sqlmodel, aiosqlite, anthropic, openai, apscheduler;"
    "took = time.perf_counter() - t;"
    "rss = [l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1];"
    "print(f'{int(rss) / 1024:.1f} {took:.2f}')"
)
ANSWER = "pong"


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _env(
    tmp: Path, llmock: Any, *, anthropic: bool, openai: bool, root: Path = ROOT, **extra: str
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COTERIE_", "ANTHROPIC_", "OPENAI_", "DISCORD_"))
        and k not in ("DATABASE_URL", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
    }
    env.update(
        DATABASE_URL=f"sqlite:///{tmp / 'data' / 'coterie.db'}",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join([str(SHIM), str(root)]),
    )
    if anthropic:
        env.update(
            ANTHROPIC_API_KEY="sk-ant-bench", ANTHROPIC_BASE_URL=llmock.base_url("anthropic")
        )
    if openai:
        env.update(OPENAI_API_KEY="sk-bench", OPENAI_BASE_URL=llmock.base_url("openai"))
    env.update(extra)
    return env


def _bytecode_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def floor(runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", FLOOR],
            capture_output=True,
            text=True,
            check=True,
            env=_bytecode_env(),
        ).stdout.split()
        samples.append((float(out[0]), float(out[1])))
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def import_alone(module: str, runs: int) -> tuple[float, float]:
    """Median seconds of ``python -c 'import MODULE'`` (process start to exit), and
    its median CPU seconds."""
    walls, cpus = [], []
    for _ in range(runs + 1):  # the first warms the disk cache
        wall, cpu = _import_once(module)
        walls.append(wall)
        cpus.append(cpu)
    return statistics.median(walls[1:]), statistics.median(cpus[1:])


ANSWER_ROUTES = (
    ("POST", r"/webhooks/{id}/{token}"),
    ("PATCH", r"/webhooks/{id}/{token}/messages/{m}"),
)


async def _answered(fake: Any, since: int) -> Any:
    """Wait until a persona message (posted or edited) shows the whole answer."""
    return await fake.wait_for_any(
        ANSWER_ROUTES,
        lambda c: (c.json or {}).get("content") == ANSWER,
        timeout=60,
        since=since,
    )


async def _mention_to_request(fake: Any, llmock: Any, text: str) -> float:
    """Seconds from the fake Discord sending a mention to the LLMock's model request."""
    since = len(fake.calls)
    sent = time.monotonic()
    await fake.dispatch_message(f"<@{fake.bot_user['id']}> {text}", mentions=["bot"])
    await _answered(fake, since)
    started = [r.started_at for r in llmock.requests if r.started_at >= sent]
    return min(started) - sent


async def bot(
    runs: int, chats: int, llmock: Any, roots: dict[str, Path]
) -> dict[str, dict[str, float]]:
    """For each code root: idle RSS, time to ready, the first message beside the next
    ones, and RSS after ``chats`` concurrent chats (medians; the roots take turns)."""
    samples: dict[str, dict[str, list[float]]] = {
        name: {k: [] for k in ("idle", "ready", "after", "peak", "first", "later")}
        for name in roots
    }
    for _ in range(runs):
        for name, root in roots.items():
            await _bot_once(chats, llmock, root, samples[name])
    return {
        name: {k: statistics.median(v) for k, v in figures.items()}
        for name, figures in samples.items()
    }


async def _bot_once(chats: int, llmock: Any, root: Path, out: dict[str, list[float]]) -> None:
    idle, ready, after, peak, first, later = (
        out[k] for k in ("idle", "ready", "after", "peak", "first", "later")
    )
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        async with FakeDiscord() as fake:
            env = _env(
                tmp,
                llmock,
                anthropic=True,
                openai=True,
                DISCORD_TOKEN=fake.token,
                COTERIE_TEST_DISCORD_API=fake.api_base,
                COTERIE_TEST_DISCORD_GATEWAY=fake.gateway_url,
                COTERIE_LANE_SLOTS=str(chats),
                COTERIE_BUDGET_DEFAULT_USD="1000",
                root=root,
            )
            started = time.perf_counter()
            proc = await Proc.start("run", env=env, cwd=tmp)
            try:
                await proc.wait_for("coterie ready as", timeout=60)
                ready.append(time.perf_counter() - started)
                idle.append(_rss_mb(proc.pid))
                first.append(await _mention_to_request(fake, llmock, "first"))
                later.append(
                    statistics.median(
                        [await _mention_to_request(fake, llmock, f"next {i}") for i in range(5)]
                    )
                )
                since = len(fake.calls)
                for i in range(chats):
                    await fake.dispatch_message(
                        f"<@{fake.bot_user['id']}> ping {i}", mentions=["bot"]
                    )
                done = 0
                while done < chats:
                    call = await fake.wait_for_any(
                        ANSWER_ROUTES,
                        lambda c: (c.json or {}).get("content") == ANSWER,
                        timeout=120,
                        since=since,
                    )
                    since = fake.calls.index(call) + 1
                    done += 1
                after.append(_rss_mb(proc.pid))
                peak.append(_rss_mb(proc.pid, "VmHWM"))
                proc.signal()
                await proc.exit_code()
            finally:
                await proc.kill()


def _ask_env(
    tmp: Path, llmock: Any, *, anthropic: bool, openai: bool, root: Path
) -> dict[str, str]:
    """The environment of ``coterie ask`` in ``tmp``, its database already upgraded."""
    env = _env(tmp, llmock, anthropic=anthropic, openai=openai, root=root)
    subprocess.run(
        [sys.executable, "-m", "bot", "db", "upgrade"],
        env=env,
        cwd=tmp,
        check=True,
        capture_output=True,
    )
    return env


def _ask_once(env: dict[str, str], cwd: Path) -> tuple[float, float, float]:
    """One `coterie ask`: wall seconds from its start to its exit with the answer, CPU
    seconds, peak RSS (MB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "ask", "ping"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0 or ANSWER not in out.decode():
        raise SystemExit(f"coterie ask failed: {out.decode()!r}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def ask(
    runs: int, llmock: Any, *, anthropic: bool, openai: bool, root: Path = ROOT
) -> dict[str, float]:
    """Median seconds from `coterie ask` starting to its exit with the answer, its CPU
    seconds, and its peak RSS (MB)."""
    walls, cpus, rss = [], [], []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        env = _ask_env(tmp, llmock, anthropic=anthropic, openai=openai, root=root)
        for _ in range(runs + 1):  # the first warms the disk cache
            wall, cpu, peak = _ask_once(env, tmp)
            walls.append(wall)
            cpus.append(cpu)
            rss.append(peak)
    return {
        "wall": statistics.median(walls[1:]),
        "cpu": statistics.median(cpus[1:]),
        "rss": statistics.median(rss[1:]),
    }


def _import_once(module: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", f"import {module}"], env=_bytecode_env())
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"import {module} failed")
    return time.perf_counter() - t0, usage.ru_utime + usage.ru_stime


def ask_rounds(runs: int, llmock: Any, roots: dict[str, Path]) -> None:
    """``--only ask``: rounds of ``import anthropic`` alone, then ``coterie ask`` with
    an Anthropic key for each root; medians and ranges, and ``ask`` minus the import of
    the same round."""
    samples: dict[str, dict[str, list[float]]] = {
        name: {"wall": [], "cpu": [], "rss": [], "over": [], "over_cpu": []}
        for name in ("import anthropic", *roots)
    }
    with tempfile.TemporaryDirectory() as d:
        envs = {}
        for i, (name, root) in enumerate(roots.items()):
            tmp = Path(d) / str(i)
            tmp.mkdir()
            envs[name] = (_ask_env(tmp, llmock, anthropic=True, openai=False, root=root), tmp)
        for round_ in range(runs + 1):  # the first warms the disk cache
            imported, imported_cpu = _import_once("anthropic")
            figures = {"import anthropic": (imported, imported_cpu, 0.0)}
            for name, (env, tmp) in envs.items():
                figures[name] = _ask_once(env, tmp)
            if round_ == 0:
                continue
            for name, (wall, cpu, peak) in figures.items():
                samples[name]["wall"].append(wall)
                samples[name]["cpu"].append(cpu)
                samples[name]["rss"].append(peak)
                samples[name]["over"].append(wall - imported)
                samples[name]["over_cpu"].append(cpu - imported_cpu)

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    width = max(len(n) for n in samples) + 2
    print(f"{runs} rounds; median (range) in seconds; each round: the import, then each ask")
    print(f"{'':<{width}}{'wall':<20}{'CPU':<20}{'wall - import':<21}{'CPU - import':<21}peak RSS")
    for name, f in samples.items():
        alone = name == "import anthropic"
        over = "-" if alone else spread(f["over"])
        over_cpu = "-" if alone else spread(f["over_cpu"])
        rss = "-" if alone else f"{statistics.median(f['rss']):.0f} MB"
        print(
            f"{name:<{width}}{spread(f['wall']):<20}{spread(f['cpu']):<20}"
            f"{over:<21}{over_cpu:<21}{rss}"
        )
    print("goal: coterie ask <= 2 s, and <= import anthropic + 0.55 s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chats", type=int, default=100)
    parser.add_argument("--before", metavar="REV", help="also measure this commit's code")
    parser.add_argument(
        "--only",
        choices=("ask", "bot"),
        help="only `coterie ask` (Anthropic key, beside `import anthropic`), or only `coterie run`",
    )
    args = parser.parse_args()

    from llmock.pytest_plugin import LLMock
    from llmock.testing import LLMockServer

    with tempfile.TemporaryDirectory() as old, LLMockServer() as server:
        roots = {f"before ({args.before})": checkout(args.before, Path(old))} if args.before else {}
        roots["now"] = ROOT
        llmock = LLMock(server).reset()
        llmock.reply(ANSWER, times=None)
        if args.only == "ask":
            ask_rounds(args.runs, llmock, roots)
            return
        floor_rss, floor_s = floor(args.runs)
        figures = asyncio.run(bot(args.runs, args.chats, llmock, roots))
        if args.only != "bot":
            for name, root in roots.items():
                for key, keys in (
                    ("ask_openai", (False, True)),
                    ("ask_anthropic", (True, False)),
                ):
                    figures[name][key] = ask(  # type: ignore[assignment]
                        args.runs, llmock, anthropic=keys[0], openai=keys[1], root=root
                    )
            import_wall, import_cpu = import_alone("anthropic", args.runs)
            for name, root in roots.items():
                figures[name]["ask_both"] = ask(  # type: ignore[assignment]
                    args.runs, llmock, anthropic=True, openai=True, root=root
                )

    def ask_row(key: str) -> Any:
        return lambda f: (
            f"{f[key]['wall']:.2f} s, {f[key]['cpu']:.2f} s CPU ({f[key]['rss']:.0f} MB)"
        )

    rows: list[tuple[str, Any, str]] = [
        (
            "coterie run idle (both providers): RSS",
            lambda f: f"{f['idle']:.1f} MB ({f['idle'] - floor_rss:+.1f})",
            "<= floor + 30 MB",
        ),
        ("coterie run: process start -> ready", lambda f: f"{f['ready']:.2f} s", "< 3 s"),
        (
            f"after {args.chats} concurrent chats: RSS (peak)",
            lambda f: f"{f['after']:.1f} MB ({f['peak']:.1f})",
            "< 250 MB",
        ),
        (
            "first message after ready: mention -> request",
            lambda f: f"{f['first'] * 1000:.0f} ms",
            "the next ones'",
        ),
        ("  the next ones (median of 5)", lambda f: f"{f['later'] * 1000:.0f} ms", "-"),
    ]
    if args.only != "bot":
        rows += [
            ("coterie ask, OpenAI key: start -> answer", ask_row("ask_openai"), "< 2 s"),
            ("coterie ask, Anthropic key: start -> answer", ask_row("ask_anthropic"), "< 2 s"),
            ("coterie ask, both providers: start -> answer", ask_row("ask_both"), "-"),
        ]
    width = max(len(r[0]) for r in rows)
    cell = 34
    print(f"median of {args.runs}; the floor: 6 libraries imported in a bare interpreter")
    print(f"{'import floor: RSS / import time':<{width}}  {floor_rss:.1f} MB / {floor_s:.2f} s")
    if args.only != "bot":
        print(
            f"{'import anthropic alone: start -> exit':<{width}}  "
            f"{import_wall:.2f} s, {import_cpu:.2f} s CPU"
        )
    print(f"{'figure':<{width}}  " + "".join(f"{n:<{cell}}" for n in figures) + "goal")
    for label, fmt, goal in rows:
        print(f"{label:<{width}}  " + "".join(f"{fmt(f):<{cell}}" for f in figures.values()) + goal)


if __name__ == "__main__":
    main()
