"""The note store's contract, run on the in-memory store, SQLite (FTS5) and PostgreSQL
(tsvector): scopes never cross, search ranks by relevance then recency, caps hold, and
a member's data goes on forget."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from adapters.storage.db import Database
from executor.ports import utcnow
from executor.testing import FakeClock
from memory import (
    Caps,
    InMemoryNoteStore,
    MemoryFull,
    NoteNotFound,
    NoteStore,
    Scope,
    SqlNoteStore,
    place_of,
)
from tests.storage.dbs import writes_after_another_writer

GUILD = place_of("g1")
OTHER_GUILD = place_of("g2")
DM = place_of(None)
CAPS = Caps(max_notes=5, max_chars=200)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return InMemoryNoteStore()
    db: Database = request.getfixturevalue("sqlite_db" if request.param == "sqlite" else "pg_db")
    return SqlNoteStore(db.sessions)


def alice(persona: str | None = "assistant", place: str = GUILD) -> Scope:
    return Scope("alice", persona, place)


async def test_is_a_note_store(store: Any) -> None:
    assert isinstance(store, InMemoryNoteStore | SqlNoteStore)
    _: NoteStore = store


async def test_scopes_never_cross_members_places_or_personas(store: NoteStore) -> None:
    await store.add(alice(), "Alice plays the cello in an orchestra", caps=CAPS)
    await store.add(alice(place=DM), "Alice's cat is called Miso", caps=CAPS)
    await store.add(Scope("bob", "assistant", GUILD), "Bob plays the cello too", caps=CAPS)
    await store.add(alice("researcher"), "Alice studies cellular biology", caps=CAPS)

    def texts(notes: list[Any]) -> set[str]:
        return {n.text for n in notes}

    assert texts(await store.newest(alice(), 10)) == {"Alice plays the cello in an orchestra"}
    assert texts(await store.search(alice(), "cello", 10)) == {
        "Alice plays the cello in an orchestra"
    }
    assert texts(await store.search(alice(place=DM), "cello cat", 10)) == {
        "Alice's cat is called Miso"
    }
    assert await store.search(alice(place=OTHER_GUILD), "cello", 10) == []
    # A guild that shares notes across its personas: both of alice's guild notes, never
    # her DM note, never bob's.
    shared = alice(persona=None)
    assert texts(await store.newest(shared, 10)) == {
        "Alice plays the cello in an orchestra",
        "Alice studies cellular biology",
    }
    assert texts(await store.search(shared, "cello biology", 10)) == {
        "Alice plays the cello in an orchestra",
        "Alice studies cellular biology",
    }
    assert texts(await store.search(alice(persona=None, place=DM), "cat", 10)) == {
        "Alice's cat is called Miso"
    }


async def test_search_ranks_by_relevance_then_recency(store: NoteStore) -> None:
    await store.add(alice(), "likes jazz", caps=CAPS)
    await store.add(alice(), "likes jazz and blues records", caps=CAPS)
    newer = await store.add(alice(), "prefers jazz piano", caps=CAPS)
    await store.add(alice(), "has a dog", caps=CAPS)
    found = await store.search(alice(), "Jazz blues?", 10)
    assert found[0].text == "likes jazz and blues records"  # matches both words
    assert {n.text for n in found} == {
        "likes jazz",
        "likes jazz and blues records",
        "prefers jazz piano",
    }
    assert await store.search(alice(), "", 10) == []
    # FTS and tsquery syntax in what a member types is just words
    for hostile in ['jazz" OR "', "jazz AND (", "NEAR(jazz", "jazz:* | !", "*", "'; --"]:
        results = await store.search(alice(), hostile, 10)
        assert all("jazz" in n.text for n in results)
    newest = await store.newest(alice(), 2)
    assert [n.text for n in newest] == ["has a dog", newer.text]


async def test_caps_per_member_persona_and_place(store: NoteStore) -> None:
    for i in range(5):
        await store.add(alice(), f"fact number {i}", caps=CAPS)
    with pytest.raises(MemoryFull, match="forget"):
        await store.add(alice(), "one too many", caps=CAPS)
    # another persona, another place: their own caps
    await store.add(alice("researcher"), "fine here", caps=CAPS)
    await store.add(alice(place=DM), "fine here too", caps=CAPS)
    with pytest.raises(MemoryFull, match="characters"):
        await store.add(alice("researcher"), "x" * 200, caps=CAPS)


async def test_a_member_sees_and_deletes_only_their_own(store: NoteStore) -> None:
    mine = await store.add(alice(), "mine", caps=CAPS)
    bobs = await store.add(Scope("bob", "assistant", GUILD), "bob's", caps=CAPS)
    assert (await store.get("alice", mine.id)).text == "mine"
    with pytest.raises(NoteNotFound):
        await store.get("alice", bobs.id)
    with pytest.raises(NoteNotFound):
        await store.delete("alice", bobs.id)
    assert (await store.delete("alice", mine.id)).id == mine.id
    assert await store.count("alice") == 0 and await store.count("bob") == 1


async def test_list_count_and_delete_all_by_persona(store: NoteStore) -> None:
    for i in range(3):
        await store.add(alice(), f"assistant note {i}", caps=CAPS)
    await store.add(alice("researcher"), "researcher note", caps=CAPS)
    await store.add(alice(place=DM), "dm note", caps=CAPS)
    assert await store.count("alice") == 5
    assert await store.count("alice", persona="assistant") == 4  # the DM one too
    assert await store.count("alice", persona="assistant", place=GUILD) == 3
    page = await store.list("alice", limit=2, offset=1)
    assert len(page) == 2
    assert await store.delete_all("alice", persona="assistant", place=GUILD) == 3
    assert {n.text for n in await store.list("alice")} == {"researcher note", "dm note"}


async def test_lore_is_kept_apart_from_members_notes(store: NoteStore) -> None:
    lore = await store.add_lore(
        GUILD, "assistant", "The server's movie night is Friday", by="admin"
    )
    await store.add(alice(), "Alice hosts movie night", caps=CAPS)
    assert [n.text for n in await store.lore(GUILD, "assistant")] == [lore.text]
    assert await store.lore(OTHER_GUILD, "assistant") == []
    assert all(n.kind == "note" for n in await store.search(alice(), "movie night", 10))
    assert await store.counts_by_member(GUILD) == {"alice": 1}
    with pytest.raises(NoteNotFound):
        await store.delete_lore(OTHER_GUILD, lore.id)
    await store.delete_lore(GUILD, lore.id)
    assert await store.lore(GUILD, "assistant") == []


async def test_forget_export_opt_out_and_retention(store: NoteStore) -> None:
    await store.add(alice(), "a fact", caps=CAPS)
    await store.add(alice(place=DM), "a dm fact", caps=CAPS)
    await store.add(Scope("bob", "assistant", GUILD), "bob's fact", caps=CAPS)
    await store.add_lore(GUILD, "assistant", "server lore", by="alice")
    await store.set_off("alice", True)
    assert await store.is_off("alice") and not await store.is_off("bob")
    exported = await store.export_user_data("alice")
    assert {n["text"] for n in exported["notes"]} == {"a fact", "a dm fact"}
    assert exported["memory_off"] is True and exported["memory_off_since"]
    assert [n["text"] for n in exported["lore_written"]] == ["server lore"]
    assert await store.delete_user_data("alice") == 2
    assert await store.export_user_data("alice") == {
        "notes": [],
        "memory_off": False,
        "memory_off_since": None,
        "lore_written": [],
    }
    lore = await store.lore(GUILD, "assistant")
    assert [(n.text, n.created_by) for n in lore] == [("server lore", "")]
    assert await store.count("bob") == 1
    # retention: notes older than the cutoff go, lore stays
    assert await store.purge_older_than(utcnow() - timedelta(days=1)) == 0
    assert await store.purge_older_than(utcnow() + timedelta(seconds=1)) == 1
    assert await store.count("bob") == 0 and len(await store.lore(GUILD, "assistant")) == 1


async def test_for_prompt_reads_newest_matches_lore_and_the_opt_out_at_once(
    store: NoteStore,
) -> None:
    older = await store.add(alice(), "Alice is learning Portuguese", caps=CAPS, run_id="r1")
    await store.add(alice(), "Alice likes tea", caps=CAPS, run_id="r2")
    newest = await store.add(alice(), "Alice has a dog", caps=CAPS, run_id="r2")
    lore = await store.add_lore(GUILD, "assistant", "Movie night is Friday", by="admin")
    await store.add_lore(GUILD, "researcher", "Sources in English", by="admin")
    got = await store.for_prompt(
        alice(), "how is my portuguese?", newest=1, matches=5, lore_persona="assistant"
    )
    assert [n.id for n in got.newest] == [newest.id]
    assert [n.id for n in got.matches] == [older.id]
    assert [n.id for n in got.lore] == [lore.id] and not got.off
    assert [n.text for n in await store.all_lore(GUILD)] == [
        "Movie night is Friday",
        "Sources in English",
    ]
    # Only lore (a persona that does not remember), and none in DMs.
    only_lore = await store.for_prompt(
        alice(), "portuguese", newest=0, matches=0, lore_persona="assistant"
    )
    assert only_lore.newest == only_lore.matches == () and len(only_lore.lore) == 1
    dm = await store.for_prompt(
        alice(place=DM), "portuguese", newest=3, matches=3, lore_persona="assistant"
    )
    assert dm.lore == ()
    # A run's notes, by its id (the "Saved:" line reads them).
    assert {n.text for n in await store.list("alice", run_id="r2")} == {
        "Alice likes tea",
        "Alice has a dog",
    }
    await store.set_off("alice", True)
    off = await store.for_prompt(
        alice(), "portuguese", newest=3, matches=3, lore_persona="assistant"
    )
    assert off.off and off.newest == off.matches == () and len(off.lore) == 1


async def test_notes_are_dated_by_the_stores_clock() -> None:
    clock = FakeClock()
    store = InMemoryNoteStore(clock=clock)
    note = await store.add(alice(), "a fact", caps=CAPS)
    assert note.created_at == clock.now()
    await clock.advance(86_400 * 3)
    assert await store.purge_older_than(clock.now() - timedelta(days=2)) == 1


async def test_sql_notes_are_dated_by_the_stores_clock(sqlite_db: Database) -> None:
    clock = FakeClock()
    store = SqlNoteStore(sqlite_db.sessions, clock=clock)
    note = await store.add(alice(), "a fact", caps=CAPS)
    assert note.created_at == clock.now()
    await store.set_off("alice", True)
    assert (await store.export_user_data("alice"))["memory_off_since"] == clock.now().isoformat()


async def test_a_prompts_matches_are_ranked_among_the_members_notes(store: NoteStore) -> None:
    for i in range(6):
        await store.add(alice(), f"filler {i}", caps=Caps())
    old = await store.add(alice(), "Alice drinks coffee at home", caps=Caps())
    both = await store.add(alice(), "Alice's café order: coffee, oat milk", caps=Caps())
    for i in range(3):
        await store.add(alice(), f"newer filler {i}", caps=Caps())
    await store.add(Scope("bob", "assistant", GUILD), "Bob loves coffee and cafe", caps=Caps())
    got = await store.for_prompt(
        alice(), "Which CAFE and what coffee?", newest=2, matches=3, lore_persona=None
    )
    assert [n.text for n in got.newest] == ["newer filler 2", "newer filler 1"]
    assert [n.id for n in got.matches] == [both.id, old.id]  # both words, then one


def test_immediate_matches_the_storage_layer() -> None:
    # Why: memory may not import adapters, so the store keeps its own copy.
    from adapters.storage.db import IMMEDIATE
    from memory import store as store_module

    assert store_module._IMMEDIATE == IMMEDIATE


@pytest.mark.parametrize(
    "write",
    [
        lambda s: s.add(alice(), "likes green tea", caps=CAPS),
        lambda s: s.purge_older_than(utcnow()),
        lambda s: s.set_off("alice", True),
        lambda s: s.delete_user_data("alice"),
    ],
    ids=["add", "purge", "set_off", "delete_user_data"],
)
async def test_a_write_waits_for_another_writer_instead_of_failing(
    sqlite_db: Database, write: Callable[[SqlNoteStore], Awaitable[object]]
) -> None:
    """A note's write waits for another connection's (a run's audit rows) instead of
    failing at once: it reads FTS5's tables before writing."""
    store = SqlNoteStore(sqlite_db.sessions)
    await store.add(alice(), "an older note", caps=CAPS)
    await writes_after_another_writer(sqlite_db, lambda: write(store))
