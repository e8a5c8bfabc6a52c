"""Checkpoint benchmark: what a run's checkpoints cost per step, on SQLite (WAL).

    .venv/bin/python benchmarks/checkpoints.py [--runs 40] [--steps 10] [--concurrency 20]

The bot's run loop (``Executor`` with the SQL audit sink and budget ledger, as
``build_app`` makes them) over a model that answers at once: each run is ``--steps``
steps, each a tool call, then an answer, so the figure is the loop's own cost, not a
model's. Side by side, in one run:

* baseline: checkpoints in memory (``Executor()``'s default: nothing written);
* ``SqlCheckpoints`` with a read-only tool (one write a step: the save before the
  tools run) and with a tool that changes something (two: the save, and its result as
  it finishes);

each one run at a time (ms per step) and ``--concurrency`` runs at once (steps per
second). Every conversation is ~20 messages of ~400 characters of history, as a chat
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
) -> tuple[str, float, float]:
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
    for n in range(runs):
        t = time.perf_counter()
        await _one(executor, agent, caller, n)
        per_step.append((time.perf_counter() - t) * 1000 / (steps + 1))
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
    return label, statistics.median(per_step), rate


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        rows = [
            await bench(directory, name, sql, tool_name, args.runs, args.steps, args.concurrency)
            for name, sql, tool_name in (
                ("baseline, read-only tool", False, "look"),
                ("SqlCheckpoints, read-only tool", True, "look"),
                ("baseline, writing tool", False, "note"),
                ("SqlCheckpoints, writing tool", True, "note"),
            )
        ]
    print(f"{'':34} {'ms/step (1 run)':>16} {'steps/s (' + str(args.concurrency) + ' runs)':>18}")
    for label, ms, rate in rows:
        print(f"{label:34} {ms:16.3f} {rate:18.0f}")
    print(
        "extra per step, one run at a time: "
        f"{rows[1][1] - rows[0][1]:+.3f} ms (read-only), {rows[3][1] - rows[2][1]:+.3f} ms (writing)"
    )


if __name__ == "__main__":
    asyncio.run(main())
