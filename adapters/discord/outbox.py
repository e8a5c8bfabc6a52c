"""Discord's rate limits, from coterie's side: one request at a time per bucket, the
most urgent first, its content read when its turn comes.

discord.py queues the requests of one rate-limit bucket (a channel's webhook, a
channel's messages) behind a lock, first come first served, and holds that lock while
the bucket is spent. Under a 300-mention load every answer's edits and every waiting
request's placeholder went into that queue as they came; the first words of an answer
waited behind all of them, and so did the runs holding lane slots until their last
edit got through, so the line grew (a member's first words: 30 s at p95). So every
delivery asks a :class:`Pacer` for its turn before each request instead:

* the pacer lets one request of its bucket go at a time, so discord.py's own queue
  stays empty and the order is ours;
* the order is by :class:`Urgency` when a turn frees, not when it was asked for
  (a member's first sight of an answer, then answers' last words, then words so
  far; ties first come first served);
* the asker renders its message when the turn comes, not when it asked: an answer
  whose run ended while it waited goes out whole in one request, and a run's words
  so far that waited are replaced by newer ones rather than queued behind them.

Rate limits themselves (how many per window, the wait when spent, the 429s) stay
discord.py's to honour: the pacer never sends more, it only decides what goes next.

:class:`Outbox` is the one set of pacers and queue boards every delivery of the
process shares (the chat flow's and the scheduler's alike), owned by
:class:`~adapters.discord.webhooks.Webhooks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import aiohttp
import discord

from executor.ports import Clock, RealClock

if TYPE_CHECKING:
    from adapters.discord.streaming import MessageSink

__all__ = ["BOARD_LISTED", "BOARD_PREFIX", "Outbox", "Pacer", "QueueBoard", "Urgency", "is_board"]

log = logging.getLogger(__name__)

#: How many requests a queue board names; the rest are counted.
BOARD_LISTED = 20
#: How a queue board begins (history leaves the bot's boards out of a conversation).
BOARD_PREFIX = "-# waiting in line: "


def is_board(content: str) -> bool:
    """Whether a message of the bot's is a queue board."""
    return content.startswith(BOARD_PREFIX)


def _retrieved(task: asyncio.Task[Any]) -> None:
    """The board's task is awaited by nobody: an error that got out of it is logged
    here, not by asyncio at garbage collection."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("the queue board's task ended on an error", exc_info=exc)


class Urgency(IntEnum):
    """Which request of a bucket goes first (higher first)."""

    QUEUE = 0  # who waits in line (the queue board)
    UPDATE = 1  # an answer's words so far, a status line
    FINAL = 2  # an answer's last state, its run over
    FIRST = 3  # a member's first sight of an answer


class _Turn:
    __slots__ = ("future", "seq", "urgency")

    def __init__(self, urgency: Callable[[], int], seq: int, future: asyncio.Future[None]):
        self.urgency = urgency
        self.seq = seq
        self.future = future


class Pacer:
    """The requests of one rate-limit bucket, one at a time, the most urgent first.

    ``urgency`` is asked when a turn frees, so a waiter whose state moved on (its run
    ended, its first words came) is ranked by what it would send now.
    """

    def __init__(self) -> None:
        self._busy = False
        self._waiting: list[_Turn] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @contextlib.asynccontextmanager
    async def turn(self, urgency: Callable[[], int]) -> AsyncIterator[None]:
        """Hold the bucket for one request (and its answer)."""
        await self._acquire(urgency)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, urgency: Callable[[], int]) -> None:
        if not self._busy and not self._waiting:
            self._busy = True
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        turn = _Turn(urgency, next(self._seq), future)
        self._waiting.append(turn)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # granted in the same breath as the cancel: pass it on
            elif turn in self._waiting:
                self._waiting.remove(turn)
            raise

    def _release(self) -> None:
        self._busy = False
        while self._waiting:
            turn = max(self._waiting, key=lambda t: (t.urgency(), -t.seq))
            self._waiting.remove(turn)
            if turn.future.done():
                # Why skip it: its task was cancelled (which cancels the future at once)
                # and has not run yet to leave the line. Granting it the turn would
                # leave the bucket busy with nobody to release it.
                continue
            self._busy = True
            turn.future.set_result(None)
            return


class Outbox:
    """Every delivery's shared state per Discord bucket and channel: a :class:`Pacer`
    per rate-limit bucket (made on first use) and a queue board per channel.

    ``board_after``: how long a channel's queue must have been waiting before its board
    is posted (a wait shorter than that shows nothing but the answer); ``board_every``:
    at most one edit of a board per this many seconds."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        board_after: float = 2.0,
        board_every: float = 5.0,
    ) -> None:
        self.clock: Clock = clock if clock is not None else RealClock()
        self.board_after = board_after
        self.board_every = board_every
        self._pacers: dict[str, Pacer] = {}
        self._boards: dict[str, QueueBoard] = {}

    def pacer(self, bucket: str) -> Pacer:
        pacer = self._pacers.get(bucket)
        if pacer is None:
            pacer = self._pacers[bucket] = Pacer()
        return pacer

    def board(self, sink: MessageSink) -> QueueBoard:
        """The queue board of the channel ``sink`` posts in (the bot's own messages)."""
        board = self._boards.get(sink.bucket)
        if board is None:
            board = self._boards[sink.bucket] = QueueBoard(
                sink,
                self.pacer(sink.bucket),
                clock=self.clock,
                after=self.board_after,
                every=self.board_every,
            )
        return board


