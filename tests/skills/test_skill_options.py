"""Autocomplete for /skill's args: suggests the arguments the template still needs."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from commands.skill import args_autocomplete
from skills.model import SkillInfo, SkillSpec, SkillVersionInfo


class Skills:
    async def find(self, guild_id: str, name: str) -> SkillInfo | None:
        return SkillInfo(id=1, guild_id=guild_id, name=name, owner_id="u") if name == "d" else None

    async def version(self, skill: SkillInfo) -> SkillVersionInfo:
        return SkillVersionInfo(1, 1, SkillSpec(prompt="{topic} over {days} days"))


def interaction(name: str | None) -> Any:
    return SimpleNamespace(
        namespace=SimpleNamespace(name=name),
        guild_id=5,
        client=SimpleNamespace(app=SimpleNamespace(skills=Skills())),
    )


async def test_suggests_what_is_missing_after_what_is_typed() -> None:
    first = await args_autocomplete(interaction("d"), "")
    assert [c.value for c in first] == ["topic=", "days="]
    later = await args_autocomplete(interaction("d"), "topic=rust; da")
    assert [c.value for c in later] == ["topic=rust; days="]
    broken = await args_autocomplete(interaction("d"), "topic; d")
    assert [c.value for c in broken] == ["topic; topic=", "topic; days="]
    assert await args_autocomplete(interaction("nope"), "") == []
    assert await args_autocomplete(interaction(None), "") == []
