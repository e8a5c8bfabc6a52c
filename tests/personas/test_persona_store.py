from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from executor.agent import Caller, Privilege
from executor.tools.registry import ToolRegistry
from personas.errors import (
    InvalidPersona,
    PersonaExists,
    PersonaFileError,
    PersonaNotFound,
    PersonaPermissionDenied,
)
from personas.markdown import load_builtins, parse_markdown, render_markdown
from personas.model import Persona
from personas.store import PersonaStore

ALICE = Caller(user_id="100", display_name="alice", guild_id="1")
BOB = Caller(user_id="200", display_name="bob", guild_id="1")
ADMIN = Caller(user_id="900", display_name="admin", privilege=Privilege.ADMIN, guild_id="1")
G = "1"
OTHER = "2"


def poet(**changes: object) -> Persona:
    base = Persona(
        name="poet",
        description="Writes verse.",
        system_prompt="You write short poems.",
        tier="standard",
        tools=("current_time",),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


async def test_list_merges_builtins_and_the_guilds_own(store: PersonaStore) -> None:
    await store.create(G, poet(), by=ALICE)
    await store.create(OTHER, poet(name="bard"), by=BOB)
    names = [p.name for p in await store.list(G)]
    assert names == sorted(names)
    assert {"assistant", "researcher", "reviewer", "poet"} <= set(names)
    assert "bard" not in names
    created = await store.get(G, "poet")
    assert created.origin == "custom"
    assert created.created_by == ALICE.user_id
    assert created.guild_id == G


async def test_get_is_case_insensitive_and_unknown_is_clear(store: PersonaStore) -> None:
    await store.create(G, poet(), by=ALICE)
    assert (await store.get(G, "  POET ")).name == "poet"
    assert (await store.get(G, "Assistant")).builtin
    with pytest.raises(PersonaNotFound, match="no persona named 'nobody'; try /persona list"):
        await store.get(G, "Nobody")
    assert await store.find(OTHER, "poet") is None


async def test_create_normalises_and_refuses_a_taken_name(store: PersonaStore) -> None:
    created = await store.create(G, poet(name="Poet", tier="FAST"), by=ALICE)
    assert (created.name, created.tier) == ("poet", "fast")
    with pytest.raises(PersonaExists, match="'poet' already exists"):
        await store.create(G, poet(name="POET"), by=BOB)
    # The same name in another guild is another persona.
    await store.create(OTHER, poet(), by=BOB)


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"name": "x"}, "name", "not a valid name"),
        ({"name": "has space"}, "name", "not a valid name"),
        ({"name": "a" * 33}, "name", "not a valid name"),
        ({"name": "-lead"}, "name", "not a valid name"),
        ({"description": "d" * 101}, "description", "at most 100 characters (got 101)"),
        ({"system_prompt": "  "}, "system_prompt", "may not be empty"),
        ({"system_prompt": "p" * 4001}, "system_prompt", "at most 4000 characters"),
        ({"tier": "huge"}, "tier", "unknown tier 'huge'; known tiers: fast, standard, smart"),
        ({"tools": ("nope",)}, "tools", "there is no tool named 'nope'"),
        ({"tools": ("disabled_one",)}, "tools", "not enabled on this deployment"),
        ({"tools": ("shell",)}, "tools", "the tool 'shell' needs admin privilege"),
        ({"temperature": 3.0}, "temperature", "between 0 and 2"),
    ],
)
async def test_validation_names_the_field(
    store: PersonaStore, changes: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(InvalidPersona) as info:
        await store.create(G, poet(**changes), by=ALICE)
    assert info.value.field == field
    assert message in str(info.value)
    assert await store.find(G, "poet") is None


async def test_tools_are_capped_at_the_creators_privilege(store: PersonaStore) -> None:
    made = await store.create(G, poet(tools=("shell", "web_fetch")), by=ADMIN)
    assert made.tools == ("shell", "web_fetch")
    # A moderator is still below the tool's admin floor.
    moderator = Caller(user_id="300", privilege=Privilege.MODERATOR)
    with pytest.raises(InvalidPersona, match="needs admin privilege"):
        await store.create(G, poet(name="other", tools=("shell",)), by=moderator)


async def test_update_by_creator_and_admin_keeps_granted_tools(store: PersonaStore) -> None:
    await store.create(G, poet(), by=ALICE)
    edited = await store.update(G, poet(description="Now rhymes.", tier="fast"), by=ALICE)
    assert (edited.description, edited.tier, edited.created_by) == ("Now rhymes.", "fast", "100")
    # An admin adds an admin-only tool ...
    await store.update(G, poet(tools=("current_time", "shell")), by=ADMIN)
    # ... and its creator may still edit other fields without losing it.
    kept = await store.update(G, poet(tools=("shell", "current_time"), description="x"), by=ALICE)
    assert kept.tools == ("shell", "current_time")
    # But the creator may not add another tool above their privilege (none here), nor
    # an unknown one.
    with pytest.raises(InvalidPersona, match="no tool named 'rm'"):
        await store.update(G, poet(tools=("rm",)), by=ALICE)


async def test_update_and_delete_by_a_non_creator_are_refused(store: PersonaStore) -> None:
    await store.create(G, poet(), by=ALICE)
    with pytest.raises(PersonaPermissionDenied, match=r"only its creator \(<@100>\) or an admin"):
        await store.update(G, poet(description="mine now"), by=BOB)
    with pytest.raises(PersonaPermissionDenied, match="you may not delete the persona 'poet'"):
        await store.delete(G, "poet", by=BOB)
    assert (await store.get(G, "poet")).description == "Writes verse."
    deleted = await store.delete(G, "POET", by=ADMIN)
    assert deleted.name == "poet"
    assert await store.find(G, "poet") is None
    with pytest.raises(PersonaNotFound):
        await store.delete(G, "poet", by=ADMIN)


async def test_editing_a_builtin_creates_a_guild_override(store: PersonaStore) -> None:
    original = await store.get(G, "assistant")
    with pytest.raises(PersonaPermissionDenied, match="built-in"):
        await store.update(G, replace(original, description="ours"), by=ALICE)
    with pytest.raises(PersonaPermissionDenied, match="built-in"):
        await store.create(G, replace(original, builtin=False), by=ALICE)
    override = await store.update(G, replace(original, description="Ours."), by=ADMIN)
    assert override.origin == "override"
    assert (await store.get(G, "assistant")).description == "Ours."
    assert (await store.get(OTHER, "assistant")).builtin
    assert [p.name for p in await store.list(G)].count("assistant") == 1
    with pytest.raises(PersonaExists):
        await store.create(G, replace(original, builtin=False), by=ADMIN)
    # Deleting the override brings the built-in back; the built-in cannot be deleted.
    await store.delete(G, "assistant", by=ADMIN)
    assert (await store.get(G, "assistant")) == original
    with pytest.raises(PersonaPermissionDenied, match="cannot be deleted"):
        await store.delete(G, "assistant", by=ADMIN)


async def test_export_import_round_trip(store: PersonaStore) -> None:
    await store.create(G, poet(temperature=0.9, avatar_url="https://e.org/p.png"), by=ALICE)
    text = await store.export_markdown(G, "poet")
    assert text.startswith("---\nname: poet\n")
    imported = await store.import_markdown(OTHER, text, by=BOB, source="poet.md")
    original = await store.get(G, "poet")
    for field in ("name", "description", "system_prompt", "tier", "tools", "avatar_url"):
        assert getattr(imported, field) == getattr(original, field)
    assert imported.temperature == 0.9
    assert imported.created_by == BOB.user_id
    with pytest.raises(PersonaExists):
        await store.import_markdown(OTHER, text, by=BOB)
    changed = text.replace("Writes verse.", "Imported again.")
    again = await store.import_markdown(OTHER, changed, by=BOB, replace_existing=True)
    assert again.description == "Imported again."


async def test_import_checks_like_create(store: PersonaStore) -> None:
    text = "---\nname: rooted\ntools: [shell]\n---\nYou run commands."
    with pytest.raises(InvalidPersona, match="needs admin privilege"):
        await store.import_markdown(G, text, by=ALICE)
    with pytest.raises(PersonaFileError, match=r"upload\.md: must start"):
        await store.import_markdown(G, "hello", by=ALICE, source="upload.md")


async def test_check_can_change_refuses_before_a_form_is_shown(store: PersonaStore) -> None:
    await store.create(G, poet(), by=ALICE)
    assert (await store.check_can_change(G, "poet", by=ALICE)).name == "poet"
    assert (await store.check_can_change(G, "poet", by=ADMIN, action="delete")).name == "poet"
    with pytest.raises(PersonaPermissionDenied, match="may not edit"):
        await store.check_can_change(G, "poet", by=BOB)
    with pytest.raises(PersonaPermissionDenied, match="only an admin may override"):
        await store.check_can_change(G, "reviewer", by=BOB)
    assert (await store.check_can_change(G, "reviewer", by=ADMIN)).builtin
    with pytest.raises(PersonaPermissionDenied, match="cannot be deleted"):
        await store.check_can_change(G, "reviewer", by=ADMIN, action="delete")
    with pytest.raises(PersonaNotFound):
        await store.check_can_change(G, "ghost", by=ADMIN)


async def test_search_for_autocomplete(store: PersonaStore) -> None:
    for i in range(30):
        await store.create(G, poet(name=f"poet-{i:02d}"), by=ALICE)
    assert len(await store.search(G, "")) == 25
    found = [p.name for p in await store.search(G, "POET-1")]
    assert found == [f"poet-1{i}" for i in range(10)]
    # Prefix matches come before matches inside the name or the description.
    await store.create(G, poet(name="verse", description="About a poet."), by=ALICE)
    names = [p.name for p in await store.search(G, "verse", limit=50)]
    assert names[0] == "verse"
    assert len(names) == 25


async def test_delete_user_data_keeps_personas_but_forgets_the_creator(
    store: PersonaStore,
) -> None:
    await store.create(G, poet(), by=ALICE)
    await store.create(OTHER, poet(name="second"), by=ALICE)
    await store.create(G, poet(name="bobs"), by=BOB)
    assert await store.delete_user_data(ALICE.user_id) == 2
    kept = await store.get(G, "poet")
    assert kept.created_by == ""
    # Nobody but an admin may change it now, not even its former creator.
    with pytest.raises(PersonaPermissionDenied, match="creator is unknown"):
        await store.update(G, poet(description="again"), by=ALICE)
    assert (await store.get(G, "bobs")).created_by == BOB.user_id
    assert await store.delete_user_data(BOB.user_id, purge=True) == 1
    assert await store.find(G, "bobs") is None
    assert await store.delete_user_data("") == 0


async def test_deployment_wide_personas_are_seen_everywhere_and_guilds_win(
    sessions: async_sessionmaker[AsyncSession], registry: ToolRegistry
) -> None:
    store = PersonaStore(sessions, load_builtins(), tools=registry, tiers=["standard"])
    await store.create(None, poet(description="Shared."), by=ADMIN)
    assert (await store.get(G, "poet")).description == "Shared."
    with pytest.raises(PersonaPermissionDenied, match="whole deployment"):
        await store.delete(None, "poet", by=ALICE)
    with pytest.raises(PersonaPermissionDenied, match="deployment-wide persona; only an admin"):
        await store.create(G, poet(description="Ours."), by=ALICE)
    with pytest.raises(PersonaPermissionDenied, match="whole deployment"):
        await store.update(G, poet(description="Ours."), by=ALICE)
    await store.update(G, poet(description="Ours."), by=ADMIN)
    assert (await store.get(G, "poet")).description == "Ours."
    assert (await store.get(G, "poet")).created_by == ADMIN.user_id
    assert (await store.get(OTHER, "poet")).description == "Shared."
    assert [p.description for p in await store.list(G) if p.name == "poet"] == ["Ours."]


async def test_without_a_registry_every_tool_is_refused(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    store = PersonaStore(sessions, [parse_markdown("---\nname: solo\n---\nHi.")])
    assert [p.name for p in await store.list(G)] == ["solo"]
    with pytest.raises(InvalidPersona, match="no tool named 'calculator'"):
        await store.create(G, poet(tools=("calculator",)), by=ADMIN)


# --- the read cache -------------------------------------------------------------------


def _persona_reads(sessions: async_sessionmaker[AsyncSession]) -> list[str]:
    """Every SELECT on the personas table from now on."""
    seen: list[str] = []

    def before(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM personas" in statement:
            seen.append(statement)

    event.listen(sessions.kw["bind"].sync_engine, "before_cursor_execute", before)
    return seen


async def test_reads_are_cached_and_every_write_drops_the_cache(
    store: PersonaStore, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await store.create(G, poet(), by=ALICE)
    reads = _persona_reads(sessions)
    assert (await store.get(G, "poet")).description == "Writes verse."
    assert await store.find(G, "POET") is not None
    assert await store.find(G, "assistant") is not None  # a built-in, from the same read
    assert "poet" in [p.name for p in await store.list(G)]
    assert len(reads) == 1  # one read of the guild's personas served all four

    await store.update(G, poet(description="New verse."), by=ALICE)
    assert (await store.get(G, "poet")).description == "New verse."
    await store.create(G, poet(name="bard"), by=BOB)
    assert (await store.get(G, "bard")).created_by == BOB.user_id
    await store.delete_user_data(BOB.user_id)
    assert (await store.get(G, "bard")).created_by == ""
    await store.delete(G, "poet", by=ALICE)
    assert await store.find(G, "poet") is None
    await store.import_markdown(G, render_markdown(poet()), by=ALICE)
    assert await store.find(G, "poet") is not None
    await store.delete_user_data(ALICE.user_id, purge=True)
    assert await store.find(G, "poet") is None


async def test_another_process_change_is_seen_within_the_ttl(
    sessions: async_sessionmaker[AsyncSession], registry: ToolRegistry
) -> None:
    now = [0.0]
    store = PersonaStore(
        sessions, load_builtins(), tools=registry, tiers=["standard"], monotonic=lambda: now[0]
    )
    elsewhere = PersonaStore(sessions, load_builtins(), tools=registry, tiers=["standard"])
    assert await store.find(G, "poet") is None
    await elsewhere.create(G, poet(), by=ALICE)
    now[0] += store.ttl_s / 2
    assert await store.find(G, "poet") is None  # still the cached read
    now[0] += store.ttl_s
    assert await store.find(G, "poet") is not None
    store.invalidate()  # what a cross-process notice calls
    await elsewhere.delete(G, "poet", by=ALICE)
    store.invalidate()
    assert await store.find(G, "poet") is None


async def test_a_write_during_a_read_leaves_nothing_stale(store: PersonaStore) -> None:
    read = store._rows

    async def racing(guild_id: str | None) -> list[Any]:
        rows = await read(guild_id)
        store._rows = read  # type: ignore[method-assign]
        await store.create(G, poet(), by=ALICE)  # lands after the read, before it returns
        return rows

    store._rows = racing  # type: ignore[method-assign]
    assert await store.find(G, "poet") is None  # what the read saw
    assert await store.find(G, "poet") is not None  # and it was not kept
