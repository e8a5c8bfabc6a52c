"""This process as one of several on a database: its heartbeat, the Discord shards it
serves, and the settling of what dead processes left behind.

Every process that runs agents registers as an **instance** (``coterie run`` as a
``bot``, ``coterie ask`` and ``chat`` as a ``cli``) and renews its lease with a
heartbeat every third of ``ttl_s``. What it owns carries its id: runs, budget
reservations, leases on shards. An instance whose lease expires is dead; the first
``bot`` that notices removes its row (the one atomic "death certificate") and settles
its runs and reservations (:class:`Recover`). A process that finds its own row gone
(it stalled past its lease and was declared dead) has lost its runs to another one
and stops (:attr:`Membership.lost`).

Shards (PostgreSQL, when not pinned): the instances agree on one shard count (the
first one asks Discord; the others adopt it) and share the shards out by leases,
each between ``floor`` and ``ceil`` of count / live instances (:func:`to_claim`,
:func:`to_release`). A shard is disconnected *before* its lease is released, so two
processes never hold one shard's connection at once, and each message reaches one.
A dead instance's shards are free when its lease expires; a survivor takes them.

No SQL and no Discord here: the store and the client are ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from adapters.services.leadership import Leadership
from executor.errors import ConfigError

__all__ = [
    "SHARD_PREFIX",
    "FixedShards",
    "Identity",
    "InstanceStore",
    "Kind",
    "Membership",
    "ShardHost",
    "ShardPlanner",
    "ShardView",
    "shard_lease",
    "shard_of_lease",
    "to_claim",
    "to_release",
]

log = logging.getLogger("coterie.instances")

Kind = Literal["bot", "cli"]
#: With nothing reaped, a bot settles orphans every this many beats (a minute by default).
SWEEP_EVERY = 12
SHARD_PREFIX = "shard:"


def shard_lease(shard_id: int) -> str:
    return f"{SHARD_PREFIX}{shard_id}"


def shard_of_lease(name: str) -> int | None:
    if not name.startswith(SHARD_PREFIX):
        return None
    rest = name[len(SHARD_PREFIX) :]
    return int(rest) if rest.isdigit() else None


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this process is: a random id, its host and pid, and what kind it is."""

    id: str
    kind: Kind
    host: str
    pid: int

    @classmethod
    def new(cls, kind: Kind) -> Identity:
        return cls(id=secrets.token_hex(8), kind=kind, host=socket.gethostname(), pid=os.getpid())

    def __str__(self) -> str:
        return f"instance {self.id} (pid {self.pid} on {self.host})"


@dataclass(frozen=True, slots=True)
class ShardView:
    """The shards as the instances hold them, read in one transaction."""

    me: str
    count: int
    live: tuple[str, ...]  # live bot instances sharing, sorted by id (``me`` among them)
    held: dict[str, frozenset[int]] = field(default_factory=dict)  # by live instance
    reserved: frozenset[int] = frozenset()  # pinned to an instance that does not share

    @property
    def free(self) -> list[int]:
        taken = set().union(*self.held.values()) if self.held else set()
        return [s for s in range(self.count) if s not in taken and s not in self.reserved]

    def mine(self) -> frozenset[int]:
        return self.held.get(self.me, frozenset())

    def share(self) -> tuple[int, int]:
        """The fewest and the most shards one live instance should hold."""
        n = max(len(self.live), 1)
        shared = self.count - len(self.reserved)
        return shared // n, math.ceil(shared / n)


def to_claim(view: ShardView) -> list[int]:
    """The free shards ``view.me`` should take now: only the instance(s) holding the
    fewest take, up to the most one should hold, lowest ids first. (Claims are made one
    instance at a time, so the next one decides on what this one took.)"""
    free = view.free
    if not free:
        return []
    counts = {i: len(view.held.get(i, ())) for i in view.live}
    counts.setdefault(view.me, len(view.mine()))
    mine = counts[view.me]
    _, most = view.share()
    if mine != min(counts.values()) or mine >= most:
        return []  # those with fewer pick first (and with the ceiling, all are picked)
    return free[: most - mine]


def to_release(view: ShardView) -> list[int]:
    """The shards ``view.me`` should give up so the others can take their share:
    everything above the most one should hold; or one, when this instance holds the
    most (first by id among equals) and another holds two or more fewer."""
    mine = sorted(view.mine())
    _, most = view.share()
    if len(mine) > most:
        return mine[most:]
    counts = {i: len(view.held.get(i, ())) for i in view.live}
    counts[view.me] = len(mine)
    if not mine or max(counts.values()) - min(counts.values()) < 2:
        return []
    top = max(counts.values())
    first = min(i for i, c in counts.items() if c == top)
    return mine[-1:] if first == view.me else []


