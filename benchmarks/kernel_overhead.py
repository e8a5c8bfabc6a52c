"""Kernel overhead per step, side by side with pydantic-ai doing the same work.

Two scenarios, no network, models answer instantly from a function:

- ``1 step``: one request, a text answer, no tools;
- ``10 tools``: ten tool calls (one per step), then an answer: 11 steps.

Prints the per-step median of each and the ratio ours / pydantic-ai (goal: at
most 0.1). pydantic-ai is a benchmark-only dependency (``pip install -e '.[bench]'``).

    python benchmarks/kernel_overhead.py [--runs 300] [--repeats 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from executor.agent import Bounds, Invocation, RunnableAgent
from executor.messages import Message
from executor.models.base import ModelRequest
from executor.run import Executor
from executor.testing import FunctionModel, Reply, call
from executor.tools.registry import ToolRegistry


def ours(tool_steps: int) -> Callable[[], Awaitable[None]]:
    reg = ToolRegistry()

    @reg.register
    async def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    def answer(request: ModelRequest) -> Reply:
        done = sum(1 for m in request.messages for p in m.parts if p.type == "tool_result")
        if done < tool_steps:
            return Reply(tool_calls=[call("add", a=done, b=1)])
        return Reply(text="done")

    executor = Executor(tools=reg)
    agent = RunnableAgent(model=FunctionModel(answer), tools=("add",), bounds=Bounds(max_steps=20))

    async def one() -> None:
        result = await executor.run(agent, Invocation(messages=[Message.user("go")]))
        assert result.ok and result.steps == tool_steps + 1, result

    return one


def theirs(tool_steps: int) -> Callable[[], Awaitable[None]]:
    from pydantic_ai import Agent
    from pydantic_ai.messages import (
        ModelMessage,
        ModelResponse,
        TextPart,
        ToolCallPart,
        ToolReturnPart,
    )
    from pydantic_ai.models.function import AgentInfo
    from pydantic_ai.models.function import FunctionModel as PaiFunctionModel

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = sum(
            1 for m in messages for p in getattr(m, "parts", ()) if isinstance(p, ToolReturnPart)
        )
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


async def per_step_ms(
    fn: Callable[[], Awaitable[None]], steps: int, runs: int, repeats: int
) -> float:
    for _ in range(max(5, runs // 10)):  # warm-up
        await fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(runs):
            await fn()
        samples.append((time.perf_counter() - t0) * 1000 / (runs * steps))
    return statistics.median(samples)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"{'scenario':<12} {'coterie ms/step':>16} {'pydantic-ai ms/step':>20} {'ratio':>8}")
    for label, tool_steps in (("1 step", 0), ("10 tools", 10)):
        steps = tool_steps + 1
        runs = args.runs if tool_steps == 0 else max(20, args.runs // 5)
        a = await per_step_ms(ours(tool_steps), steps, runs, args.repeats)
        try:
            b = await per_step_ms(theirs(tool_steps), steps, runs, args.repeats)
        except ImportError:
            print(f"{label:<12} {a:>16.4f} {'(pydantic-ai not installed)':>20}")
            continue
        print(f"{label:<12} {a:>16.4f} {b:>20.4f} {a / b:>8.3f}")


if __name__ == "__main__":
    asyncio.run(main())
