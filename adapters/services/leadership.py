"""One leader among the processes on a database: the one that runs the scheduler.

The leader holds a named lease (:data:`SCHEDULER_LEASE`) in the ``leases`` table: a
holder, a term (one more at each change of holder) and an expiry, renewed with the
holder's heartbeat (:class:`adapters.services.instances.Membership`, every third of
``ttl_s``). A process that does not lead tries to take the lease on each beat; it can
when the lease is free, expired, or held by an instance that has no row left. So when
the leader dies, another process leads within ``ttl_s`` plus one beat (20 s with the
default 15 s lease); when it stops cleanly it gives the lease up and tells the others
(``NOTIFY``), and one of them leads at once.

On gaining the lead, the process first settles what dead instances left (so their
running slots are orphans), then starts the scheduler, which loads the schedules from
the table and retries or closes the slots a dead leader left ``running``. On losing it
(a beat finds the lease held by another: this process stalled past it), the scheduler
stops firing; slots in progress finish. Two leaders for a moment cannot run one slot
twice: the slot claim (a row unique per schedule and slot) decides, whoever leads.

On SQLite (one process, holding the file's lock) the process always leads; it still
takes the lease, so ``coterie status`` names it.

No SQL here: the leases are a port (:class:`LeaseStore`), the scheduler another
(:class:`Led`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Protocol

__all__ = ["SCHEDULER_LEASE", "Leadership", "LeaseStore", "Led"]

log = logging.getLogger("coterie.leader")

#: The lease of the scheduler's leader (read by ``coterie status``).
SCHEDULER_LEASE: Final = "scheduler"
#: The topic a leader that steps down publishes: the others try to lead now.
TOPIC: Final = "scheduler"


class LeaseStore(Protocol):
    async def take(self, name: str, holder: str, *, ttl_s: float) -> bool:
        """Take the lease if it is free, expired, held by an instance with no row, or
        already ``holder``'s."""
        ...

    async def release(self, holder: str, names: Sequence[str]) -> None: ...


class Led(Protocol):
    """What the leader runs (:class:`skills.scheduler.SkillScheduler`)."""

    @property
    def running(self) -> bool: ...

    async def start(self) -> Any: ...

    def standby(self) -> None: ...

    async def settle_stranded(self) -> Any: ...


class Leadership:
    """This process's part in choosing the scheduler's leader. See the module.

    Driven by :meth:`follow` on each heartbeat (with the leases the beat renewed);
    :meth:`enable` once the process is ready to lead (the Discord client attached);
    :meth:`resign` when it stops.
    """

    def __init__(
        self,
        store: LeaseStore,
        holder: str,
        *,
        ttl_s: float,
        led: Led,
        name: str = SCHEDULER_LEASE,
        always: bool = False,
        before_gain: Callable[[], Awaitable[object]] | None = None,
        publish: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.holder = holder
        self.ttl_s = ttl_s
        self.led = led
        self.name = name
        self.always = always  # SQLite: the only process, so it leads whatever the lease says
        self.before_gain = before_gain  # settle what dead instances left (reap)
        self.publish = publish  # tell the others (NOTIFY), by topic
        self.leader = False
        self.enabled = False
        self._lock = asyncio.Lock()

    async def enable(self) -> None:
        """Lead when possible from now on; try at once."""
        self.enabled = True
        await self.follow(None)

    async def follow(self, held: frozenset[str] | None, *, sweep: bool = False) -> None:
        """One beat: ``held``, the leases the heartbeat just renewed (None: not known).
        Keep, lose or take the lead; while leading and ``sweep``, settle the slots
        instances that died since left running."""
        async with self._lock:
            if not self.enabled:
                return
            lapsed = held is not None and self.name not in held
            if self.leader and lapsed:
                if self.always:
                    await self._take()  # SQLite leads regardless; the lease is for status
                else:
                    self._lose("another process took the scheduler's lease over")
            if not self.leader:
                await self._try_gain()
            elif sweep:
                await self.led.settle_stranded()

    async def _take(self) -> bool:
        try:
            return await self.store.take(self.name, self.holder, ttl_s=self.ttl_s)
        except Exception as exc:
            # Why not raise: the next beat tries again (and SQLite leads anyway).
            log.warning("could not take the scheduler's lease (%s); will try again",
                        type(exc).__name__, exc_info=True)  # fmt: skip
            return False

    async def _try_gain(self) -> None:
        taken = await self._take()
        if not (taken or self.always):
            return
        if self.before_gain is not None and not self.always:
            # Why: an instance whose lease expired with the leader's is removed now,
            # so the slots it left running are orphans the scheduler settles at start.
            await self.before_gain()
        self.leader = True
        log.info("leading the scheduler")
        try:
            if not self.led.running:
                await self.led.start()
        except BaseException:
            self.leader = False
            self.led.standby()
            if not self.always:
                await self._release()
            raise

    def _lose(self, why: str) -> None:
        self.leader = False
        log.warning("no longer leading the scheduler: %s", why)
        self.led.standby()

    def lost(self) -> None:
        """This instance was declared dead: stop firing at once."""
        if self.leader:
            self._lose("this instance's lease expired")

    async def resign(self) -> None:
        """Stop leading for good (the process is stopping; its scheduler is already
        shut down): give the lease up and tell the others, so one leads now."""
        async with self._lock:
            self.enabled = False
            if not self.leader:
                return
            self.leader = False
            if self.always:
                return
            await self._release()
            log.info("gave the scheduler's lead up")
        if self.publish is not None:
            try:
                await self.publish(TOPIC)
            except Exception:
                log.warning("could not tell the others the scheduler is free", exc_info=True)

    async def _release(self) -> None:
        try:
            await self.store.release(self.holder, [self.name])
        except Exception:
            # Why not raise: it expires within ttl_s; another process leads then.
            log.warning("could not give the scheduler's lease up", exc_info=True)
