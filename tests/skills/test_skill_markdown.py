"""Skill files: export and import round-trip; malformed and hostile files are refused by
the personas' limited reader with a message naming the file and field, not the value."""

from __future__ import annotations

import pytest

from adapters.storage.db import Database
from personas.errors import UnsafeFile
from skills.errors import InvalidSkill, SkillExists, SkillFileError, UnsafeSkillFile
from skills.markdown import parse_markdown, render_markdown
from skills.model import SkillInfo, SkillSpec, SkillVersionInfo
from skills.store import SkillStore
from tests.skills.conftest import ADMIN, ALICE, BOB, GUILD
from tests.skills.test_skill_store import SPEC, _counts

SECRET = "SECRET-VALUE-42"


def _file(head: str, body: str = "Summarise {topic}.") -> str:
    return f"---\n{head.strip()}\n---\n{body}\n"


def test_render_then_parse_is_exact() -> None:
    info = SkillInfo(
        id=1, guild_id=GUILD, name="digest", owner_id="1", description=SPEC.description
    )
    version = SkillVersionInfo(skill_id=1, version=3, spec=SPEC)
    text = render_markdown(info, version)
    assert text.startswith("---\nname: digest\n")
    assert "max_runtime_s: 120" in text and text.endswith("Summarise {topic} as three bullets.\n")
    assert parse_markdown(text, source="digest.md") == ("digest", SPEC)


def test_minimal_file_round_trips() -> None:
    spec = SkillSpec(prompt="Just do it.\n\nWith {{braces}} and --- lines\n---\ninside.")
    info = SkillInfo(id=1, guild_id=GUILD, name="min", owner_id="1")
    text = render_markdown(info, SkillVersionInfo(skill_id=1, version=1, spec=spec))
    assert "persona" not in text and "max_steps" not in text
    assert parse_markdown(text) == ("min", spec)


def test_tools_may_be_a_comma_list() -> None:
    _, spec = parse_markdown(_file("name: t\ntools: web_fetch, current_time"))
    assert spec.tools == ("web_fetch", "current_time")


async def test_export_import_round_trip(store: SkillStore) -> None:
    await store.save(GUILD, "digest", SkillSpec(prompt="old"), by=ALICE)
    await store.save(GUILD, "digest", SPEC, by=ALICE)
    text = await store.export_markdown(GUILD, "digest")
    info, version = await store.import_markdown("2", text, by=BOB, source="digest.md")
    assert (info.guild_id, info.name, info.owner_id, version.version) == ("2", "digest", "200", 1)
    assert version.spec == SPEC and version.note == "imported from digest.md"
    assert await store.export_markdown("2", "digest") == text


async def test_import_over_an_existing_skill(store: SkillStore, db: Database) -> None:
    text = _file("name: digest\ndescription: From a file")
    await store.save(GUILD, "digest", SPEC, by=ALICE)
    with pytest.raises(InvalidSkill, match="replace") as caught:
        await store.import_markdown(GUILD, text, by=ALICE)
    assert caught.value.field == "name"
    with pytest.raises(SkillExists):
        await store.import_markdown(GUILD, text, by=BOB, replace_existing=True)
    assert await _counts(db) == (1, 1, 0)
    info, version = await store.import_markdown(GUILD, text, by=ALICE, replace_existing=True)
    assert version.version == 2 and info.description == "From a file"
    _, by_admin = await store.import_markdown(GUILD, text, by=ADMIN, replace_existing=True)
    assert by_admin.version == 3


async def test_import_is_checked_like_a_save(store: SkillStore, db: Database) -> None:
    with pytest.raises(InvalidSkill, match="tools"):
        await store.import_markdown(GUILD, _file("name: ops\ntools: [shell]"), by=ALICE)
    with pytest.raises(InvalidSkill, match="persona"):
        await store.import_markdown(GUILD, _file("name: ops\npersona: ghost"), by=ALICE)
    assert await _counts(db) == (0, 0, 0)