class QueueBoard:
    """Who waits in line in one channel: one message of the bot's, for every request
    waiting there, instead of a placeholder per request.

    ``-# waiting in line: 3. @alice · 7. @bob · 12. @alice (and 4 more)``: each
    request's place in the whole line (every channel's requests share the lanes),
    the member shown as a mention that pings nobody. Posted once the line here has
    been waiting ``after`` seconds, edited at most once per ``every`` seconds (the
    latest places win), taken down as soon as nobody here waits. Its requests go
    through the channel's :class:`Pacer` with the lowest urgency, so an answer in the
    same bucket always goes first.

    A failed post or edit is tried again ``every`` seconds later; the board is a
    courtesy, and nothing waits on it.
    """

    def __init__(
        self, sink: MessageSink, pacer: Pacer, *, clock: Clock, after: float, every: float
    ) -> None:
        self.sink = sink
        self.pacer = pacer
        self.clock = clock
        self.after = after
        self.every = every
        self._places: dict[object, tuple[int, int]] = {}  # ticket -> (member id, place)
        self._since: float | None = None  # when the line here last stopped being empty
        self._handle: Any = None
        self._shown: str | None = None
        self._pushed_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake_at: float | None = None  # when a sleeping task looks again

    @property
    def waiting(self) -> int:
        return len(self._places)

    @property
    def shown(self) -> str | None:
        """The board as Discord shows it now (None: no board)."""
        return self._shown

    def place(self, ticket: object, member_id: int, position: int) -> None:
        """Request ``ticket`` of ``member_id`` is ``position``-th in line (0: it left
        the line: it started, or was refused)."""
        if position > 0:
            if not self._places:
                self._since = self.clock.monotonic()
            self._places[ticket] = (member_id, position)
        elif self._places.pop(ticket, None) is None:
            return
        self._kick()

    def render(self) -> str | None:
        if not self._places:
            return None
        items = sorted((place, member) for member, place in self._places.values())
        listed = " · ".join(f"{place}. <@{member}>" for place, member in items[:BOARD_LISTED])
        more = len(items) - BOARD_LISTED
        return BOARD_PREFIX + listed + (f" (and {more} more)" if more > 0 else "")

    def _due(self) -> float:
        now = self.clock.monotonic()
        if not self._places:
            return now  # take it down at once
        due = (self._since if self._since is not None else now) + self.after
        if self._pushed_at is not None:
            due = max(due, self._pushed_at + self.every)
        return due

    def _kick(self) -> None:
        task = self._task
        if task is not None and not task.done():
            wake = self._wake_at
            if wake is None or self._due() >= wake:
                return  # it will look again
            task.cancel()  # asleep until later than this change is due
        self._task = asyncio.create_task(self._run(), name="queue-board")
        self._task.add_done_callback(_retrieved)

    async def _run(self) -> None:
        while self.render() != self._shown:
            wait = self._due() - self.clock.monotonic()
            if wait > 0:
                self._wake_at = self.clock.monotonic() + wait
                try:
                    await self.clock.sleep(wait)
                finally:
                    self._wake_at = None
                continue
            async with self.pacer.turn(lambda: Urgency.QUEUE):
                content = self.render()  # the places as they are now
                if content == self._shown:
                    return
                try:
                    await self._show(content)
                except (
                    discord.HTTPException,
                    discord.RateLimited,
                    aiohttp.ClientError,
                    OSError,
                ) as exc:
                    log.info("could not update the queue board (will try again): %s", exc)
                    if isinstance(exc, discord.NotFound):
                        self._handle, self._shown = None, None  # deleted: post a new one
                except Exception:
                    # Why any: nobody awaits this task; an error it let out would stop
                    # the board for good and surface only as "Task exception was never
                    # retrieved".
                    log.warning("could not update the queue board (will try again)", exc_info=True)
                finally:
                    self._pushed_at = self.clock.monotonic()

    async def _show(self, content: str | None) -> None:
        if content is None:
            handle, self._handle = self._handle, None
            self._shown = None
            if handle is not None:
                await self.sink.delete(handle)
        elif self._handle is None:
            self._handle = await self.sink.send(content)
            self._shown = content
        else:
            self._handle = await self.sink.edit(self._handle, content)
            self._shown = content
