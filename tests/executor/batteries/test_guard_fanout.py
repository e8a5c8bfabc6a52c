from __future__ import annotations

import asyncio

import pytest

from executor.agent import Caller, Invocation, RunnableAgent, RunStatus
from executor.errors import DispatchRefused, Overloaded
from executor.events import RunStarted
from executor.fanout import fan_out
from executor.guard import DispatchGuard, child_invocation
from executor.messages import Message
from executor.models.base import ModelRequest
from executor.run import Executor
from executor.testing import AuditCapture, FunctionModel, ScriptedModel


def _inv(depth: int = 0, lineage: tuple[str, ...] = ()) -> Invocation:
    return Invocation(messages=[Message.user("x")], depth=depth, lineage=lineage)


async def test_guard_refuses_depth_before_any_model_call() -> None:
    model = ScriptedModel()
    ex = Executor(hooks=[DispatchGuard(max_depth=2)])
    ok = await ex.run(RunnableAgent(model=model, name="c"), _inv(2, ("a", "b")))
    assert ok.status is RunStatus.OK
    refused = await ex.run(RunnableAgent(model=model, name="d"), _inv(3, ("a", "b", "c")))
    assert refused.status is RunStatus.REFUSED
    assert refused.error == (
        "refused: 'd' would run at depth 3, past the limit of 2 (a -> b -> c -> d)"
    )
    assert refused.note == refused.error and len(model.requests) == 1


async def test_guard_refuses_repetition_in_the_call_tree() -> None:
    guard = DispatchGuard(max_repeats=2)
    guard.check("a", _inv(1, ("a",)))  # a -> a is allowed
    with pytest.raises(DispatchRefused, match="'a' would appear 3 times"):
        guard.check("a", _inv(2, ("a", "b", "a")))


def test_guard_width_and_arguments() -> None:
    DispatchGuard(max_width=4).check_width(4)
    with pytest.raises(DispatchRefused, match="fan-out of 5 runs"):
        DispatchGuard(max_width=4).check_width(5)
    with pytest.raises(ValueError, match="max_width"):
        DispatchGuard(max_width=0)


def test_child_invocation_links_the_parent() -> None:
    cancel = asyncio.Event()
    parent = Invocation(
        messages=[],
        caller=Caller(user_id="u"),
        trigger="slash",
        run_id="p1",
        cancel=cancel,
        depth=1,
        lineage=("root",),
    )
    child = child_invocation(parent, [Message.user("y")], parent_agent="mid")
    assert (child.parent_run_id, child.depth, child.lineage) == ("p1", 2, ("root", "mid"))
    assert child.caller.user_id == "u" and child.cancel is cancel and child.trigger == "slash"


async def test_fanout_returns_every_result_in_a_stable_order() -> None:
    audit = AuditCapture()

    async def answer(req: ModelRequest) -> object:
        text = req.messages[-1].text
        # finish in reverse order to show the results keep theirs
        for _ in range(10 - int(text[-1])):
            await asyncio.sleep(0)
        if text == "in 1":
            return Overloaded("busy")
        return f"{req.messages[0].text}:{text}"

    agents = [
        RunnableAgent(name=n, system_prompt=n, model=FunctionModel(answer))  # type: ignore[arg-type]
        for n in ("a", "b")
    ]
    parent = Invocation(messages=[], run_id="parent", caller=Caller(user_id="u"), depth=0)
    results = await fan_out(
        Executor(audit=audit),
        agents,
        ["in 0", "in 1", "in 2"],
        parent=parent,
        parent_agent="boss",
        concurrency=2,
    )
    assert [(r.agent, r.input_index) for r in results] == [
        ("a", 0),
        ("a", 1),
        ("a", 2),
        ("b", 0),
        ("b", 1),
        ("b", 2),
    ]
    assert [r.status for r in results] == [
        RunStatus.OK,
        RunStatus.ERROR,
        RunStatus.OK,
        RunStatus.OK,
        RunStatus.ERROR,
        RunStatus.OK,
    ]
    assert results[5].result is not None and results[5].result.output == "b:in 2"
    started = audit.of_type(RunStarted)
    assert len(started) == 6
    assert {(s.parent_run_id, s.caller.user_id) for s in started} == {("parent", "u")}


async def test_fanout_bounds_concurrency_globally_and_per_key() -> None:
    inflight: dict[str, int] = {}
    peak: dict[str, int] = {}

    def model_for(name: str) -> FunctionModel:
        async def answer(req: ModelRequest) -> object:
            inflight[name] = inflight.get(name, 0) + 1
            peak[name] = max(peak.get(name, 0), inflight[name])
            peak["all"] = max(peak.get("all", 0), sum(inflight.values()))
            for _ in range(5):
                await asyncio.sleep(0)
            inflight[name] -= 1
            return "ok"

        return FunctionModel(answer)  # type: ignore[arg-type]

    agents = [RunnableAgent(name=n, model=model_for(n)) for n in ("a", "b", "c")]
    results = await fan_out(
        Executor(), agents, [str(i) for i in range(6)], concurrency=4, per_key=2
    )
    assert all(r.ok for r in results) and len(results) == 18
    assert peak["all"] <= 4 and max(peak[n] for n in "abc") == 2


async def test_fanout_children_pass_through_the_guard() -> None:
    guard = DispatchGuard(max_depth=1, max_width=4)
    model = ScriptedModel()
    ex = Executor(hooks=[guard])
    agent = RunnableAgent(name="w", model=model)
    with pytest.raises(DispatchRefused):
        await fan_out(ex, [agent], ["1", "2", "3", "4", "5"], guard=guard)
    assert model.requests == []
    deep = Invocation(messages=[], depth=1, lineage=("root",))
    results = await fan_out(ex, [agent], ["1"], parent=deep, parent_agent="mid", guard=guard)
    assert results[0].status is RunStatus.REFUSED and "depth 2" in (results[0].result.error or "")  # type: ignore[union-attr]
    assert model.requests == []
