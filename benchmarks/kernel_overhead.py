"""Kernel overhead per step, beside the json + pydantic floor measured in the same run.

Two scenarios, no network, a model that answers instantly from a function:

- ``1 step``: one request, a text answer, no tools;
- ``10 tools``: ten tool calls (one a step), then an answer: 11 steps.

For each, per step, in CPU time (``time.process_time``: every figure is CPU-bound
in this process, and on a shared machine CPU time is what the load leaves alone;
medians over ``--repeats``):

- **floor**: the work any agent loop does with the same messages and nothing
  else: the step's request (system prompt, conversation, tool definitions,
  ``max_tokens``) turned into a JSON body with pydantic (``mode="json"``) and
  ``json.dumps``, and the step's answer parsed back with ``json.loads`` and
  validated into a ``Message`` by pydantic. Measured on the very requests and
  answers of a coterie run of the scenario;
- **coterie**: ``Executor.run`` of the scenario (every port at its in-memory
  default), its time divided by its steps;
- **ratio** coterie / floor: the goal is at most 2 (issue 19);
- **pydantic-ai** ``Agent`` on its ``FunctionModel`` doing the same, when
  pydantic-ai is importable (a benchmark-only dependency, ``pip install -e
  '.[bench]'`` in a virtualenv of its own; it is not in the dev lock).

A row ``a tool step`` is the cost of one step more: (``10 tools`` run - ``1 step``
run) / 10 for coterie, beside the floor's mean over those ten steps. A run's fixed
work (its start and finish events, the budget's reservation and settlement, the
checkpoint of step 0) falls on the ``1 step`` row alone.

``--before REV`` measures the code of commit ``REV`` too (``git archive`` into a
temporary directory, measured there by this same script in a child process; the
worktree is left alone), in ``--rounds`` rounds alternating with today's code (also
a child), so both share the machine's load; the figures are ranges over the rounds.

    python benchmarks/kernel_overhead.py [--runs 200] [--repeats 7] [--before REV]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
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

from pydantic import TypeAdapter  # noqa: E402

from executor.agent import Bounds, Invocation, RunnableAgent  # noqa: E402
from executor.messages import Message  # noqa: E402
from executor.models.base import ModelRequest  # noqa: E402
from executor.run import Executor  # noqa: E402
from executor.testing import FunctionModel, Reply, call  # noqa: E402
from executor.tools.registry import ToolRegistry  # noqa: E402

SCENARIOS = (("1 step", 0), ("10 tools", 10))


def ours(tool_steps: int) -> tuple[Callable[[], Awaitable[None]], FunctionModel]:
    reg = ToolRegistry()

    @reg.register
    async def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    def answer(request: ModelRequest) -> Reply:
        # The calls made so far: the request is the system prompt, "go", then a call
        # and its result a step (the model's own work, kept out of the kernel's figure).
        done = (len(request.messages) - 2) // 2
        if done < tool_steps:
            return Reply(tool_calls=[call("add", a=done, b=1)])
        return Reply(text="done")

    executor = Executor(tools=reg)
    model = FunctionModel(answer)
    agent = RunnableAgent(model=model, tools=("add",), bounds=Bounds(max_steps=20))

    async def one() -> None:
        model.requests.clear()  # Why: the double keeps every request; a run's are enough
        result = await executor.run(agent, Invocation(messages=[Message.user("go")]))
        assert result.ok and result.steps == tool_steps + 1, result

    return one, model


def theirs(tool_steps: int) -> Callable[[], Awaitable[None]]:
    from pydantic_ai import Agent
    from pydantic_ai.messages import (
        ModelMessage,
        ModelResponse,
        TextPart,
        ToolCallPart,
    )
    from pydantic_ai.models.function import AgentInfo
    from pydantic_ai.models.function import FunctionModel as PaiFunctionModel

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = (len(messages) - 1) // 2  # the request, then a call and its result a step
        if done < tool_steps:
            return ModelResponse(parts=[ToolCallPart("add", {"a": done, "b": 1})])
        return ModelResponse(parts=[TextPart("done")])

    agent = Agent(PaiFunctionModel(answer), system_prompt="You are a helpful assistant.")

    @agent.tool_plain
    async def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    async def one() -> None:
        result = await agent.run("go")
        assert result.output == "done"

    return one


_MESSAGES: TypeAdapter[list[Message]] = TypeAdapter(list[Message])


def _floor_steps(model: FunctionModel, final: Message) -> list[tuple[ModelRequest, str]]:
    """Each step's request with its answer as the JSON a provider would send back."""
    requests = list(model.requests)
    answers = [r.messages[-2] for r in requests[1:]] + [final]
    return [(r, a.model_dump_json()) for r, a in zip(requests, answers, strict=True)]


def floor_step(request: ModelRequest, answer_json: str) -> None:
    """The floor of one step: the request to a JSON body, the answer back to a Message."""
    json.dumps(
        {
            "max_tokens": request.max_tokens,
            "messages": _MESSAGES.dump_python(request.messages, mode="json"),
            "tools": [
                {"name": t.name, "description": t.description, "input_schema": t.parameters}
                for t in request.tools
            ],
        }
    )
    Message.model_validate(json.loads(answer_json))


