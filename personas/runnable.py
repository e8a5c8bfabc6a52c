"""A persona becomes a :class:`RunnableAgent`: the plain description the executor runs."""

from __future__ import annotations

from executor.agent import Bounds, RunnableAgent
from personas.model import Persona

__all__ = ["to_runnable"]


def to_runnable(persona: Persona, *, bounds: Bounds | None = None) -> RunnableAgent:
    """The agent for a chat with ``persona``.

    The tools are the persona's grant (stage 2 of the registry's permission); the
    deployment's enabled set and the caller's privilege are checked by the run loop.
    """
    return RunnableAgent(
        name=persona.name,
        system_prompt=persona.system_prompt,
        tier=persona.tier,
        tools=tuple(persona.tools),
        bounds=bounds if bounds is not None else Bounds(),
        temperature=persona.temperature,
        persona=persona.name,
    )
