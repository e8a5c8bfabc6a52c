"""SkillStore against a migrated database: save and versions, who may change what,
validation that writes nothing, rollback, delete with its schedules, search."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlmodel import col

from adapters.storage.db import IMMEDIATE, Database
from executor.agent import Caller, Privilege
from executor.ports import utcnow
from skills import store as store_module
from skills.errors import (
    InvalidSkill,
    SkillExists,
    SkillNotFound,
    SkillPermissionDenied,
    SkillVersionNotFound,
)
from skills.model import PROMPT_MAX, SkillDeleted, SkillSpec
from skills.store import SkillStore
from skills.tables import Schedule, ScheduleSlot, Skill, SkillVersion
from tests.skills.conftest import ADMIN, ALICE, BOB, GUILD

SPEC = SkillSpec(
    prompt="Summarise {topic} as three bullets.",
    persona="researcher",
    tier="fast",
    tools=("web_fetch",),
    max_steps=8,
    max_runtime_s=120,
    description="Three bullets.",
)


async def _count(db: Database, table: Any) -> int:
    async with db.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(table)) or 0)


async def _counts(db: Database) -> tuple[int, int, int]:
    return (await _count(db, Skill), await _count(db, SkillVersion), await _count(db, Schedule))


async def _schedule(db: Database, skill_id: int, *, by: str = ALICE.user_id) -> int:
    async with db.sessions() as session:
        row = Schedule(
            skill_id=skill_id, guild_id=GUILD, channel_id="5", created_by=by, cron="0 9 * * *"
        )
        session.add(row)
        await session.commit()
        assert row.id is not None
        return row.id


async def _slot(db: Database, schedule_id: int) -> None:
    async with db.sessions() as session:
        session.add(ScheduleSlot(schedule_id=schedule_id, slot_at=utcnow(), status="ok"))
        await session.commit()


def test_immediate_matches_the_storage_layer() -> None:
    # Why: skills may not import adapters, so the store keeps its own copy.
    assert store_module._IMMEDIATE == IMMEDIATE


# --- save and versions ----------------------------------------------------------------


async def test_save_new_makes_version_one(store: SkillStore) -> None:
    info, version = await store.save(GUILD, "Daily-Digest", SPEC, by=ALICE, note="first")
    assert (info.name, info.owner_id, info.current_version) == ("daily-digest", "100", 1)
    assert info.description == "Three bullets." and info.enabled
    assert version.version == 1 and version.created_by == "100" and version.note == "first"
    assert version.spec == SPEC
    assert version.spec.arguments == ("topic",)
    assert await store.get(GUILD, "daily-digest") == info
    assert await store.find("other-guild", "daily-digest") is None


async def test_same_owner_saves_a_new_version(store: SkillStore) -> None:
    first, _ = await store.save(GUILD, "digest", SPEC, by=ALICE)
    changed = SkillSpec(prompt="Now about {topic} and {days}.", description="Changed.")
    info, version = await store.save(GUILD, "digest", changed, by=ALICE)
    assert info.id == first.id and info.current_version == 2 and version.version == 2
    assert info.description == "Changed."
    assert (await store.version(info)).spec.prompt == "Now about {topic} and {days}."
    assert (await store.version(info.id, 1)).spec.prompt == SPEC.prompt
    assert [v.version for v in await store.versions(info.id)] == [1, 2]


async def test_someone_elses_name_is_refused(store: SkillStore, db: Database) -> None:
    await store.save(GUILD, "digest", SPEC, by=ALICE)
    with pytest.raises(SkillExists, match="digest"):
        await store.save(GUILD, "digest", SkillSpec(prompt="mine now"), by=BOB)
    assert await _counts(db) == (1, 1, 0)
    # The same name in another guild is another skill.
    other, _ = await store.save("2", "digest", SkillSpec(prompt="hello"), by=BOB)
    assert other.owner_id == BOB.user_id


async def test_admin_may_edit_someone_elses_skill(store: SkillStore) -> None:
    await store.save(GUILD, "digest", SPEC, by=ALICE)
    info, version = await store.save(GUILD, "digest", SkillSpec(prompt="fixed"), by=ADMIN)
    assert info.owner_id == ALICE.user_id and info.current_version == 2
    assert version.created_by == ADMIN.user_id


BAD: list[tuple[str, str, SkillSpec, Caller]] = [
    ("name", "Not A Name!", SPEC, ALICE),
    ("name", "x" * 33, SPEC, ALICE),
    ("prompt", "ok", SkillSpec(prompt="   "), ALICE),
    ("prompt", "ok", SkillSpec(prompt="x" * (PROMPT_MAX + 1)), ALICE),
    ("prompt", "ok", SkillSpec(prompt="positional {0}"), ALICE),
    ("prompt", "ok", SkillSpec(prompt="unclosed {topic"), ALICE),
    ("prompt", "ok", SkillSpec(prompt=" ".join(f"{{a{i}}}" for i in range(11))), ALICE),
    ("description", "ok", SkillSpec(prompt="p", description="d" * 101), ALICE),
    ("tier", "ok", SkillSpec(prompt="p", tier="galactic"), ALICE),
    ("tier", "ok", SkillSpec(prompt="p", tier="t" * 33), ALICE),
    ("persona", "ok", SkillSpec(prompt="p", persona="nobody"), ALICE),
    ("persona", "ok", SkillSpec(prompt="p", persona="Not a name!"), ALICE),
    ("tools", "ok", SkillSpec(prompt="p", tools=("no_such_tool",)), ALICE),
    ("tools", "ok", SkillSpec(prompt="p", tools=("disabled_one",)), ALICE),
    ("tools", "ok", SkillSpec(prompt="p", tools=("shell",)), ALICE),
    ("tools", "ok", SkillSpec(prompt="p", tools=("bad name",)), ALICE),
    ("tools", "ok", SkillSpec(prompt="p", tools=tuple(f"t{i}" for i in range(17))), ADMIN),
    ("max_steps", "ok", SkillSpec(prompt="p", max_steps=0), ALICE),
    ("max_steps", "ok", SkillSpec(prompt="p", max_steps=51), ALICE),
    ("max_steps", "ok", SkillSpec(prompt="p", max_steps=True), ALICE),
    ("max_runtime_s", "ok", SkillSpec(prompt="p", max_runtime_s=1.0), ALICE),
    ("max_runtime_s", "ok", SkillSpec(prompt="p", max_runtime_s=float("nan")), ALICE),
    ("max_runtime_s", "ok", SkillSpec(prompt="p", max_runtime_s=1801), ALICE),
]


@pytest.mark.parametrize(("field", "name", "spec", "by"), BAD)
async def test_each_invalid_field_is_named_and_nothing_is_written(
    store: SkillStore, db: Database, field: str, name: str, spec: SkillSpec, by: Caller
) -> None:
    with pytest.raises(InvalidSkill) as caught:
        await store.save(GUILD, name, spec, by=by)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}:")
    assert await _counts(db) == (0, 0, 0)


async def test_invalid_new_version_leaves_the_skill_as_it_was(
    store: SkillStore, db: Database
) -> None:
    await store.save(GUILD, "digest", SPEC, by=ALICE)
    with pytest.raises(InvalidSkill):
        await store.save(GUILD, "digest", SkillSpec(prompt="p", tools=("shell",)), by=ALICE)
    with pytest.raises(InvalidSkill, match="note"):
        await store.save(GUILD, "digest", SPEC, by=ALICE, note="n" * 201)
    assert await _counts(db) == (1, 1, 0)
    assert (await store.get(GUILD, "digest")).current_version == 1


async def test_an_admin_may_grant_an_admin_tool(store: SkillStore) -> None:
    _, version = await store.save(GUILD, "ops", SkillSpec(prompt="p", tools=("shell",)), by=ADMIN)
    assert version.spec.tools == ("shell",)


async def test_a_failure_inside_the_transaction_writes_nothing(
    store: SkillStore, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> SkillVersion:
        raise RuntimeError("the disk fell off")

    monkeypatch.setattr(store_module, "_version_row", broken)
    with pytest.raises(RuntimeError):
        await store.save(GUILD, "digest", SPEC, by=ALICE)
    assert await _counts(db) == (0, 0, 0)  # the skill row flushed before it went too

    monkeypatch.undo()
    await store.save(GUILD, "digest", SPEC, by=ALICE)
    monkeypatch.setattr(store_module, "_version_row", broken)
    with pytest.raises(RuntimeError):
        await store.save(GUILD, "digest", SkillSpec(prompt="v2", description="new"), by=ALICE)
    info = await store.get(GUILD, "digest")
    assert (info.current_version, info.description) == (1, "Three bullets.")
    assert await _counts(db) == (1, 1, 0)


async def test_concurrent_creates_one_wins_the_other_is_told(store: SkillStore) -> None:
    results = await asyncio.gather(
        store.save(GUILD, "race", SkillSpec(prompt="alice"), by=ALICE),
        store.save(GUILD, "race", SkillSpec(prompt="bob"), by=BOB),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1 and len(lost) == 1
    assert isinstance(lost[0], SkillExists)
    assert (await store.get(GUILD, "race")).current_version == 1


async def test_a_create_that_loses_the_unique_race_is_skill_exists(
    store: SkillStore, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both creates read "no such skill"; the unique constraint decides, and the loser,
    read again, is refused (someone else's) or becomes version 2 (its own)."""
    await store.save(GUILD, "race", SkillSpec(prompt="alice"), by=ALICE)
    real = SkillStore._row
    calls = {"n": 0}

    async def stale_once(*args: Any, **kwargs: Any) -> Skill | None:
        calls["n"] += 1
        return None if calls["n"] == 1 else await real(*args, **kwargs)

    monkeypatch.setattr(SkillStore, "_row", staticmethod(stale_once))
    with pytest.raises(SkillExists):
        await store.save(GUILD, "race", SkillSpec(prompt="bob"), by=BOB)
    assert await _counts(db) == (1, 1, 0)
    calls["n"] = 0
    info, version = await store.save(GUILD, "race", SkillSpec(prompt="again"), by=ALICE)
    assert version.version == 2 and info.current_version == 2