class InstanceStore(Protocol):
    """What :class:`Membership` asks of the instances table and the leases."""

    async def register(self, identity: Identity, *, ttl_s: float) -> None: ...

    async def heartbeat(
        self,
        instance_id: str,
        *,
        ttl_s: float,
        runs: int,
        shards: Sequence[int],
        shard_count: int | None,
    ) -> tuple[bool, frozenset[str]]:
        """Renew the instance's lease and its named leases: (still alive, names held)."""
        ...

    async def deregister(self, instance_id: str) -> None: ...

    async def reap(self, *, sole_bot: str | None = None) -> list[str]:
        """Remove expired instances (and with ``sole_bot``, every other bot: it holds
        the single-instance lock), with their leases; their ids."""
        ...

    async def agreed_shard_count(self, instance_id: str) -> int | None: ...

    async def claim_shards(
        self,
        instance_id: str,
        count: int,
        *,
        ttl_s: float,
        decide: Callable[[ShardView], list[int]],
        pinned: bool = False,
    ) -> list[int]:
        """Take what ``decide`` picks from the shards as they are held now (``pinned``:
        and mark the instance as one that holds its own, outside the share)."""
        ...

    async def shard_view(self, instance_id: str, count: int) -> ShardView: ...

    async def release(self, holder: str, names: Sequence[str]) -> None: ...

    async def retire(self, holder: str) -> bool:
        """Leave ``holder`` out of the share if another instance is alive and not
        stopping (True); else False."""
        ...


class ShardPlanner(Protocol):
    """Where the Discord client learns its shards (:class:`Membership`, or fixed ones)."""

    async def plan_shards(self, recommended: int | None) -> tuple[int, list[int]]:
        """The shard count and this process's first shards, given Discord's suggested
        count (None when the count is pinned and Discord was not asked)."""
        ...

    def attach(self, host: ShardHost) -> None:
        """The client is connected with its first shards."""
        ...

    @property
    def needs_recommendation(self) -> bool:
        """Whether :meth:`plan_shards` wants Discord's suggested count."""
        ...


class ShardHost(Protocol):
    """The Discord client, as the balancer drives it."""

    @property
    def served_shards(self) -> frozenset[int]: ...

    async def add_shard(self, shard_id: int) -> None: ...

    async def remove_shard(self, shard_id: int) -> None: ...


Recover = Callable[[], Awaitable[int]]


class FixedShards:
    """Shards decided up front: the pinned ones, or every shard of the count (pinned or
    Discord's): one process on SQLite, tests, ``coterie sync``."""

    def __init__(self, count: int | None = None, ids: Sequence[int] | None = None) -> None:
        if ids is not None and count is None:
            raise ValueError("pinned shard ids need a shard count")
        self.count = count
        self.ids = tuple(ids) if ids is not None else None

    @property
    def needs_recommendation(self) -> bool:
        return self.count is None

    async def plan_shards(self, recommended: int | None) -> tuple[int, list[int]]:
        count = self.count or recommended or 1
        return count, list(self.ids) if self.ids is not None else list(range(count))

    def attach(self, host: ShardHost) -> None:
        return None


