"""Figures for the kernel's batteries: fairness, throughput, compaction, critic reaction.

Run: ``.venv/bin/python benchmarks/kernel_batteries.py`` (about 10 s). A script
that prints figures, not a timed test: the goals are in the output.

``--before REV`` measures the throughput of commit ``REV``'s code too (``git
archive`` into a temporary directory, run there by this same script in a child
process; the worktree is left alone), in ``--rounds`` rounds alternating with
today's code (also a child), so both share the machine's load; it prints the range
of each over the rounds, then the other figures as usual.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _revision import checkout

# Why before the imports: --root DIR measures the code in DIR (see --before).
_ROOT = Path(__file__).resolve().parents[1]
if "--root" in sys.argv:
    _ROOT = Path(sys.argv[sys.argv.index("--root") + 1]).resolve()
sys.path.insert(0, str(_ROOT))

from executor.agent import Bounds, Invocation, RunnableAgent, RunStatus  # noqa: E402
from executor.compaction import CompactionHook, Compactor, TokenEstimator  # noqa: E402
from executor.critic import CriticConfig, WatchdogCritic  # noqa: E402
from executor.lanes import Lanes  # noqa: E402
from executor.messages import Message, ToolResultPart, Usage  # noqa: E402
from executor.models.base import ModelRequest, ModelResponse  # noqa: E402
from executor.run import Executor  # noqa: E402
from executor.testing import Reply, ScriptedModel, call  # noqa: E402
from executor.tools.registry import ToolRegistry  # noqa: E402


def _agent(latency: float) -> RunnableAgent:
    return RunnableAgent(model=ScriptedModel(default=Reply(text="ok", latency_s=latency)))


async def fairness(latency: float = 0.05) -> float:
    """A submits 50 runs, then B one, on 4 slots: B's wait in slot-times."""
    lanes = Lanes(slots=4)
    ex = Executor()
    b_wait: list[float] = []
    durations: list[float] = []

    async def submit(key: str, record: bool) -> None:
        queued = time.perf_counter()
        async with lanes.slot(key):
            began = time.perf_counter()
            if record:
                b_wait.append(began - queued)
            await ex.run(_agent(latency), Invocation(messages=[Message.user("hi")]))
            durations.append(time.perf_counter() - began)

    a = [asyncio.create_task(submit("A", False)) for _ in range(50)]
    await asyncio.sleep(0)
    b = asyncio.create_task(submit("B", True))
    await asyncio.gather(*a, b)
    # Why the measured run time: a slot-time is a run, the model's latency plus our own.
    slot = sum(durations) / len(durations)
    slot_times = b_wait[0] / slot
    print(
        f"fairness: B waited {slot_times:.2f} slot-times ({b_wait[0] * 1000:.0f} ms; a run took"
        f" {slot * 1000:.0f} ms) behind A's 50 queued runs on 4 slots (goal <= 1)"
    )
    return slot_times