# --- reading --------------------------------------------------------------------------


async def test_get_and_version_errors(store: SkillStore) -> None:
    with pytest.raises(SkillNotFound, match="nope"):
        await store.get(GUILD, "nope")
    with pytest.raises(SkillNotFound):
        await store.get(GUILD, "Not a name at all!")
    info, _ = await store.save(GUILD, "digest", SPEC, by=ALICE)
    await store.save(GUILD, "digest", SkillSpec(prompt="two"), by=ALICE)
    with pytest.raises(SkillVersionNotFound) as caught:
        await store.version(info, 7)
    assert caught.value.known == (1, 2)
    assert "v1, v2" in str(caught.value) and "7" in str(caught.value)
    assert isinstance(caught.value, SkillNotFound)
    with pytest.raises(SkillNotFound):
        await store.version(12345)
    assert await store.versions(12345) == []
    assert await store.find_by_id(info.id) == await store.get(GUILD, "digest")
    assert await store.find_by_id(12345) is None


async def test_list_by_name_and_owner(store: SkillStore) -> None:
    for name, by in (("zeta", ALICE), ("alpha", BOB), ("mid", ALICE)):
        await store.save(GUILD, name, SkillSpec(prompt="p"), by=by)
    await store.save("2", "elsewhere", SkillSpec(prompt="p"), by=ALICE)
    assert [s.name for s in await store.list(GUILD)] == ["alpha", "mid", "zeta"]
    assert [s.name for s in await store.list(GUILD, owner_id=ALICE.user_id)] == ["mid", "zeta"]


