"""A skill becomes a :class:`RunnableAgent`: its version, as its persona, within its bounds.

What comes from where:

- the system prompt and temperature: the persona's (the skill says what to do, the
  persona how to speak); the prompt of the version is the run's first message, filled
  in by :func:`skills.model.render_prompt`, and is not part of the agent.
- the tier: the version's, else the persona's.
- the tools: **the version's grant, in place of the persona's** (not added to it, not
  intersected with it). Why: a scheduled task should use exactly the tools its owner
  chose and saw when saving, whatever the persona is later given; and a skill must not
  gain tools because someone edited its persona. Each tool is checked again against the
  *owner's* rights at run time (registered, enabled, within their privilege): a tool
  the owner may no longer use is dropped, not an error, and :func:`usable_tools` says
  which went so the caller can tell them.
- the bounds: the version's ``max_steps`` and ``max_runtime_s`` over ``bounds`` (the
  deployment's defaults for a run); the critic's soft limits are kept inside them.
- ``name`` is ``skill:<name>`` (so a skill and a persona of one name are different
  agents to the dispatch guard), ``skill`` the skill's name, ``persona`` the persona's.
"""

from __future__ import annotations

from dataclasses import replace

from executor.agent import Bounds, Caller, Privilege, RunnableAgent
from executor.tools.registry import ToolRegistry
from personas.model import Persona
from skills.model import SkillInfo, SkillVersionInfo

__all__ = ["agent_name", "skill_bounds", "to_runnable", "usable_tools"]


def agent_name(skill: SkillInfo | str) -> str:
    """The :class:`RunnableAgent` name of a skill's runs (as the audit and guard see it)."""
    return f"skill:{skill.name if isinstance(skill, SkillInfo) else skill}"


def usable_tools(
    version: SkillVersionInfo, owner: Caller | Privilege, registry: ToolRegistry
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The version's tools the owner may use now, and those dropped (in grant order)."""
    privilege = owner.privilege if isinstance(owner, Caller) else owner
    granted = tuple(dict.fromkeys(version.spec.tools))
    kept = tuple(n for n in granted if registry.refusal(n, granted, privilege) is None)
    return kept, tuple(n for n in granted if n not in kept)


def skill_bounds(version: SkillVersionInfo, bounds: Bounds | None = None) -> Bounds:
    """``bounds`` with the version's step and runtime limits, soft limits kept inside."""
    base = bounds if bounds is not None else Bounds()
    spec = version.spec
    steps = spec.max_steps if spec.max_steps is not None else base.max_steps
    runtime = spec.max_runtime_s if spec.max_runtime_s is not None else base.max_runtime_s
    soft_steps = min(base.soft_steps, steps) if base.soft_steps is not None else None
    soft_runtime = min(base.soft_runtime_s, runtime) if base.soft_runtime_s is not None else None
    return replace(
        base,
        max_steps=steps,
        max_runtime_s=runtime,
        soft_steps=soft_steps,
        soft_runtime_s=soft_runtime,
    )


def to_runnable(
    skill: SkillInfo,
    version: SkillVersionInfo,
    persona: Persona,
    *,
    owner: Caller | Privilege,
    tools: ToolRegistry,
    bounds: Bounds | None = None,
) -> RunnableAgent:
    """The agent that runs ``version`` of ``skill`` as ``persona`` for its ``owner``.

    ``owner`` is the skill owner's :class:`Caller` (or privilege) as of now: the tools
    are capped at what they may use today, not when the skill was saved. The run's
    :class:`~executor.agent.Invocation` should carry the same caller (the run loop
    checks each tool call against it too).
    """
    granted, _dropped = usable_tools(version, owner, tools)
    return RunnableAgent(
        name=agent_name(skill),
        system_prompt=persona.system_prompt,
        tier=version.spec.tier or persona.tier,
        tools=granted,
        bounds=skill_bounds(version, bounds),
        temperature=persona.temperature,
        persona=persona.name,
        skill=skill.name,
    )