class Membership:
    """This process's registration: heartbeat loop, reaping, shards. See the module."""

    def __init__(
        self,
        store: InstanceStore,
        identity: Identity,
        *,
        ttl_s: float,
        runs: Callable[[], int] = lambda: 0,
        recover: Recover | None = None,
        sole: bool = False,
        publish: Callable[[str], Awaitable[None]] | None = None,
        shard_count: int | None = None,
        shard_ids: Sequence[int] | None = None,
        claim_shards: bool = False,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.store = store
        self.identity = identity
        self.ttl_s = ttl_s
        self.runs = runs
        self.recover = recover  # a bot's: settle what reaped instances owned
        self.sole = sole  # SQLite: this process holds the single-instance lock
        self.publish = publish  # tell the other processes (NOTIFY), by topic
        self.pinned_count = shard_count
        self.pinned_ids = tuple(shard_ids) if shard_ids is not None else None
        self.claims = claim_shards and self.pinned_ids is None
        self.fence = claim_shards and self.pinned_ids is not None  # lease the pinned ones
        self.shard_count: int | None = shard_count
        self.lost = asyncio.Event()
        self._wake = asyncio.Event()
        self._host: ShardHost | None = None
        self._task: asyncio.Task[None] | None = None
        self._registered = False
        self._handed_over = False
        self._beats = 0
        self._lock = asyncio.Lock()  # one tick (or hand-over) at a time
        # The scheduler's lead (a bot's): kept or taken on each beat.
        self.leadership: Leadership | None = None

    @property
    def id(self) -> str:
        return self.identity.id

    @property
    def interval_s(self) -> float:
        return self.ttl_s / 3

    # --- life --------------------------------------------------------------------

    async def register(self) -> None:
        await self.store.register(self.identity, ttl_s=self.ttl_s)
        self._registered = True
        if self.claims:
            await self._say("shards")  # the holders make room for this one now

    def start(self) -> None:
        """Start the heartbeat loop on the running loop (after :meth:`register`)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name="coterie-heartbeat"
            )

    async def close(self) -> None:
        """Stop the heartbeat and remove this instance (and its leases): the others
        take its shards at once instead of after the lease."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.leadership is not None and self._registered:
            await self.leadership.resign()  # (the drain has, unless the app just closes)
        if self._registered:
            self._registered = False
            try:
                await self.store.deregister(self.id)
            except Exception:
                log.warning("could not remove %s from the instances", self.identity, exc_info=True)
            else:
                if self.claims and self._host is not None and self._host.served_shards:
                    await self._say("shards")

    def wake(self) -> None:
        """Run the next tick now (another instance released shards or joined)."""
        self._wake.set()

    async def _loop(self) -> None:
        while not self.lost.is_set():
            # Why asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the
            # event's result when the task is cancelled in the same breath as the event
            # is set (a NOTIFY waking the beat as the process stops): the cancellation
            # was lost, the loop beat on, and close() waited for it forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Why carry on: a database that blinks must not stop the process; the
                # lease has two more beats before it expires. One line for the operator.
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                log.warning("heartbeat failed (%s: %s); will try again", type(exc).__name__, first)
                log.debug("heartbeat failure", exc_info=True)

    async def tick(self) -> None:
        """One beat: renew, follow the shards, settle what dead instances left, keep
        or take the scheduler's lead."""
        async with self._lock:
            beat = await self._beat()
        if beat is not None and self.leadership is not None:
            held, swept = beat
            await self.leadership.follow(held, sweep=swept)

    async def _beat(self) -> tuple[frozenset[str], bool] | None:
        """Renew, follow the shards, settle what dead instances left: (the leases held
        now, whether dead instances' leftovers were looked for); None when this
        instance was declared dead."""
        host = self._host
        served = host.served_shards if host is not None else frozenset()
        alive, held = await self.store.heartbeat(
            self.id,
            ttl_s=self.ttl_s,
            runs=self.runs(),
            shards=sorted(served),
            shard_count=self.shard_count,
        )
        if not alive:
            log.error(
                "%s: its lease expired and another process took over its runs and shards; stopping",
                self.identity,
            )
            self._registered = False
            self.lost.set()
            if self.leadership is not None:
                self.leadership.lost()
            return None
        if host is not None and self.claims and self.shard_count and not self._handed_over:
            await self._follow_shards(host, held)
            if host.served_shards != served:
                # Why another beat at once: this one wrote the shards as they were;
                # `coterie status` should not show a shard twice or not at all for 5 s.
                self._wake.set()
        swept = False
        if self.recover is not None:
            self._beats += 1
            # Why also now and then with nothing reaped: a reaper that died between
            # the reap and the settling left orphans that no reap will name again.
            swept = await self.reap(sweep=self._beats % SWEEP_EVERY == 0)
        return held, swept

    async def reap(self, *, sweep: bool = True) -> bool:
        """Remove the instances whose lease expired and settle what they owned (with
        ``sweep``, look for leftovers even when none expired now). Whether anything
        was reaped or ``sweep``."""
        if self.recover is None:
            return False
        reaped = await self.store.reap(sole_bot=self.id if self.sole else None)
        if reaped:
            log.warning("instance(s) %s stopped renewing their lease", ", ".join(reaped))
            await self._say("shards")
        if reaped or sweep:
            closed = await self.recover()
            if closed:
                log.warning("closed %d run(s) of a stopped instance as interrupted", closed)
        return bool(reaped) or sweep

    # --- shards --------------------------------------------------------------------

    @property
    def needs_recommendation(self) -> bool:
        return self.pinned_count is None

    async def plan_shards(self, recommended: int | None) -> tuple[int, list[int]]:
        """The shard count and the shards this process starts with: pinned, or all of
        them (no claims: SQLite), or its share of the free ones."""
        if self.pinned_count is not None and self.pinned_ids is not None:
            self.shard_count = self.pinned_count
            pinned = list(self.pinned_ids)
            if self.fence:
                await self._fence(pinned)
            return self.pinned_count, pinned
        count = self.pinned_count
        if count is None and self.claims:
            count = await self.store.agreed_shard_count(self.id)
        if count is None:
            count = recommended or 1
        if self.pinned_count is None and recommended and count != recommended:
            log.info("using the %d shard(s) the other instances use (Discord suggests %d)",
                     count, recommended)  # fmt: skip
        self.shard_count = count
        if not self.claims:
            return count, list(range(count))
        async with self._lock:
            ids = await self.store.claim_shards(self.id, count, ttl_s=self.ttl_s, decide=to_claim)
        return count, sorted(ids)

    async def _fence(self, pinned: list[int]) -> None:
        """Lease the pinned shards (so no other process connects them) or refuse to
        start. A holder may be this process's own previous life, killed a moment ago:
        its lease expires within ``ttl_s``, so wait that long before refusing."""
        count = self.pinned_count or 0
        deadline = asyncio.get_running_loop().time() + self.ttl_s + self.interval_s
        while True:
            async with self._lock:
                taken = await self.store.claim_shards(
                    self.id, count, ttl_s=self.ttl_s, decide=lambda view: pinned, pinned=True
                )
            missing = sorted(set(pinned) - set(taken))
            if not missing or asyncio.get_running_loop().time() > deadline:
                break
            log.info("shard(s) %s are still leased; waiting for the lease to expire", missing)
            await asyncio.sleep(self.interval_s)
        if missing:
            await self.store.release(self.id, [shard_lease(s) for s in taken])
            raise ConfigError(
                f"COTERIE_SHARD_IDS names shard(s) {', '.join(map(str, missing))} of "
                f"{count}, which another running coterie serves: pin each shard to one "
                "process (coterie status shows who serves what)"
            )

    def attach(self, host: ShardHost) -> None:
        """The client is connected with its first shards: balance from now on."""
        self._host = host

    async def _follow_shards(self, host: ShardHost, held: frozenset[str]) -> None:
        count = self.shard_count or 0
        leased = {s for s in map(shard_of_lease, held) if s is not None}
        # A shard whose lease another instance took (this one stalled): let it go now.
        for shard in sorted(host.served_shards - leased):
            log.warning("shard %d was taken over by another instance; disconnecting", shard)
            await host.remove_shard(shard)
        view = await self.store.shard_view(self.id, count)
        released = to_release(view)
        for shard in released:
            log.info("handing shard %d over to another instance", shard)
            await host.remove_shard(shard)  # disconnected before it is free: never two
        if released:
            await self.store.release(self.id, [shard_lease(s) for s in released])
            await self._say("shards")
            return  # the others take them; claim nothing in the same beat
        claimed = await self.store.claim_shards(self.id, count, ttl_s=self.ttl_s, decide=to_claim)
        for shard in sorted(claimed):
            log.info("took shard %d of %d", shard, count)
            await host.add_shard(shard)
        # A shard leased here but not served (a connection that failed to start).
        for shard in sorted(leased - host.served_shards - set(claimed)):
            await host.add_shard(shard)

    async def hand_over(self) -> bool:
        """On a drain: when another bot instance is alive, disconnect every shard and
        release it so that instance takes it now (the runs in flight here still finish
        over REST). False, and nothing done, when this is the only one."""
        host = self._host
        if host is None or not self.claims or not self.shard_count or self._handed_over:
            return False
        async with self._lock:
            if not await self.store.retire(self.id):
                return False  # the last one: it keeps its shards through the drain
            self._handed_over = True
            shards = sorted(host.served_shards)
            for shard in shards:
                await host.remove_shard(shard)  # disconnected before they are free
            await self.store.release(self.id, [shard_lease(s) for s in range(self.shard_count)])
            await self._say("shards")
            log.info("handed %d shard(s) over to the other instances", len(shards))
            return True

    async def _say(self, topic: str) -> None:
        if self.publish is None:
            return
        try:
            await self.publish(topic)
        except Exception:
            log.warning("could not tell the other instances (%s)", topic, exc_info=True)