async def test_search_prefix_first_mine_first_capped_at_25(store: SkillStore) -> None:
    for i in range(20):
        await store.save(GUILD, f"news-{i:02d}", SkillSpec(prompt="p"), by=BOB)
    for i in range(5):
        await store.save(GUILD, f"news-mine-{i}", SkillSpec(prompt="p"), by=ALICE)
    await store.save(GUILD, "daily-news", SkillSpec(prompt="p"), by=ALICE)
    await store.save(GUILD, "weather", SkillSpec(prompt="p", description="The NEWS"), by=BOB)
    await store.save(GUILD, "other", SkillSpec(prompt="p"), by=BOB)

    found = await store.search(GUILD, "news", owner_id=ALICE.user_id, limit=100)
    assert len(found) == 25
    assert [s.name for s in found[:5]] == [f"news-mine-{i}" for i in range(5)]
    assert [s.name for s in found[5:]] == [f"news-{i:02d}" for i in range(20)]

    few = await store.search(GUILD, "NEWS-1", owner_id=ALICE.user_id)
    assert [s.name for s in few] == [f"news-{i}" for i in range(10, 20)]
    contains = await store.search(GUILD, "news", owner_id=BOB.user_id, limit=30)
    names = [s.name for s in contains]
    assert names[:20] == [f"news-{i:02d}" for i in range(20)]  # Bob's prefix matches first
    assert len(names) == 25
    tail = await store.search(GUILD, "ews", owner_id=ALICE.user_id)
    assert [s.name for s in tail][:2] == ["daily-news", "news-mine-0"]  # contains, mine first
    assert len(await store.search(GUILD)) == 25
    assert await store.search(GUILD, "%") == []  # LIKE wildcards are literal
    assert await store.search(GUILD, "_") == []
    assert await store.search(GUILD, "news", limit=0) == []