async def throughput_figures(
    n: int = 200, latency: float = 0.1, repeats: int = 5
) -> dict[str, Any]:
    """``n`` concurrent runs on a model that answers after ``latency``, beside the floor
    of ``n`` bare asyncio tasks sleeping as long, in the same run."""
    ex = Executor()
    await ex.run(_agent(0), Invocation(messages=[Message.user("warm-up")]))
    bare: list[float] = []
    runs: list[float] = []
    cpu: list[float] = []
    for _ in range(repeats):
        started = time.perf_counter()
        await asyncio.gather(*(asyncio.sleep(latency) for _ in range(n)))
        bare.append((time.perf_counter() - started) / latency)
        started, used = time.perf_counter(), time.process_time()
        results = await asyncio.gather(
            *(
                ex.run(_agent(latency), Invocation(messages=[Message.user(f"q{i}")]))
                for i in range(n)
            )
        )
        runs.append((time.perf_counter() - started) / latency)
        cpu.append((time.process_time() - used) / n)
        assert all(r.ok for r in results)
    return {
        "ratio": statistics.median(runs),
        "min": min(runs),
        "bare": statistics.median(bare),
        "cpu_us": statistics.median(cpu) * 1e6,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


async def throughput(n: int = 200, latency: float = 0.1, repeats: int = 5) -> float:
    f = await throughput_figures(n, latency, repeats)
    print(
        f"throughput: {n} concurrent runs, {latency * 1000:.0f} ms model: {f['ratio']:.2f} x ideal"
        f" (goal <= 1.2; min {f['min']:.2f} of {repeats}) beside bare asyncio"
        f" {f['bare']:.2f} x; {f['cpu_us']:.0f} us of CPU a run; peak RSS {f['rss_mb']:.0f} MB"
    )
    return float(f["ratio"])


def _child(root: Path) -> dict[str, Any]:
    """The throughput figures of the code in ``root``, measured in a child process."""
    out = subprocess.run(
        [sys.executable, __file__, "--root", str(root), "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def throughput_before(rev: str, rounds: int) -> None:
    """Throughput of ``rev``'s code and today's, in alternating child processes."""
    columns: dict[str, list[dict[str, Any]]] = {f"before ({rev})": [], "now": []}
    with tempfile.TemporaryDirectory(prefix="coterie-before-") as old:
        checkout(rev, Path(old))
        for _ in range(rounds):
            columns[f"before ({rev})"].append(_child(Path(old)))
            columns["now"].append(_child(_ROOT))

    def span(rows: list[dict[str, Any]], key: str, fmt: str) -> str:
        values = [r[key] for r in rows]
        return f"{min(values):{fmt}}-{max(values):{fmt}}"

    print(f"throughput, 200 concurrent runs, 100 ms model ({rounds} alternating rounds):")
    for name, rows in columns.items():
        print(
            f"  {name:<20} {span(rows, 'ratio', '.2f')} x ideal (goal <= 1.2; medians of 5),"
            f" bare asyncio {span(rows, 'bare', '.2f')} x, CPU a run {span(rows, 'cpu_us', '.0f')} us"
        )


def _conversation(turns: int) -> list[Message]:
    out: list[Message] = []
    for i in range(turns):
        out.append(Message.user(f"turn {i}: " + f"please look into item {i}. " * 20, name="ann"))
        if i % 4 == 0:
            c = call("lookup", item=i)
            out.append(Message(role="assistant", parts=(c,)))
            out.append(
                Message(
                    role="user",
                    parts=(ToolResultPart(tool_call_id=c.id, name="lookup", content="x" * 1500),),
                )
            )
        out.append(Message.assistant(f"answer {i}: " + "here is what I found. " * 25))
    return out


async def compaction(turns: int = 200) -> None:
    history = _conversation(turns)
    summariser = ScriptedModel(
        default=Reply(text="summary " * 150, usage=Usage(input_tokens=1, output_tokens=200)),
        name="cheap:summariser",
    )
    est = TokenEstimator()
    before = est.estimate("test:m", history)
    comp = Compactor(summariser, estimator=est)
    started = time.perf_counter()
    done = await comp.compact(history, "test:m", keep_tokens=8000)
    took = (time.perf_counter() - started) * 1000
    assert done is not None
    print(
        f"compaction: {turns}-turn conversation ({len(history)} messages): {before} -> "
        f"{done.tokens_after} tokens ({1 - done.tokens_after / before:.0%} saved), "
        f"{done.summarised} messages in {len(summariser.requests)} summariser call(s), "
        f"{took:.1f} ms of our own time (summariser instant)"
    )
    # and inside a run, with the hook deciding (a 32k window, trigger at 75%)
    hook = CompactionHook(summariser)
    model = ScriptedModel(["done"])
    started = time.perf_counter()
    result = await Executor(hooks=[hook]).run(
        RunnableAgent(model=model), Invocation(messages=history)
    )
    took = (time.perf_counter() - started) * 1000
    sent = est.estimate("test:m", model.requests[0].messages)
    print(
        f"compaction in a run: sent {sent} tokens instead of {before} to a 32k window, "
        f"run {result.status.value} in {took:.1f} ms"
    )


class _Hang:
    name = "bench:hang"

    async def generate(self, request: ModelRequest) -> ModelResponse:
        await asyncio.Event().wait()
        raise AssertionError

    def stream(self, request: ModelRequest):  # type: ignore[no-untyped-def]
        raise NotImplementedError


async def _lag_monitor(stop: asyncio.Event, out: list[float], tick: float = 0.005) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t = loop.time()
        await asyncio.sleep(tick)
        out.append(loop.time() - t - tick)


async def critic_reaction(hard_s: float = 0.5) -> None:
    reg = ToolRegistry()

    @reg.register(timeout_s=60)
    async def slow_async() -> str:
        """Wait a long time."""
        await asyncio.sleep(60)
        return "late"

    @reg.register(timeout_s=60)
    def slow_sync() -> str:
        """Block a worker thread for a while."""
        time.sleep(3)
        return "late"

    critic = WatchdogCritic(CriticConfig(soft_runtime_s=0.2, hard_runtime_s=hard_s))
    ex = Executor(tools=reg, critic=critic)
    cases: dict[str, Callable[[], RunnableAgent]] = {
        "waiting on a model": lambda: RunnableAgent(model=_Hang()),  # type: ignore[arg-type]
        "in an async tool": lambda: RunnableAgent(
            model=ScriptedModel([call("slow_async"), "done"]), tools=("slow_async",)
        ),
        "in a sync tool": lambda: RunnableAgent(
            model=ScriptedModel([call("slow_sync"), "done"]), tools=("slow_sync",)
        ),
    }
    for label, make in cases.items():
        stop = asyncio.Event()
        lags: list[float] = []
        monitor = asyncio.create_task(_lag_monitor(stop, lags))
        started = time.perf_counter()
        agent = make()
        agent = RunnableAgent(model=agent.model, tools=agent.tools, bounds=Bounds(max_runtime_s=30))
        result = await ex.run(agent, Invocation(messages=[Message.user("go")]))
        ended = time.perf_counter()
        stop.set()
        await monitor
        reaction = ended - started - hard_s
        assert result.status is RunStatus.KILLED, result.status
        print(
            f"critic: hard limit to run end {label}: {reaction * 1000:.1f} ms (goal <= 1000);"
            f" worst event-loop lag {max(lags, default=0) * 1000:.1f} ms"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", metavar="REV", help="also measure this commit's throughput")
    parser.add_argument("--rounds", type=int, default=3, help="alternations with --before")
    parser.add_argument("--json", action="store_true", help="print the throughput as JSON")
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.json:
        print(json.dumps(await throughput_figures()))
        return
    if args.before:
        throughput_before(args.before, args.rounds)
    steps: list[Callable[[], Awaitable[object]]] = [
        fairness,
        throughput,
        compaction,
        critic_reaction,
    ]
    for step in steps:
        await step()


if __name__ == "__main__":
    asyncio.run(main())
