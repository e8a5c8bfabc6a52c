"""Fair-share lanes: a bounded pool of run slots.

::

    lanes = Lanes(slots=4)
    async with lanes.slot(member_id, on_position=show) as held:  # show(3): "3rd"; show(0): started
        result = await executor.run(agent, invocation)   # may call held.release() when its
                                                         # own work is done, before it returns

Queued work is served fairly across keys (the Discord member): the next free
slot goes to the queued key holding the fewest slots, ties broken round-robin
(the key that has waited longest for its turn), not to the oldest request, so
a member with 50 requests in the queue delays another
member's single request by at most about one run. ``on_position`` is called
when a request is queued, whenever its place changes, and with 0 when it
starts. Places are worked out once per turn of the event loop, however many
requests were queued, started or cancelled in it (the callbacks see the latest
place, not every step to it). Cancelling a queued request removes it cleanly.

A holder may give its slot back before its block ends (:meth:`Held.release`): a run
whose model work is over but whose answer is still on its way to Discord lets the
next request start instead of waiting on the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

__all__ = ["Held", "Lanes", "PositionCallback"]

PositionCallback = Callable[[int], Any]  # may return an awaitable

log = logging.getLogger(__name__)


class _Waiter:
    __slots__ = ("future", "key", "on_position", "position")

    def __init__(
        self, key: str, future: asyncio.Future[None], on_position: PositionCallback | None
    ):
        self.key = key
        self.future = future
        self.on_position = on_position
        self.position = 0


class Held:
    """A slot held by ``key``. :meth:`release` gives it back early; leaving the
    :meth:`Lanes.slot` block gives it back if that has not happened yet."""

    __slots__ = ("_lanes", "key", "released")

    def __init__(self, lanes: Lanes, key: str) -> None:
        self._lanes = lanes
        self.key = key
        self.released = False

    def release(self) -> None:
        """Give the slot to the next request now (idempotent)."""
        if not self.released:
            self.released = True
            self._lanes.release(self.key)


class Lanes:
    """``slots`` concurrent runs; queued runs served round-robin by key."""

    def __init__(self, slots: int = 4) -> None:
        if slots < 1:
            raise ValueError("Lanes needs at least one slot")
        self.slots = slots
        self.running = 0
        self.running_by_key: dict[str, int] = {}
        # key -> its queued waiters; the order of keys is the round-robin order.
        self._queues: OrderedDict[str, deque[_Waiter]] = OrderedDict()
        self._callbacks: set[asyncio.Future[Any]] = set()
        self._positions_soon: asyncio.Handle | None = None

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def queued_for(self, key: str) -> int:
        q = self._queues.get(key)
        return len(q) if q else 0

    @contextlib.asynccontextmanager
    async def slot(
        self, key: str, *, on_position: PositionCallback | None = None
    ) -> AsyncIterator[Held]:
        """Hold one slot for the block (or until ``held.release()``); wait fairly for
        it first."""
        await self.acquire(key, on_position=on_position)
        held = Held(self, key)
        try:
            yield held
        finally:
            held.release()

    async def acquire(self, key: str, *, on_position: PositionCallback | None = None) -> None:
        if self.running < self.slots and not self._queues:
            self._grant_to(key)
            self._tell(on_position, 0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(key, fut, on_position)
        self._queues.setdefault(key, deque()).append(waiter)
        self._positions()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # Granted in the same breath as the cancel: hand the slot on.
                self.release(key)
            else:
                self._remove(waiter)
            raise

    def release(self, key: str) -> None:
        self.running -= 1
        n = self.running_by_key.get(key, 0) - 1
        if n > 0:
            self.running_by_key[key] = n
        else:
            self.running_by_key.pop(key, None)
        self._dispatch()

    # ------------------------------------------------------------------ internals

    def _grant_to(self, key: str) -> None:
        self.running += 1
        self.running_by_key[key] = self.running_by_key.get(key, 0) + 1

    def _dispatch(self) -> None:
        changed = False
        while self.running < self.slots and self._queues:
            key = self._next_key(self.running_by_key)
            queue = self._queues[key]
            waiter = queue.popleft()
            # Why move the key to the back: the next slot goes to another key first.
            if queue:
                self._queues.move_to_end(key)
            else:
                del self._queues[key]
            if waiter.future.done():  # cancelled; its task is cleaning up
                continue
            self._grant_to(key)
            waiter.future.set_result(None)
            waiter.position = 0
            self._tell(waiter.on_position, 0)
            changed = True
        if changed:
            self._positions()

    def _remove(self, waiter: _Waiter) -> None:
        queue = self._queues.get(waiter.key)
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(waiter)
        if not queue:
            del self._queues[waiter.key]
        self._positions()
        self._dispatch()

    def _next_key(self, running: Mapping[str, int]) -> str:
        # Why fewest-running first: a key already holding slots waits behind one
        # holding none; among equals, the round-robin order decides.
        return min(self._queues, key=lambda k: running.get(k, 0))

    def order(self) -> list[tuple[str, int]]:
        """The queue as it will be served if nothing ends meanwhile:
        (key, index in that key's queue)."""
        out: list[tuple[str, int]] = []
        running = dict(self.running_by_key)
        rr = [(k, len(q)) for k, q in self._queues.items()]
        taken: dict[str, int] = {}
        while rr:
            i = min(range(len(rr)), key=lambda n: running.get(rr[n][0], 0))
            k, left = rr.pop(i)
            out.append((k, taken.get(k, 0)))
            taken[k] = taken.get(k, 0) + 1
            running[k] = running.get(k, 0) + 1
            if left > 1:
                rr.append((k, left - 1))
        return out

    def _positions(self) -> None:
        """Tell the waiters their places, once this turn of the loop is over."""
        if self._positions_soon is None:
            loop = asyncio.get_running_loop()
            self._positions_soon = loop.call_soon(self._positions_now)

    def _positions_now(self) -> None:
        self._positions_soon = None
        if not any(w.on_position for q in self._queues.values() for w in q):
            return
        for place, (key, i) in enumerate(self.order(), start=1):
            w = self._queues[key][i]
            if w.position != place:
                w.position = place
                self._tell(w.on_position, place)

    def _tell(self, callback: PositionCallback | None, position: int) -> None:
        if callback is None:
            return
        out = callback(position)
        if inspect.isawaitable(out):
            task = asyncio.ensure_future(out)
            self._callbacks.add(task)
            task.add_done_callback(self._callback_done)

    def _callback_done(self, task: asyncio.Future[Any]) -> None:
        self._callbacks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Why here: nothing else awaits it, and an unretrieved error is only a
            # warning at garbage collection.
            log.warning("a queue position callback failed", exc_info=exc)
