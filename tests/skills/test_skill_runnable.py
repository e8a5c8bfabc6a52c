"""to_runnable: a skill's version as its persona, its tools capped at the owner's rights
when it runs (not only when it was saved), its bounds over the defaults."""

from __future__ import annotations

import subprocess
import sys

import skills
from executor.agent import Bounds, Caller, Privilege
from personas.model import Persona
from skills.model import SkillInfo, SkillSpec, SkillVersionInfo
from skills.runnable import agent_name, skill_bounds, to_runnable, usable_tools
from skills.store import SkillStore
from tests.skills.conftest import ADMIN, GUILD, make_tools

PERSONA = Persona(
    name="researcher",
    system_prompt="You are careful.",
    tier="standard",
    tools=("current_time",),
    temperature=0.3,
)
INFO = SkillInfo(id=1, guild_id=GUILD, name="digest", owner_id=ADMIN.user_id)


def _version(**fields: object) -> SkillVersionInfo:
    spec = SkillSpec(prompt="Summarise {topic}.", **fields)  # type: ignore[arg-type]
    return SkillVersionInfo(skill_id=1, version=2, spec=spec)


def test_the_agent_is_the_persona_doing_the_skill() -> None:
    version = _version(tier="fast", tools=("web_fetch",), max_steps=8, max_runtime_s=120.0)
    agent = to_runnable(INFO, version, PERSONA, owner=ADMIN, tools=make_tools())
    assert agent.name == agent_name(INFO) == "skill:digest"
    assert (agent.skill, agent.persona) == ("digest", "researcher")
    assert agent.system_prompt == "You are careful." and agent.temperature == 0.3
    assert agent.tier == "fast"
    # The skill's grant replaces the persona's: current_time is not added.
    assert agent.tools == ("web_fetch",)
    assert (agent.bounds.max_steps, agent.bounds.max_runtime_s) == (8, 120.0)


def test_unset_fields_fall_back_to_the_persona_and_the_defaults() -> None:
    base = Bounds(max_steps=12, max_runtime_s=200.0, max_output_tokens=999)
    agent = to_runnable(INFO, _version(), PERSONA, owner=ADMIN, tools=make_tools(), bounds=base)
    assert agent.tier == "standard" and agent.tools == ()
    assert agent.bounds == base


def test_soft_limits_stay_inside_the_skills_bounds() -> None:
    base = Bounds(soft_steps=9, soft_runtime_s=250.0)
    bounds = skill_bounds(_version(max_steps=5, max_runtime_s=60.0), base)
    assert (bounds.soft_steps, bounds.soft_runtime_s) == (5, 60.0)
    assert skill_bounds(_version(), Bounds()).soft_steps is None


async def test_tools_are_capped_at_the_owners_rights_when_run(store: SkillStore) -> None:
    """Saved by an admin with an admin-only tool; the owner is demoted and the deployment
    disables another: both are dropped at run time, not kept from the save."""
    info, version = await store.save(
        GUILD, "ops", SkillSpec(prompt="p", tools=("shell", "web_fetch", "current_time")), by=ADMIN
    )
    assert version.spec.tools == ("shell", "web_fetch", "current_time")
    assert to_runnable(info, version, PERSONA, owner=ADMIN, tools=store.tools).tools == (
        "shell",
        "web_fetch",
        "current_time",
    )

    demoted = Caller(user_id=ADMIN.user_id, privilege=Privilege.USER, guild_id=GUILD)
    now = make_tools(enabled=("current_time", "shell"))  # web_fetch switched off since
    agent = to_runnable(info, version, PERSONA, owner=demoted, tools=now)
    assert agent.tools == ("current_time",)
    assert usable_tools(version, demoted, now) == (("current_time",), ("shell", "web_fetch"))
    assert usable_tools(version, Privilege.ADMIN, now) == (
        ("shell", "current_time"),
        ("web_fetch",),
    )


def test_a_tool_no_longer_registered_is_dropped() -> None:
    version = _version(tools=("gone", "current_time"))
    assert usable_tools(version, ADMIN, make_tools()) == (("current_time",), ("gone",))


def test_the_package_exports_lazily() -> None:
    assert skills.__all__ == sorted(skills.__all__)
    for name in skills.__all__:
        assert getattr(skills, name) is not None
    code = (
        "import sys, skills.model, skills.errors; "
        "print('skills.store' in sys.modules, 'sqlalchemy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