async def test_search_description_matches_after_names(store: SkillStore) -> None:
    await store.save(GUILD, "weather", SkillSpec(prompt="p", description="The rain NEWS"), by=BOB)
    await store.save(GUILD, "news", SkillSpec(prompt="p"), by=BOB)
    assert [s.name for s in await store.search(GUILD, "news")] == ["news", "weather"]


# --- rollback, enable, delete ---------------------------------------------------------


async def test_rollback_makes_a_new_version(store: SkillStore) -> None:
    info, _ = await store.save(GUILD, "digest", SPEC, by=ALICE)
    await store.save(GUILD, "digest", SkillSpec(prompt="second", description="Two"), by=ALICE)
    back = await store.rollback(GUILD, "digest", 1, by=ALICE)
    assert back.version == 3 and back.note == "rollback to v1"
    assert back.spec == SkillSpec(**{**_fields(SPEC), "description": "Two"})
    current = await store.get(GUILD, "digest")
    assert current.current_version == 3 and current.description == "Two"
    assert [v.version for v in await store.versions(info.id)] == [1, 2, 3]
    with pytest.raises(SkillPermissionDenied):
        await store.rollback(GUILD, "digest", 2, by=BOB)
    with pytest.raises(SkillVersionNotFound):
        await store.rollback(GUILD, "digest", 9, by=ALICE)
    with pytest.raises(SkillNotFound):
        await store.rollback(GUILD, "nope", 1, by=ALICE)
    assert (await store.rollback(GUILD, "digest", 2, by=ADMIN)).version == 4


def _fields(spec: SkillSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in SkillSpec.__slots__}


async def test_rollback_is_checked_like_a_save(
    store: SkillStore, db: Database, personas: Any
) -> None:
    from personas.model import Persona

    await personas.create(GUILD, Persona(name="temp", system_prompt="hi"), by=ALICE)
    await store.save(GUILD, "digest", SkillSpec(prompt="p", persona="temp"), by=ALICE)
    await store.save(GUILD, "digest", SkillSpec(prompt="q"), by=ALICE)
    await personas.delete(GUILD, "temp", by=ALICE)
    with pytest.raises(InvalidSkill, match="persona"):
        await store.rollback(GUILD, "digest", 1, by=ALICE)
    assert await _counts(db) == (1, 2, 0)


async def test_set_enabled(store: SkillStore) -> None:
    await store.save(GUILD, "digest", SPEC, by=ALICE)
    assert not (await store.set_enabled(GUILD, "digest", False, by=ALICE)).enabled
    with pytest.raises(SkillPermissionDenied):
        await store.set_enabled(GUILD, "digest", True, by=BOB)
    assert (await store.set_enabled(GUILD, "digest", True, by=ADMIN)).enabled
    with pytest.raises(SkillNotFound):
        await store.set_enabled(GUILD, "nope", True, by=ADMIN)


async def test_delete_takes_versions_and_schedules(store: SkillStore, db: Database) -> None:
    info, _ = await store.save(GUILD, "digest", SPEC, by=ALICE)
    await store.save(GUILD, "digest", SkillSpec(prompt="two"), by=ALICE)
    other, _ = await store.save(GUILD, "other", SkillSpec(prompt="p"), by=ALICE)
    await _slot(db, await _schedule(db, info.id))
    await _schedule(db, info.id, by=BOB.user_id)
    kept = await _schedule(db, other.id)
    await _slot(db, kept)

    with pytest.raises(SkillPermissionDenied):
        await store.delete(GUILD, "digest", by=BOB)
    assert await _counts(db) == (2, 3, 3)

    gone = await store.delete(GUILD, "digest", by=ALICE)
    assert isinstance(gone, SkillDeleted)
    assert (gone.versions, gone.schedules) == (2, 2)
    assert gone.skill.id == info.id and gone.skill.current_version == 2
    assert await store.find(GUILD, "digest") is None
    assert await _counts(db) == (1, 1, 1)
    async with db.sessions() as session:
        left = list(await session.scalars(select(col(Schedule.id))))
    assert left == [kept]
    assert await _count(db, ScheduleSlot) == 1  # the kept schedule's
    with pytest.raises(SkillNotFound):
        await store.delete(GUILD, "digest", by=ALICE)


