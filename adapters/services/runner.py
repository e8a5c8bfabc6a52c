"""The runner: a member's lane, then the executor. Chat, ``/skill run`` and the
scheduler all start runs here, so every trigger queues fairly and is bounded alike.

While a run waits for a slot in its member's lane, the delivery is told its place
(``delivery.queued(n)``, 1 = next) and told 0 when it starts, before the run's first
token, so the member sees "waiting in line" turn into the answer in order.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

from executor.agent import Caller, Invocation, RunnableAgent, RunResult
from executor.ports import Delivery
from executor.run import Executor

__all__ = ["LanePool", "PositionCallback", "Runner"]

PositionCallback = Callable[[int], Any]


class LanePool(Protocol):
    """What the runner needs of ``executor.lanes.Lanes``: a slot in a member's lane.

    ``on_position(n)`` is called while the request waits (n ahead of it, 1 = next)
    and with 0 when it starts.
    """

    def slot(
        self, key: str, *, on_position: PositionCallback | None = None
    ) -> AbstractAsyncContextManager[Any]: ...


class Runner:
    """``executor`` runs, each in its caller's lane of ``lanes`` (None: no queueing)."""

    def __init__(self, executor: Executor, lanes: LanePool | None = None) -> None:
        self.executor = executor
        self.lanes = lanes

    async def run(self, agent: RunnableAgent, invocation: Invocation) -> RunResult:
        async with self._slot(invocation.caller, invocation.delivery):
            return await self.executor.run(agent, invocation)

    @asynccontextmanager
    async def _slot(self, caller: Caller, delivery: Delivery | None) -> AsyncIterator[None]:
        if self.lanes is None:
            yield
            return
        queued = getattr(delivery, "queued", None)

        async def on_position(position: int) -> None:
            if callable(queued):
                out = queued(position)
                if inspect.isawaitable(out):
                    await out

        tasks: set[asyncio.Task[None]] = set()
        async with self.lanes.slot(caller.user_id, on_position=_sync_or_async(on_position, tasks)):
            # Why: the "started" update must reach the member before the answer does.
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            yield


def _sync_or_async(
    fn: Callable[[int], Coroutine[Any, Any, None]], tasks: set[asyncio.Task[None]]
) -> PositionCallback:
    """Lanes may call ``on_position`` synchronously; schedule the update then."""

    def call(position: int) -> Any:
        coro = fn(position)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - lanes run on the loop
            coro.close()
            return None
        task = loop.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    return call
