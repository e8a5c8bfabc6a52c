from __future__ import annotations

from executor.agent import Bounds, RunnableAgent
from personas.markdown import load_builtins
from personas.model import Persona
from personas.runnable import to_runnable


def test_builtin_becomes_a_runnable_agent() -> None:
    researcher = load_builtins()["researcher"]
    agent = to_runnable(researcher)
    assert isinstance(agent, RunnableAgent)
    assert agent.name == agent.persona == "researcher"
    assert agent.system_prompt == researcher.system_prompt
    assert agent.tools == (
        "web_search",
        "web_fetch",
        "current_time",
        "remember",
        "recall",
        "forget_note",
    )
    assert agent.tier == "standard"
    assert agent.temperature == 0.3
    assert agent.bounds == Bounds()
    assert agent.skill is None


def test_bounds_are_passed_through() -> None:
    bounds = Bounds(max_steps=3)
    agent = to_runnable(Persona(name="x1", system_prompt="Hi."), bounds=bounds)
    assert agent.bounds is bounds
    assert agent.tools == ()
    assert agent.temperature is None