async def test_admin_may_delete(store: SkillStore, db: Database) -> None:
    info, _ = await store.save(GUILD, "digest", SPEC, by=ALICE)
    await _schedule(db, info.id)
    assert (await store.delete(GUILD, "digest", by=ADMIN)).schedules == 1
    assert await _counts(db) == (0, 0, 0)


async def test_delete_is_one_transaction(
    store: SkillStore, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the schedules went puts them back: nothing half-deleted."""
    info, _ = await store.save(GUILD, "digest", SPEC, by=ALICE)
    await _schedule(db, info.id)
    real = SkillStore._delete_schedules

    async def then_fail(session: Any, where: Any) -> int:
        await real(session, where)
        raise RuntimeError("crash between the schedules and the versions")

    monkeypatch.setattr(SkillStore, "_delete_schedules", staticmethod(then_fail))
    with pytest.raises(RuntimeError):
        await store.delete(GUILD, "digest", by=ALICE)
    assert await _counts(db) == (1, 1, 1)


async def test_delete_does_not_need_foreign_key_cascades(sqlite_db: Database) -> None:
    """On an engine without ``PRAGMA foreign_keys`` (sqlite3's default) nothing cascades:
    the store deletes the schedules and versions itself."""
    engine = create_async_engine(sqlite_db.url)
    try:
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 0
        plain = SkillStore(sessions)
        info, _ = await plain.save(GUILD, "digest", SkillSpec(prompt="p"), by=ALICE)
        await _slot(sqlite_db, await _schedule(sqlite_db, info.id))
        assert (await plain.delete(GUILD, "digest", by=ALICE)).schedules == 1
        assert await _counts(sqlite_db) == (0, 0, 0)
        assert await _count(sqlite_db, ScheduleSlot) == 0
        mine, _ = await plain.save(GUILD, "mine", SkillSpec(prompt="p"), by=ALICE)
        await _slot(sqlite_db, await _schedule(sqlite_db, mine.id))
        assert await plain.delete_user_data(ALICE.user_id) == 3
        assert await _count(sqlite_db, ScheduleSlot) == 0
    finally:
        await engine.dispose()


async def test_delete_user_data_still_forgets(store: SkillStore, db: Database) -> None:
    mine, _ = await store.save(GUILD, "mine", SPEC, by=ALICE)
    theirs, _ = await store.save(GUILD, "theirs", SkillSpec(prompt="p"), by=BOB)
    await store.save(GUILD, "theirs", SkillSpec(prompt="alice edited"), by=ADMIN)
    await _schedule(db, mine.id)
    await _schedule(db, theirs.id)  # made by Alice on Bob's skill
    await _schedule(db, theirs.id, by=BOB.user_id)
    assert await store.delete_user_data(ALICE.user_id) == 4  # 2 schedules, 1 version, 1 skill
    assert await store.find(GUILD, "mine") is None
    assert await _counts(db) == (1, 2, 1)
    assert await store.delete_user_data("") == 0


async def test_privilege_is_compared_to_the_configured_admin(db: Database, registry: Any) -> None:
    store = SkillStore(db.sessions, tools=registry, admin=Privilege.MODERATOR)
    mod = Caller(user_id="300", privilege=Privilege.MODERATOR)
    await store.save(GUILD, "digest", SkillSpec(prompt="p"), by=ALICE)
    assert (await store.save(GUILD, "digest", SkillSpec(prompt="q"), by=mod))[1].version == 2
    # No personas store: any persona name is taken as given; no tiers: any tier.
    _, version = await store.save(
        GUILD, "loose", SkillSpec(prompt="p", persona="whoever", tier="huge"), by=ALICE
    )
    assert (version.spec.persona, version.spec.tier) == ("whoever", "huge")


async def test_without_a_registry_every_tool_is_refused(db: Database) -> None:
    store = SkillStore(db.sessions)
    with pytest.raises(InvalidSkill, match="tools"):
        await store.save(GUILD, "digest", SkillSpec(prompt="p", tools=("web_fetch",)), by=ADMIN)