def _floor_batch(steps: list[tuple[ModelRequest, str]], rounds: int) -> list[float]:
    """The floor of each step, ms (the mean of ``rounds`` rounds)."""
    out: list[float] = []
    for request, answer in steps:
        t0 = time.process_time()
        for _ in range(rounds):
            floor_step(request, answer)
        out.append((time.process_time() - t0) * 1000 / rounds)
    return out


async def _run_batch(fn: Callable[[], Awaitable[None]], runs: int) -> float:
    """One run's CPU time, ms (the mean of ``runs`` runs one after another)."""
    t0 = time.process_time()
    for _ in range(runs):
        await fn()
    return (time.process_time() - t0) * 1000 / runs


async def measure(runs: int, repeats: int, *, pydantic_ai: bool = True) -> dict[str, Any]:
    """Per-step figures, ms (medians over ``repeats``): floor, coterie, and pydantic-ai
    (None: not importable). Each repeat measures coterie and then the floor, so a
    change of the machine's load falls on both."""
    out: dict[str, Any] = {}
    for label, tool_steps in SCENARIOS:
        steps = tool_steps + 1
        n = runs if tool_steps == 0 else max(20, runs // 5)
        fn, model = ours(tool_steps)
        for _ in range(max(5, n // 10)):  # warm-up
            await fn()
        # The last run's requests and answers: what the floor serialises and parses.
        script = _floor_steps(model, Message.assistant("done"))
        run_samples: list[float] = []
        floor_samples: list[list[float]] = []
        for _ in range(repeats):
            run_samples.append(await _run_batch(fn, n))
            floor_samples.append(_floor_batch(script, n))
        run = statistics.median(run_samples)
        per_step_floor = [statistics.median(f[i] for f in floor_samples) for i in range(steps)]
        pai: float | None = None
        if pydantic_ai:
            try:
                theirs_fn = theirs(tool_steps)
            except ImportError:
                pai = None
            else:
                for _ in range(max(5, n // 10)):
                    await theirs_fn()
                pai = statistics.median([await _run_batch(theirs_fn, n) for _ in range(repeats)])
                pai /= steps
        out[label] = {
            "run": run,
            "coterie": run / steps,
            "floor": sum(per_step_floor) / steps,
            "floor_tool_steps": sum(per_step_floor[1:]) / max(1, tool_steps),
            "pydantic_ai": pai,
        }
    one, ten = out["1 step"], out["10 tools"]
    out["a tool step"] = {
        "coterie": (ten["run"] - one["run"]) / 10,
        "floor": ten["floor_tool_steps"],
        "pydantic_ai": None,
    }
    return out


def _child(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """This script's figures for the code in ``root``, measured in a child process."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--root",
            str(root),
            "--json",
            "--runs",
            str(args.runs),
            "--repeats",
            str(args.repeats),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def _span(values: list[float], digits: int = 4) -> str:
    lo, hi = min(values), max(values)
    return (
        f"{lo:.{digits}f}" if len(values) == 1 or lo == hi else f"{lo:.{digits}f}-{hi:.{digits}f}"
    )


def _print(columns: dict[str, list[dict[str, Any]]], pai: dict[str, Any] | None) -> None:
    names = list(columns)
    head = f"{'ms per step':<14}{'floor':>18}"
    for n in names:
        head += f"{'coterie ' + n:>28}{'ratio':>12}"
    head += f"{'pydantic-ai':>14}"
    print(head)
    for label in ("1 step", "10 tools", "a tool step"):
        floors = [r[label]["floor"] for rounds in columns.values() for r in rounds]
        line = f"{label:<14}{_span(floors):>18}"
        for n in names:
            rounds = columns[n]
            line += f"{_span([r[label]['coterie'] for r in rounds]):>28}"
            ratios = [r[label]["coterie"] / r[label]["floor"] for r in rounds]
            line += f"{_span(ratios, 1) + ' x':>12}"
        theirs_ms = pai[label]["pydantic_ai"] if pai is not None else None
        line += f"{theirs_ms:>14.4f}" if theirs_ms is not None else f"{'-':>14}"
        print(line)
    print("goal (issue 19): coterie <= 2 x the json + pydantic floor")
    if pai is None or all(pai[label]["pydantic_ai"] is None for label, _ in SCENARIOS):
        print(
            "pydantic-ai: not importable here, its column is empty (a benchmark-only"
            " dependency: pip install -e '.[bench]' in a virtualenv of its own)"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--before", metavar="REV", help="also measure this commit's code")
    parser.add_argument("--rounds", type=int, default=3, help="alternations with --before")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.json:
        print(json.dumps(await measure(args.runs, args.repeats, pydantic_ai=False)))
        return
    columns: dict[str, list[dict[str, Any]]] = {}
    if args.before:
        with tempfile.TemporaryDirectory(prefix="coterie-before-") as old:
            root = checkout(args.before, Path(old))
            before, now = f"before ({args.before})", "now"
            columns = {before: [], now: []}
            for _ in range(args.rounds):
                columns[before].append(_child(root, args))
                columns[now].append(_child(_ROOT, args))
    pai: dict[str, Any] | None = None
    if not args.before or importlib.util.find_spec("pydantic_ai") is not None:
        pai = await measure(args.runs, args.repeats)
    if not args.before:
        assert pai is not None
        columns["now"] = [pai]
    _print(columns, pai)


if __name__ == "__main__":
    asyncio.run(main())
