"""Instances and leases on SQLite and PostgreSQL: a heartbeat renews, an expired instance
is reaped once (its leases with it), a reaped one's heartbeat reports it dead, leases
are taken only when free, and shards are shared out between the live instances."""

from __future__ import annotations

from sqlalchemy import text

from adapters.services.instances import Identity, ShardView, to_claim
from adapters.storage.db import Database
from adapters.storage.instances import SCHEDULER_LEASE, SqlInstances


async def _expire(db: Database, instance_id: str) -> None:
    """As if ``instance_id`` stopped beating long ago."""
    past = "now() - interval '1 hour'" if not db.is_sqlite else "'2000-01-01 00:00:00.000000'"
    async with db.engine.begin() as conn:
        await conn.execute(
            text(f"UPDATE instances SET expires_at = {past} WHERE id = :i"), {"i": instance_id}
        )
        await conn.execute(
            text(f"UPDATE leases SET expires_at = {past} WHERE holder = :i"), {"i": instance_id}
        )


def _me(name: str) -> Identity:
    return Identity(id=name, kind="bot", host="h", pid=1)


async def test_heartbeat_reap_and_a_reaped_instance_learns_it(db: Database) -> None:
    store = SqlInstances(db.sessions)
    await store.register(_me("a"), ttl_s=30)
    await store.register(_me("b"), ttl_s=30)
    assert await store.take(SCHEDULER_LEASE, "a", ttl_s=30)
    assert not await store.take(SCHEDULER_LEASE, "b", ttl_s=30)  # held, not expired

    alive, held = await store.heartbeat("a", ttl_s=30, runs=2, shards=[0, 1], shard_count=2)
    assert alive and held == {SCHEDULER_LEASE}
    [a, b] = await store.live()
    assert (a.id, a.shards, a.runs, a.leader, a.shard_count) == ("a", (0, 1), 2, True, 2)
    assert (b.id, b.leader) == ("b", False)
    assert 0 <= a.heartbeat_age_s < 60

    assert await store.reap() == []  # nobody has expired
    await _expire(db, "a")
    assert [i.id for i in await store.live()] == ["b"]
    assert await store.reap() == ["a"]
    assert await store.reap() == []  # reaped once
    assert await store.holders() == {}  # its leases went with it
    assert await store.take(SCHEDULER_LEASE, "b", ttl_s=30)
    # The stalled process beats again: its row is gone, it learns it is dead.
    assert await store.heartbeat("a", ttl_s=30, runs=0, shards=[], shard_count=None) == (
        False,
        frozenset(),
    )


async def test_the_sole_bot_reaps_every_other_bot_at_once(db: Database) -> None:
    store = SqlInstances(db.sessions)
    await store.register(_me("old"), ttl_s=30)
    await store.register(Identity(id="ask", kind="cli", host="h", pid=2), ttl_s=30)
    await store.register(_me("new"), ttl_s=30)
    # SQLite: "new" holds the file lock, so no other bot can be alive; a cli may be.
    assert await store.reap(sole_bot="new") == ["old"]
    assert [i.id for i in await store.live(kind=None)] == ["ask", "new"]


async def test_shards_are_shared_out_and_a_dead_ones_are_free(db: Database) -> None:
    store = SqlInstances(db.sessions)
    for name in ("a", "b", "c"):
        await store.register(_me(name), ttl_s=30)
    a = await store.claim_shards("a", 4, ttl_s=30, decide=to_claim)
    b = await store.claim_shards("b", 4, ttl_s=30, decide=to_claim)
    c = await store.claim_shards("c", 4, ttl_s=30, decide=to_claim)
    assert (a, b, c) == ([0, 1], [2, 3], [])  # ceil(4 / 3) = 2 each, in turn
    view = await store.shard_view("c", 4)
    assert view.held == {"a": {0, 1}, "b": {2, 3}, "c": frozenset()}
    assert view.free == []

    await _expire(db, "b")
    view = await store.shard_view("c", 4)
    assert view.live == ("a", "c") and view.free == [2, 3]
    assert await store.claim_shards("c", 4, ttl_s=30, decide=to_claim) == [2, 3]

    # A lease is never taken from a live holder, whatever the decision says.
    def greedy(view: ShardView) -> list[int]:
        return [0, 1, 2, 3]

    assert await store.claim_shards("b", 4, ttl_s=30, decide=greedy) == []
    await store.release("c", ["shard:2"])
    assert await store.claim_shards("a", 4, ttl_s=30, decide=greedy) == [0, 1, 2]


async def test_the_shard_count_the_others_use(db: Database) -> None:
    store = SqlInstances(db.sessions)
    await store.register(_me("a"), ttl_s=30)
    await store.register(_me("b"), ttl_s=30)
    assert await store.agreed_shard_count("b") is None
    await store.heartbeat("a", ttl_s=30, runs=0, shards=[0], shard_count=3)
    assert await store.agreed_shard_count("b") == 3
    await store.deregister("a")
    assert await store.agreed_shard_count("b") is None


# --- recovery by ownership -----------------------------------------------------------


async def _run_of(db: Database, instance_id: str | None, run_id: str, user: str) -> None:
    """A run started by ``instance_id``'s process (its audit row and its reservation)."""
    from adapters.storage.audit_sink import SqlAuditSink
    from adapters.storage.budget import SqlBudgetLedger
    from executor.agent import Caller
    from tests.conformance.test_audit_sink import started

    sink = SqlAuditSink(db.sessions)
    ledger = SqlBudgetLedger(db.sessions, default_limit_micros=1_000_000)
    sink.owner = ledger.owner = instance_id
    await ledger.reserve(Caller(user_id=user), run_id, 5_000)
    await sink.record(started(run_id))
    await sink.close()


async def _statuses(db: Database) -> dict[str, str]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(text("SELECT run_id, status FROM audit_runs"))
        return {str(r[0]): str(r[1]) for r in rows}


async def _open(db: Database) -> set[str]:
    async with db.engine.connect() as conn:
        return {
            str(r[0]) for r in await conn.execute(text("SELECT run_id FROM budget_reservations"))
        }


async def test_recovery_settles_a_dead_instances_runs_and_never_a_live_ones(db: Database) -> None:
    from adapters.storage.recovery import recover

    store = SqlInstances(db.sessions)
    await store.register(_me("live"), ttl_s=30)
    await store.register(_me("dead"), ttl_s=30)
    await _run_of(db, "live", "r-live", "u1")
    await _run_of(db, "dead", "r-dead", "u2")
    await _run_of(db, None, "r-old", "u3")  # written before instances existed

    # Nobody has expired: the periodic recovery (unowned=False) touches nothing.
    report = await recover(db.sessions, unowned=False)
    assert report.interrupted_runs == [] and report.settled_reservations == 0

    await _expire(db, "dead")
    # Expired but not reaped yet: still nobody's to settle (the reap is the decision).
    assert (await recover(db.sessions, unowned=False)).interrupted_runs == []
    assert await store.reap() == ["dead"]
    report = await recover(db.sessions, unowned=False)
    assert report.interrupted_runs == ["r-dead"] and report.settled_reservations == 1
    assert await _statuses(db) == {
        "r-live": "running",
        "r-dead": "interrupted",
        "r-old": "running",
    }
    assert await _open(db) == {"r-live", "r-old"}

    # At start-up, rows with no owner are orphans too; the live instance's still not.
    report = await recover(db.sessions, unowned=True)
    assert report.interrupted_runs == ["r-old"]
    assert (await _statuses(db))["r-live"] == "running"
    assert await _open(db) == {"r-live"}
