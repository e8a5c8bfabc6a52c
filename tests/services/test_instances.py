"""Sharing the shards out (the pure rules) and one process's membership, driven beat by
beat against the instances table (SQLite and PostgreSQL) with a client that records
what it was told to connect and disconnect."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from adapters.services.instances import (
    FixedShards,
    Identity,
    Membership,
    ShardView,
    to_claim,
    to_release,
)
from adapters.storage.db import Database
from adapters.storage.instances import SqlInstances
from executor.errors import ConfigError
from tests.storage.dbs import db, pg_db, pg_url, sqlite_db, sqlite_template

__all__ = ["db", "pg_db", "pg_url", "sqlite_db", "sqlite_template"]  # the fixtures used here


def _view(me: str, count: int, **held: set[int]) -> ShardView:
    return ShardView(
        me=me,
        count=count,
        live=tuple(sorted(held)),
        held={k: frozenset(v) for k, v in held.items()},
    )


@pytest.mark.parametrize(
    ("view", "claim", "release"),
    [
        # Alone: everything.
        (_view("a", 3, a=set()), [0, 1, 2], []),
        # A newcomer while one holds all: the holder gives up what is above its share...
        (_view("a", 3, a={0, 1, 2}, b=set()), [], [2]),
        # ... and the newcomer, holding the fewest, takes what is free up to the share.
        (_view("b", 3, a={0, 1}, b=set()), [2], []),
        # Three instances, 4 shards: 2/2/0 is not fair; the first of the fullest gives one.
        (_view("a", 4, a={0, 1}, b={2, 3}, c=set()), [], [1]),
        (_view("b", 4, a={0, 1}, b={2, 3}, c=set()), [], []),
        # 2/1/1 is fair (floor 1, ceil 2): nothing moves.
        (_view("a", 4, a={0, 1}, b={2}, c={3}), [], []),
        # A free shard goes to whoever holds the fewest, not to one above them.
        (_view("a", 4, a={0}, b={2}, c=set()), [], []),
        (_view("c", 4, a={0}, b={2}, c=set()), [1, 3], []),
    ],
)
def test_the_shards_are_shared_between_floor_and_ceiling(
    view: ShardView, claim: list[int], release: list[int]
) -> None:
    assert to_claim(view) == claim
    assert to_release(view) == release


async def test_fixed_shards_are_pinned_or_all_of_the_count() -> None:
    assert await FixedShards().plan_shards(2) == (2, [0, 1])
    assert await FixedShards(4, [1, 3]).plan_shards(None) == (4, [1, 3])
    assert await FixedShards(3).plan_shards(None) == (3, [0, 1, 2])
    with pytest.raises(ValueError, match="shard count"):
        FixedShards(None, [1])


class Client:
    """The Discord client as the membership drives it."""

    def __init__(self) -> None:
        self.shards: set[int] = set()
        self.log: list[str] = []

    @property
    def served_shards(self) -> frozenset[int]:
        return frozenset(self.shards)

    async def add_shard(self, shard_id: int) -> None:
        self.shards.add(shard_id)
        self.log.append(f"+{shard_id}")

    async def remove_shard(self, shard_id: int) -> None:
        self.shards.discard(shard_id)
        self.log.append(f"-{shard_id}")


async def _member(db: Database, name: str, published: list[str]) -> tuple[Membership, Client]:
    async def publish(topic: str) -> None:
        published.append(f"{name}:{topic}")

    async def recover() -> int:  # a bot's beat settles what reaped instances owned
        return 0

    membership = Membership(
        SqlInstances(db.sessions),
        Identity(id=name, kind="bot", host="h", pid=1),
        ttl_s=30,
        claim_shards=True,
        publish=publish,
        recover=recover,
    )
    await membership.register()
    client = Client()
    count, ids = await membership.plan_shards(3)
    assert count == 3
    for shard in ids:
        await client.add_shard(shard)
    membership.attach(client)
    return membership, client


async def test_a_newcomer_gets_its_share_and_a_dead_ones_shards_are_taken(db: Database) -> None:
    published: list[str] = []
    a, client_a = await _member(db, "a", published)
    assert client_a.shards == {0, 1, 2}
    b, client_b = await _member(db, "b", published)
    assert client_b.shards == set() and "b:shards" in published  # standing by, said so

    await a.tick()  # a hands one over: disconnected before its lease is released
    assert client_a.log[-1] == "-2" and client_a.shards == {0, 1}
    await b.tick()
    assert client_b.shards == {2}

    # b stops beating; its lease expires; a reaps it and takes its shard.
    async with db.engine.begin() as conn:
        past = "now() - interval '1 hour'" if not db.is_sqlite else "'2000-01-01 00:00:00'"
        await conn.execute(text(f"UPDATE instances SET expires_at = {past} WHERE id = 'b'"))
        await conn.execute(text(f"UPDATE leases SET expires_at = {past} WHERE holder = 'b'"))
    await a.tick()  # reaps b (its shard is free from the next beat)
    await a.tick()
    assert client_a.shards == {0, 1, 2}
    # b comes back from its stall: it learns it was declared dead, and stops.
    await b.tick()
    assert b.lost.is_set()

    # A stopping process with a peer alive hands every shard over at once.
    c, client_c = await _member(db, "c", published)
    assert await a.hand_over()
    assert client_a.shards == set()
    await c.tick()
    assert client_c.shards == {0, 1, 2}
    assert not await c.hand_over()  # the last one keeps its shards to the end
    for m in (a, c):
        await m.close()


async def test_a_shard_taken_while_this_process_stalled_is_let_go(db: Database) -> None:
    published: list[str] = []
    a, client_a = await _member(db, "a", published)
    # Only a's lease on shard 1 expired (say, renewed late), and b took it.
    async with db.engine.begin() as conn:
        past = "now() - interval '1 hour'" if not db.is_sqlite else "'2000-01-01 00:00:00'"
        await conn.execute(text(f"UPDATE leases SET expires_at = {past} WHERE name = 'shard:1'"))
    store = SqlInstances(db.sessions)
    await store.register(Identity(id="b", kind="bot", host="h", pid=2), ttl_s=30)
    assert await store.take("shard:1", "b", ttl_s=30)
    await a.tick()
    assert "-1" in client_a.log and 1 not in client_a.shards
    await a.close()


async def test_two_stopping_at_once_do_not_both_hand_over(db: Database) -> None:
    published: list[str] = []
    a, client_a = await _member(db, "a", published)
    b, client_b = await _member(db, "b", published)
    await a.tick()
    await b.tick()
    assert client_a.shards == {0, 1} and client_b.shards == {2}
    # Both get SIGTERM: the first hands over; the second is then the last one standing,
    # keeps its shards through its drain, and takes the first one's too.
    assert await a.hand_over()
    assert not await b.hand_over()
    assert client_a.shards == set()
    await b.tick()
    assert client_b.shards == {0, 1, 2}
    for m in (a, b):
        await m.close()


async def test_pinned_shards_are_leased_and_kept_out_of_the_share(db: Database) -> None:
    store = SqlInstances(db.sessions)

    def pinned(name: str, ids: list[int], ttl_s: float = 30) -> Membership:
        return Membership(
            store,
            Identity(id=name, kind="bot", host="h", pid=1),
            ttl_s=ttl_s,
            shard_count=4,
            shard_ids=ids,
            claim_shards=True,
        )

    p = pinned("p", [0, 1])
    await p.register()
    assert await p.plan_shards(None) == (4, [0, 1])
    # An instance sharing the rest: the pinned shards are neither free nor counted.
    view = await store.shard_view("auto", 4)
    assert view.reserved == {0, 1} and view.free == [2, 3] and view.share() == (2, 2)
    # A second process pinned to an overlapping shard waits out one lease, then refuses.
    q = pinned("q", [1, 2], ttl_s=0.3)
    await q.register()
    with pytest.raises(ConfigError, match=r"names shard\(s\) 1 of 4, which another running"):
        await q.plan_shards(None)
    assert await store.holders("shard:") == {"shard:0": "p", "shard:1": "p"}  # q took nothing


async def test_the_heartbeat_stops_when_woken_as_it_is_closed(db: Database) -> None:
    """A NOTIFY that wakes the beat in the same breath as the process stops: on Python
    3.11 ``asyncio.wait_for`` returned the wake-up and dropped the cancellation, so the
    beat went on and ``close()`` waited for it forever (three processes stopped at once
    in benchmarks/scaleout.py hung that way). Every interleaving of the wake-up and the
    close within a few turns of the loop must end."""
    for turns in range(6):
        membership = Membership(
            SqlInstances(db.sessions),
            Identity(id=f"beat-{turns}", kind="bot", host="h", pid=1),
            ttl_s=30,
        )
        await membership.register()
        membership.start()
        await asyncio.sleep(0)  # the beat waits for its wake-up
        membership.wake()
        for _ in range(turns):
            await asyncio.sleep(0)
        await asyncio.wait_for(membership.close(), 10)
