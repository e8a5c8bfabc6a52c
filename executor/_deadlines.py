"""Time limits that share loop timers: the run's ``max_runtime_s`` and each tool
call's ``timeout_s``.

A limit armed with ``loop.call_at`` is a timer handle in the event loop's heap per
run or call; nearly every run and call ends long before its limit, and its cancelled
handle then stays in the heap until the loop sweeps it (asyncio sweeps once half the
heap is cancelled), so 200 runs at once push hundreds of dead entries past every
other timer. Here the limits falling in the same tick (1/64 of the limit: under 5 s
of a 300 s limit, 0.5 s of a 30 s tool timeout) share one timer, never cancelled: a
limit fires at most a tick late, and one length of limit keeps at most about 65
timers in the loop however many runs and calls start.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

__all__ = ["Deadlines", "Expiry", "Group"]

#: The callbacks of one tick, each with its arguments.
Group = dict[Callable[..., Any], tuple[Any, ...]]


class Deadlines:
    """The limits of one owner (an executor) on one event loop, grouped by tick."""

    __slots__ = ("_due", "_loop")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due: dict[float, Group] = {}

    def add(self, seconds: float, callback: Callable[..., Any], *args: Any) -> Group:
        """Call ``callback(*args)`` in ``seconds`` (at most a tick late), unless the
        returned group has lost it by then: ``group.pop(callback, None)`` when done.
        ``callback`` must be a new object for each limit (a bound method or closure)."""
        loop = asyncio.get_running_loop()
        due = self._due
        if loop is not self._loop:
            # Why a new table: an owner may outlive a loop (tests, a restarted host),
            # and each table holds one loop's groups (its timers fire from that table).
            self._loop, self._due = loop, {}
            due = self._due
        at = loop.time() + seconds
        if 0 < seconds < math.inf:
            tick = seconds / 64
            at = math.ceil(at / tick) * tick
        group = due.get(at)
        if group is None:
            group = due[at] = {}
            loop.call_at(at, _fire, due, at)
        group[callback] = args
        return group


def _fire(due: dict[float, Group], at: float) -> None:
    group = due.pop(at, None)
    if group:
        for callback, args in list(group.items()):
            callback(*args)


class Expiry:
    """One tool call's timeout on shared timers, as ``asyncio.timeout`` does it: on
    expiry the task is cancelled, and the cancellation it caused (and only that one)
    becomes a timeout. Made just before the awaited call; ``end()`` just after it,
    however it ended (in a ``finally``)."""

    __slots__ = ("_cancelling", "_group", "_task", "expired")

    def __init__(self, deadlines: Deadlines, seconds: float) -> None:
        task = asyncio.current_task()
        assert task is not None, "a time limit needs a task"
        self._task = task
        self._cancelling = task.cancelling()
        self.expired = False
        self._group = deadlines.add(seconds, self._expire)

    def _expire(self) -> None:
        self.expired = True
        self._task.cancel()

    def end(self) -> bool:
        """Stop watching; True when the limit passed and the cancellation it caused is
        the only one on the task (the caller then reports a timeout, not a cancel)."""
        self._group.pop(self._expire, None)
        if not self.expired:
            return False
        return self._task.uncancel() <= self._cancelling
