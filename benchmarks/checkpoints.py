"""Checkpoint benchmark: what a run's checkpoints cost per step, on SQLite (WAL).

    .venv/bin/python benchmarks/checkpoints.py [--runs 40] [--steps 10] [--concurrency 20]

The bot's run loop (``Executor`` with the SQL audit sink and budget ledger, as
``build_app`` makes them) over a model that answers at once: each run is ``--steps``
steps, each a tool call, then an answer, so the figure is the loop's own cost, not a
model's. Side by side, in one run:

* baseline: checkpoints in memory (``Executor()``'s default: nothing written);
* one answer with no tools: what a plain chat answer pays (the save before the call);
* ``SqlCheckpoints`` with a read-only tool (one write a step: the save before the
  tools run) and with a tool that changes something (two: the save, and its result as
  it finishes);

each one run at a time (wall and CPU ms per step: CPU time is the steadier figure on
a shared machine) and ``--concurrency`` runs at once (steps per second), every
scenario ``--repeats`` times, interleaved, and the median shown. Every conversation is ~20 messages of ~400 characters of history, as a chat
in a thread is, so a save writes a realistic row. Goal: under 1 ms per step more than
the baseline, one run at a time (a model's step takes a second or more).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.services.resume import ResumeService
from adapters.storage.audit_sink import SqlAuditSink
from adapters.storage.budget import SqlBudgetLedger
from adapters.storage.checkpoints import SqlCheckpoints
from adapters.storage.db import Database
from executor.agent import Bounds, Caller, Invocation, RunnableAgent
from executor.messages import Message
from executor.models.base import ModelRequest
from executor.ports import Checkpoints
from executor.run import Executor
from executor.testing import FunctionModel, Reply, call
from executor.tools.registry import ToolRegistry, tool

HISTORY = [
    Message.user(f"message {i}: " + "a long line of a conversation in a thread. " * 9)
    if i % 2 == 0
    else Message.assistant(f"answer {i}: " + "and the persona's reply to it, as long. " * 9)
    for i in range(19)
]


def _registry() -> ToolRegistry:
    async def look(key: str) -> str:
        """Read a value."""
        return f"value of {key}"

    async def note(text: str) -> str:
        """Write a value."""
        return f"noted {text}"

    return ToolRegistry([tool(look, read_only=True), tool(note)])


def _model(steps: int, tool_name: str) -> FunctionModel:
    def reply(request: ModelRequest) -> Reply:
        done = sum(1 for m in request.messages if m.role == "assistant") - 10  # history
        if done < steps:
            arg = {"key": "k"} if tool_name == "look" else {"text": "t"}
            return Reply(tool_calls=[call(tool_name, **arg)])
        return Reply(text="done")

    return FunctionModel(reply)


async def _one(executor: Executor, agent: RunnableAgent, caller: Caller, n: int) -> None:
    result = await executor.run(
        agent,
        Invocation([*HISTORY, Message.user(f"task {n}")], caller=caller, trigger="chat"),
    )
    assert result.ok, result.error


async def bench(
    directory: Path, label: str, sql: bool, tool_name: str, runs: int, steps: int, conc: int
) -> tuple[str, float, float, float]:
    db = Database.open(f"sqlite+aiosqlite:///{directory / (label + '.db')}")
    await db.upgrade()
    audit = SqlAuditSink(db.sessions)
    budget = SqlBudgetLedger(db.sessions, default_limit_micros=10**12)
    checkpoints: Checkpoints | None = (
        SqlCheckpoints(db.sessions, keep=ResumeService.resumable) if sql else None
    )
    executor = Executor(tools=_registry(), audit=audit, budget=budget, checkpoints=checkpoints)
    agent = RunnableAgent(
        name="bench",
        model=_model(steps, tool_name),
        tools=("look", "note"),
        bounds=Bounds(max_steps=steps + 2, max_output_tokens=10**6),
    )
    caller = Caller(user_id="u1", guild_id="g1", channel_id="c1")
    await _one(executor, agent, caller, -1)  # warm up
    per_step: list[float] = []
    cpu_t = time.process_time()
    for n in range(runs):
        t = time.perf_counter()
        await _one(executor, agent, caller, n)
        per_step.append((time.perf_counter() - t) * 1000 / (steps + 1))
    cpu = (time.process_time() - cpu_t) * 1000 / (runs * (steps + 1))
    t = time.perf_counter()
    await asyncio.gather(
        *(
            _one(executor, agent, Caller(user_id=f"u{i}", guild_id="g1"), 1000 + i)
            for i in range(conc)
        )
    )
    rate = conc * (steps + 1) / (time.perf_counter() - t)
    if isinstance(checkpoints, SqlCheckpoints):
        await checkpoints.close()
    await audit.close()
    await db.close()
    return label, statistics.median(per_step), cpu, rate


SCENARIOS = (
    # label, SqlCheckpoints?, tool, steps (None: --steps)
    ("answer, no tools: baseline", False, "look", 0),
    ("answer, no tools: SqlCheckpoints", True, "look", 0),
    ("read-only tool: baseline", False, "look", None),
    ("read-only tool: SqlCheckpoints", True, "look", None),
    ("writing tool: baseline", False, "note", None),
    ("writing tool: SqlCheckpoints", True, "note", None),
)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ms: dict[str, list[float]] = {label: [] for label, *_ in SCENARIOS}
    cpu: dict[str, list[float]] = {label: [] for label, *_ in SCENARIOS}
    rates: dict[str, list[float]] = {label: [] for label, *_ in SCENARIOS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            # Interleaved: a shared machine's load falls on every scenario alike.
            for i, (label, sql, tool_name, steps) in enumerate(SCENARIOS):
                _, m, c, rate = await bench(
                    Path(tmp),
                    f"r{r}-{i}",
                    sql,
                    tool_name,
                    args.runs,
                    args.steps if steps is None else steps,
                    args.concurrency,
                )
                ms[label].append(m)
                cpu[label].append(c)
                rates[label].append(rate)
    print(
        f"{'median of ' + str(args.repeats) + ' repeats':36} {'wall ms/step':>13} "
        f"{'CPU ms/step':>12} {'steps/s (' + str(args.concurrency) + ' runs)':>18}"
    )
    for label, *_ in SCENARIOS:
        print(
            f"{label:36} {statistics.median(ms[label]):13.3f} "
            f"{statistics.median(cpu[label]):12.3f} {statistics.median(rates[label]):18.0f}"
        )
    labels = [label for label, *_ in SCENARIOS]
    for base, mine in zip(labels[0::2], labels[1::2], strict=True):
        wall = statistics.median(ms[mine]) - statistics.median(ms[base])
        used = statistics.median(cpu[mine]) - statistics.median(cpu[base])
        print(f"extra per step, {mine.split(':')[0]}: {wall:+.3f} ms wall, {used:+.3f} ms CPU")


if __name__ == "__main__":
    asyncio.run(main())
