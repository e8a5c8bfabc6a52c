"""The ``Delivery`` port says everything a host asks of a delivery, and every wrapper
forwards all of it (issue 20: ``note``, ``show_cost_footer``, ``queued`` and
``ask_approval`` were found with ``getattr``; a wrapper that forgot ``ask_approval``
would have denied every approval without a word).

The methods are read off the protocol, so a method added to it is checked on every
wrapper here without editing this file (except for a sample call, which the test asks
for by name).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, cast

import pytest

from adapters.services.approval import DeliveryApprover
from adapters.services.memory import SavedNotes
from adapters.services.runner import Runner, _StoppingDelivery
from executor.agent import (
    Caller,
    DeliveryReport,
    Invocation,
    RunnableAgent,
    RunResult,
    RunStatus,
)
from executor.messages import Message
from executor.ports import (
    ApprovalDecision,
    ApprovalRequest,
    Delivery,
    ForwardingDelivery,
    NullDelivery,
)
from executor.run import Executor
from executor.testing import RecordingDelivery, Reply, ScriptedModel, call
from executor.tools.registry import ToolRegistry, tool

CALLER = Caller(user_id="1", display_name="alice")
REQUEST = ApprovalRequest(run_id="r", caller=CALLER, tool="t", call_id="c", arguments={})
SPY_DECISION = ApprovalDecision(approved=True, reason="the spy said yes")
SPY_REPORT = DeliveryReport(delivered=False, error="the spy's answer never arrived")


class _NoNotes:
    async def saved_in(self, user_id: str, run_id: str) -> list[Any]:
        return []


def _saved_notes(inner: Delivery) -> Any:
    """memory's wrapper (the "Saved: ..." line), over a memory that saved nothing."""
    return SavedNotes(inner, cast(Any, _NoNotes()), "1")


#: One sample call per method of the port (a new method needs one here).
SAMPLES: dict[str, tuple[Any, ...]] = {
    "start": (),
    "text": ("hello",),
    "reset": (),
    "status": ("reading example.com",),
    "finish": (RunResult(run_id="r", status=RunStatus.OK),),
    "note": ("the history was cut",),
    "show_cost_footer": (),
    "queued": (2,),
    "ask_approval": (REQUEST,),
}

#: Every delivery that wraps another one (and the base they forward through).
WRAPPERS: list[Callable[[Delivery], Any]] = [ForwardingDelivery, _StoppingDelivery, _saved_notes]


def port_methods() -> dict[str, bool]:
    """The port's methods, each with whether it is async."""
    return {
        name: inspect.iscoroutinefunction(member)
        for name, member in vars(Delivery).items()
        if not name.startswith("_") and callable(member)
    }


def spy() -> Any:
    """A delivery that records each method called on it, built from the port itself."""
    calls: list[str] = []

    def method(name: str, is_async: bool) -> Any:
        def sync(self: Any, *args: Any) -> Any:
            calls.append(name)
            return {"ask_approval": SPY_DECISION, "finish": SPY_REPORT}.get(name)

        async def coro(self: Any, *args: Any) -> Any:
            return sync(self, *args)

        return coro if is_async else sync

    namespace: dict[str, Any] = {n: method(n, a) for n, a in port_methods().items()}
    namespace["calls"] = calls
    return type("Spy", (), namespace)()


async def missed_by(wrapper: Callable[[Delivery], Any]) -> list[str]:
    """The port's methods that ``wrapper`` does not hand to what it wraps."""
    missed = []
    for name, is_async in port_methods().items():
        assert name in SAMPLES, f"add a sample call of Delivery.{name} to SAMPLES"
        inner = spy()
        wrapped = wrapper(inner)
        try:
            out = getattr(wrapped, name)(*SAMPLES[name])
            if is_async:
                out = await out
        except AttributeError:
            missed.append(name)
            continue
        if inner.calls != [name]:
            missed.append(name)
        elif name == "ask_approval" and out is not SPY_DECISION:
            missed.append(name)  # asked, but the answer was not passed back
        elif name == "finish" and out is not SPY_REPORT:
            missed.append(name)  # whether the answer arrived was not passed back
    return missed


def test_the_port_names_what_the_hosts_ask() -> None:
    assert set(port_methods()) == set(SAMPLES)
    assert {"note", "show_cost_footer", "queued", "ask_approval"} <= set(port_methods())


@pytest.mark.parametrize("wrapper", WRAPPERS, ids=lambda w: getattr(w, "__name__", str(w)))
async def test_every_wrapper_forwards_every_method(wrapper: Callable[[Delivery], Any]) -> None:
    assert await missed_by(wrapper) == []
    assert isinstance(wrapper(NullDelivery()), Delivery)
    if isinstance(wrapper, type):
        # By name: nothing reached only through __getattr__, no no-op inherited from the port.
        assert "__getattr__" not in vars(wrapper)
        assert Delivery not in wrapper.__mro__


async def test_the_check_catches_a_wrapper_that_forgets_one() -> None:
    class Forgetful(Delivery):
        """Forwards the run loop's five; inherits the port's no-ops for the rest."""

        def __init__(self, inner: Delivery) -> None:
            self.inner = inner

        async def start(self) -> None:
            await self.inner.start()

        async def text(self, delta: str) -> None:
            await self.inner.text(delta)

        async def reset(self) -> None:
            await self.inner.reset()

        async def status(self, line: str) -> None:
            await self.inner.status(line)

        async def finish(self, result: RunResult) -> None:
            await self.inner.finish(result)  # and drops whether the answer arrived

    assert await missed_by(Forgetful) == [
        "finish",
        "note",
        "show_cost_footer",
        "queued",
        "ask_approval",
    ]


async def test_an_approval_asked_through_the_runner_reaches_the_members_delivery() -> None:
    """End to end: the runner wraps the delivery; the approver asks the wrapper; the
    member's delivery answers. A wrapper that dropped ask_approval denies here."""
    registry = ToolRegistry()

    def wipe(target: str) -> str:
        """Wipes the target."""
        return f"wiped {target}"

    registry.add(tool(wipe, requires_approval=True))

    class Approving(RecordingDelivery):
        def __init__(self) -> None:
            super().__init__()
            self.asked: list[str] = []

        async def ask_approval(self, request: ApprovalRequest) -> ApprovalDecision:
            self.asked.append(request.tool)
            return ApprovalDecision(approved=True)

    model = ScriptedModel()
    model.push(call("wipe", target="cache"))
    model.push(Reply(text="Done."))
    delivery = Approving()
    runner = Runner(Executor(tools=registry, approver=DeliveryApprover()))
    result = await runner.run(
        RunnableAgent(model=model, tools=("wipe",)),
        Invocation(messages=[Message.user("wipe the cache")], caller=CALLER, delivery=delivery),
    )
    assert result.ok and delivery.asked == ["wipe"]
    tool_result = model.requests[1].messages[-1]
    assert "wiped cache" in str(tool_result), tool_result
