"""The dispatch guard: caps on depth, fan-out width and repetition in a call tree.

::

    guard = DispatchGuard(max_depth=3, max_width=16, max_repeats=2)
    Executor(hooks=[guard, ...])
    await fan_out(executor, agents, inputs, parent=inv, guard=guard)

A run whose ``Invocation.depth`` passes ``max_depth`` (a skill that runs a
skill that runs a skill ...), or whose agent already appears ``max_repeats``
times in its ``Invocation.lineage`` (the agent names up its call tree), is
refused in ``before_run`` with :class:`~executor.errors.DispatchRefused`: the
run ends ``refused`` with the reason, before any model call or budget
reservation. A fan-out wider than ``max_width`` is refused before any of its
runs starts (:meth:`DispatchGuard.check_width`).
"""

from __future__ import annotations

from executor.agent import Invocation
from executor.errors import DispatchRefused
from executor.hooks import RunHook, RunState
from executor.messages import Message

__all__ = ["DispatchGuard", "child_invocation"]


class DispatchGuard(RunHook):
    def __init__(self, *, max_depth: int = 3, max_width: int = 16, max_repeats: int = 2) -> None:
        if max_depth < 0 or max_width < 1 or max_repeats < 1:
            raise ValueError("need max_depth >= 0, max_width >= 1, max_repeats >= 1")
        self.max_depth = max_depth
        self.max_width = max_width
        self.max_repeats = max_repeats

    def check(self, agent_name: str, invocation: Invocation) -> None:
        """Raise :class:`DispatchRefused` if ``agent_name`` may not run at ``invocation``."""
        if invocation.depth > self.max_depth:
            chain = " -> ".join((*invocation.lineage, agent_name))
            raise DispatchRefused(
                f"refused: {agent_name!r} would run at depth {invocation.depth}, past the "
                f"limit of {self.max_depth} ({chain})"
            )
        times = invocation.lineage.count(agent_name) + 1
        if times > self.max_repeats:
            chain = " -> ".join((*invocation.lineage, agent_name))
            raise DispatchRefused(
                f"refused: {agent_name!r} would appear {times} times in one call tree, past "
                f"the limit of {self.max_repeats} ({chain})"
            )

    def check_width(self, width: int) -> None:
        if width > self.max_width:
            raise DispatchRefused(
                f"refused: a fan-out of {width} runs is wider than the limit of {self.max_width}"
            )

    async def before_run(self, state: RunState) -> None:
        self.check(state.agent.name, state.invocation)


def child_invocation(
    parent: Invocation,
    messages: list[Message],
    *,
    parent_agent: str | None = None,
    parent_run_id: str | None = None,
) -> Invocation:
    """An invocation started by ``parent``'s run (of ``parent_agent``): same caller,
    trigger and cancel event, one level deeper, the parent agent added to the lineage."""
    return Invocation(
        messages=messages,
        caller=parent.caller,
        trigger=parent.trigger,
        parent_run_id=parent_run_id or parent.run_id,
        cancel=parent.cancel,
        depth=parent.depth + 1,
        lineage=parent.lineage + ((parent_agent,) if parent_agent else ()),
        metadata=dict(parent.metadata),
    )