WRONG: list[tuple[str, str]] = [
    ("name", "name: 5"),
    ("name", f"name: [{SECRET}]"),
    ("name", f"name: {SECRET} with spaces"),
    ("description", f"name: t\ndescription: {{a: {SECRET}}}"),
    ("description", f"name: t\ndescription: {SECRET * 10}"),
    ("persona", "name: t\npersona: 12"),
    ("persona", f"name: t\npersona: Not {SECRET}"),
    ("tier", "name: t\ntier: true"),
    ("tools", f"name: t\ntools: {{web_fetch: {SECRET}}}"),
    ("tools", "name: t\ntools: [1, 2]"),
    ("tools", f"name: t\ntools: [{SECRET}!]"),
    ("max_steps", f"name: t\nmax_steps: {SECRET}"),
    ("max_steps", "name: t\nmax_steps: true"),
    ("max_steps", "name: t\nmax_steps: 2.5"),
    ("max_steps", "name: t\nmax_steps: 500"),
    ("max_runtime_s", f"name: t\nmax_runtime_s: {SECRET}"),
    ("max_runtime_s", "name: t\nmax_runtime_s: .nan"),
    ("max_runtime_s", "name: t\nmax_runtime_s: 2026-01-01"),
]


@pytest.mark.parametrize(("field", "head"), WRONG)
def test_a_wrong_value_names_the_field_never_the_value(field: str, head: str) -> None:
    with pytest.raises(SkillFileError) as caught:
        parse_markdown(_file(head), source="up.md")
    assert caught.value.field == field
    message = str(caught.value)
    assert message.startswith("up.md ") and f"`{field}`" in message
    assert SECRET not in message


@pytest.mark.parametrize(
    ("body", "problem"),
    [("", "empty"), ("{0} positional", "arguments"), ("x" * 4001, "4,000")],
)
def test_a_bad_prompt_is_the_prompt_field(body: str, problem: str) -> None:
    with pytest.raises(SkillFileError, match=problem) as caught:
        parse_markdown(_file("name: t", body))
    assert caught.value.field == "prompt"


def test_unknown_keys_are_named_and_the_allowed_ones_listed() -> None:
    with pytest.raises(SkillFileError) as caught:
        parse_markdown(_file(f"name: t\ntemperature: 0.3\nschedule: {SECRET}"), source="x.md")
    message = str(caught.value)
    assert "schedule, temperature" in message and "allowed keys: name," in message
    assert SECRET not in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("no front matter", "must start with a '---' line"),
        ("---\nname: t\n", "not closed"),
        ("---\n- a\n- b\n---\nbody", "mapping"),
        ("---\nname: t\n  bad: [\n---\nbody", "invalid YAML"),
        ("---\ndescription: d\n---\nbody", "needs a name"),
    ],
)
def test_malformed_files(text: str, problem: str) -> None:
    with pytest.raises(SkillFileError, match=problem):
        parse_markdown(text, source="x.md")


ALIAS_BOMB = """---
name: bomb
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
---
boom
"""


async def test_an_alias_bomb_is_refused_unread(store: SkillStore, db: Database) -> None:
    with pytest.raises(UnsafeSkillFile) as caught:
        await store.import_markdown(GUILD, ALIAS_BOMB, by=ALICE, source="bomb.md")
    assert caught.value.kind == "anchor"
    assert isinstance(caught.value.__cause__, UnsafeFile)  # the shared reader refused it
    assert "anchors and aliases are not allowed in skill files" in str(caught.value)
    assert "lol" not in str(caught.value)
    assert await _counts(db) == (0, 0, 0)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (_file("name: t\nx: *nowhere"), "alias"),
        (_file("name: t\ndeep: " + "[" * 30 + "]" * 30), "depth"),
        (_file("name: t\nmany: [" + ",".join(["1"] * 2000) + "]"), "nodes"),
        (_file("name: t", "x" * (64 * 1024 + 1)), "size"),
    ],
)
def test_hostile_files_are_refused_by_the_shared_limits(text: str, kind: str) -> None:
    with pytest.raises(UnsafeSkillFile) as caught:
        parse_markdown(text, source="h.md")
    assert caught.value.kind == kind
    assert str(caught.value).startswith("h.md ")
