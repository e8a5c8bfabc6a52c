"""Fan-out: N agents over M inputs, bounded, every result back in a stable order.

::

    results = await fan_out(executor, [summariser, critic], ["text a", "text b"],
                            parent=invocation, parent_agent="digest", concurrency=4)
    # results[i * len(inputs) + j] is agents[i] over inputs[j], failures included

Each run goes through ``executor.run`` on its own, so budget, audit, critic and
hooks apply to each; its ``parent_run_id``, ``depth`` and ``lineage`` link it to
the parent. ``concurrency`` bounds the runs in flight; ``per_key`` bounds those
sharing a key (by default the agent's name, so one agent does not take every
slot; pass ``key=`` to key by provider or anything else). A ``guard`` refuses
a fan-out wider than its ``max_width`` before any run starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from executor.agent import Invocation, RunnableAgent, RunResult, RunStatus
from executor.guard import DispatchGuard, child_invocation
from executor.messages import Message
from executor.run import Executor

__all__ = ["FanoutInput", "FanoutResult", "fan_out"]

FanoutInput = str | Message | Sequence[Message]


@dataclass(slots=True)
class FanoutResult:
    agent_index: int
    input_index: int
    agent: str
    result: RunResult | None = None
    error: BaseException | None = None  # an exception that escaped the run itself

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.status is RunStatus.OK

    @property
    def status(self) -> RunStatus:
        return self.result.status if self.result is not None else RunStatus.ERROR


def _messages(item: FanoutInput) -> list[Message]:
    if isinstance(item, str):
        return [Message.user(item)]
    if isinstance(item, Message):
        return [item]
    return list(item)


async def fan_out(
    executor: Executor,
    agents: Sequence[RunnableAgent],
    inputs: Sequence[FanoutInput],
    *,
    parent: Invocation | None = None,
    parent_agent: str | None = None,
    parent_run_id: str | None = None,
    concurrency: int = 4,
    per_key: int | None = None,
    key: Callable[[RunnableAgent, int], str] | None = None,
    guard: DispatchGuard | None = None,
    trigger: str | None = None,
) -> list[FanoutResult]:
    """Run every agent over every input; agent-major order; never raises for a run.

    Raises :class:`~executor.errors.DispatchRefused` (before starting anything)
    when ``guard`` says the fan-out is too wide.
    """
    if concurrency < 1 or (per_key is not None and per_key < 1):
        raise ValueError("concurrency and per_key must be at least 1")
    width = len(agents) * len(inputs)
    if guard is not None:
        guard.check_width(width)
    keyof = key or (lambda agent, _j: agent.name)
    overall = asyncio.Semaphore(concurrency)
    by_key: dict[str, asyncio.Semaphore] = {}

    def invocation_for(i: int, j: int) -> Invocation:
        messages = _messages(inputs[j])
        if parent is None:
            inv = Invocation(
                messages=messages, trigger=trigger or "fanout", parent_run_id=parent_run_id
            )
        else:
            inv = child_invocation(
                parent, messages, parent_agent=parent_agent, parent_run_id=parent_run_id
            )
            if trigger is not None:
                inv.trigger = trigger
        inv.metadata = {**inv.metadata, "fanout": {"agent": i, "input": j}}
        return inv

    async def one(i: int, j: int) -> FanoutResult:
        agent = agents[i]
        out = FanoutResult(agent_index=i, input_index=j, agent=agent.name)
        k = keyof(agent, j)
        sem = by_key.get(k)
        if sem is None and per_key is not None:
            sem = by_key[k] = asyncio.Semaphore(per_key)
        invocation = invocation_for(i, j)
        try:
            if sem is not None:
                async with sem, overall:
                    out.result = await executor.run(agent, invocation)
            else:
                async with overall:
                    out.result = await executor.run(agent, invocation)
        except Exception as exc:  # a port's bug: keep it with its place in the results
            out.error = exc
        return out

    tasks = [
        asyncio.create_task(one(i, j), name=f"fanout-{i}-{j}")
        for i in range(len(agents))
        for j in range(len(inputs))
    ]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
