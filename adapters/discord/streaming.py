"""Streaming a run's answer: :class:`StreamingDelivery`, the state machine.

It implements :class:`executor.ports.Delivery` against a small :class:`MessageSink`
(send / edit / delete / typing) and owns the timing, on an injected clock:

* the first words go out as soon as they exist (a queue placeholder or a status line
  shown before them does not start the throttle); later text edits at most one per
  ``interval`` seconds after the last text edit;
* the typing indicator until the first words, a short status line while tools run,
  a note at the end when the run was not a plain success;
* a queued request has no message of its own: its place goes to the channel's queue
  board (``show_place``, see :class:`~adapters.discord.outbox.QueueBoard`), one
  message for everyone waiting there (a placeholder per request, each edited as the
  line moved, was most of what a 300-run queue sent).

Every request waits for its turn in the sink's bucket
(:class:`~adapters.discord.outbox.Pacer`), ranked by what it would show: the first
words of an answer first, then an answer's last state, then words so far. What is
sent is rendered when the turn comes, so an answer that waited goes out as it is
then (its run over: whole, in one request).

A send or edit that fails on a transient error (connection reset, server
disconnected, timeout) is tried again after 0.5, 1 and 2 s (the bucket is free for
others meanwhile); an edit that still fails (or whose message is gone) posts the
text as a new message instead. A failure between pushes never kills anything: the
next push, and at the latest ``finish``, tries again, and ``finish`` returns a
:class:`~executor.agent.DeliveryReport` saying whether the final answer reached
Discord (the run loop records it in the audit).

Past 2,000 characters it continues in a new message, split by
:func:`~adapters.discord.split.split_message`. It makes no discord.py call itself
(the sinks in :mod:`adapters.discord.sinks` do), so it is tested with a fake sink
and a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

import aiohttp
import discord

from adapters.discord.budget_text import budget_exhausted, budget_refusal, cost_footer
from adapters.discord.outbox import Pacer, Urgency
from adapters.discord.split import DISCORD_LIMIT, split_message
from executor.agent import DeliveryReport, RunResult, RunStatus
from executor.errors import BudgetDetails
from executor.ports import ApprovalDecision, ApprovalRequest, Clock, RealClock

__all__ = [
    "DELIVERY_ERRORS",
    "RETRY_DELAYS",
    "TRANSIENT_ERRORS",
    "ApprovalAsker",
    "MessageSink",
    "StreamingDelivery",
    "describe_error",
]

log = logging.getLogger(__name__)

#: Failures worth trying again: the request may not have reached Discord, or its
#: answer was lost on the way back. (discord.py itself retries a connection reset
#: only for the BSD and Windows error numbers, never Linux's, and never a server that
#: hung up.)
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    aiohttp.ClientConnectionError,  # reset, server disconnected, cannot connect
    aiohttp.ClientPayloadError,  # the answer was cut off
    ConnectionError,
    TimeoutError,
    discord.RateLimited,  # a rate limit longer than the client agrees to wait
)
#: Everything a send or edit may fail with that is Discord's or the network's doing.
DELIVERY_ERRORS: tuple[type[Exception], ...] = (discord.HTTPException, *TRANSIENT_ERRORS)

#: Waits between the tries of one send or edit (4 tries in all).
RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0)


def describe_error(exc: BaseException) -> str:
    """One short line for the log and the audit (no traceback, no request body)."""
    if isinstance(exc, discord.HTTPException):
        text = f"HTTP {exc.status}" + (f" ({exc.text})" if exc.text else "")
    else:
        text = type(exc).__name__ + (f": {exc}" if str(exc) else "")
    return text[:200]


def _retrieved(task: asyncio.Task[Any]) -> None:
    """A background task's end, seen: an exception that got out of it is logged here
    rather than by asyncio at garbage collection ("Task exception was never retrieved",
    34-69 a run under load once), whether or not anyone awaits the task later."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s ended on an error: %s", task.get_name(), describe_error(exc), exc_info=exc)


@runtime_checkable
class MessageSink(Protocol):
    """Where :class:`StreamingDelivery` puts messages. ``prefix`` heads the first one."""

    @property
    def prefix(self) -> str: ...

    @property
    def bucket(self) -> str:
        """The Discord rate-limit bucket its requests go to now (a webhook, a channel):
        deliveries with the same bucket take turns (:class:`Pacer`)."""
        ...

    async def send(self, content: str, *, nonce: int | None = None) -> Any:
        """Post a new message. ``nonce`` is the same on every try of one message, so
        Discord can refuse a duplicate when a try whose answer was lost did land."""
        ...

    async def edit(self, handle: Any, content: str) -> Any:
        """Edit a sent message; returns its (possibly new) handle."""
        ...

    async def delete(self, handle: Any) -> None: ...

    async def typing(self) -> None: ...

    async def ready(self) -> None:
        """Wait for what the sink needs before its first request (a channel's webhook
        being looked up); ``prefix`` and ``bucket`` hold from then on."""
        ...


ApprovalAsker = Callable[[ApprovalRequest], Awaitable[ApprovalDecision]]
#: A request's place in line for the member to see (0: it left the line).
PlaceShower = Callable[[int], None]
#: The pacer of a bucket (see :class:`~adapters.discord.outbox.Outbox`).
PacerFor = Callable[[str], Pacer]


class _Op:
    """One request that brings Discord closer to :meth:`StreamingDelivery.render`."""

    __slots__ = ("body", "content", "index", "kind", "nonce")

    def __init__(self, kind: str, index: int, content: str, body: str) -> None:
        self.kind = kind  # "send", "edit", "repost" (an edit that failed), "delete"
        self.index = index
        self.content = content
        self.body = body  # the answer's text it was rendered from
        # A post's, the same on every try (Discord returns the first message when a
        # try whose answer was lost did land).
        self.nonce = secrets.randbits(62) if kind in ("send", "repost") else None


class StreamingDelivery:
    """Streams a run into a :class:`MessageSink` with throttled edits.

    ``interval``: at most one text edit per this many seconds after the first words;
    ``typing_every``: how often the typing indicator is renewed (Discord shows it for
    about 10 s) until the first words; ``retry_delays``: the waits between tries of a
    failing send or edit; ``pacers``: the pacer of a bucket, shared with the other
    deliveries of the process (None: this delivery's requests take turns among
    themselves only); ``show_place``: where a place in line goes (None: not shown).
    """

    def __init__(
        self,
        sink: MessageSink,
        *,
        clock: Clock | None = None,
        interval: float = 1.0,
        typing_every: float = 8.0,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
        limit: int = DISCORD_LIMIT,
        ask_approval: ApprovalAsker | None = None,
        pacers: PacerFor | None = None,
        show_place: PlaceShower | None = None,
    ) -> None:
        self.sink = sink
        self.clock: Clock = clock if clock is not None else RealClock()
        self.interval = interval
        self.typing_every = typing_every
        self.retry_delays = retry_delays
        if pacers is None:
            own = Pacer()
            pacers = lambda _bucket: own  # noqa: E731
        self._pacers: PacerFor = pacers
        self._show_place = show_place
        self.limit = limit
        self._asker = ask_approval
        self.body = ""
        self.status_line: str | None = None
        self.notes: list[str] = []
        self.handles: list[Any] = []
        self.sent: list[str] = []
        self.result: RunResult | None = None
        #: What ``finish`` reported (None until then).
        self.report: DeliveryReport | None = None
        self.finished = asyncio.Event()
        self._dirty = asyncio.Event()
        self._last_push: float | None = None  # any push
        self._text_at: float | None = None  # the last push that changed the text
        self._body_shown = ""  # the text as last pushed
        self._status_due = 0.0  # a status-only push waits until then
        self._in_line = False  # a place in line was shown and not taken back
        self._lost: set[int] = set()  # messages whose edit failed: post them anew
        self._retrying: _Op | None = None  # a post that failed in transit: tried as it was
        self._flusher: asyncio.Task[None] | None = None
        self._wake_at: float | None = None  # when a parked flusher will push
        self._typer: asyncio.Task[None] | None = None
        self._pushing = False  # a request is on its way (never cancel it)
        self._closed = False
        self._push_lock = asyncio.Lock()
        #: End the answer with its cost, model and time (the guild's cost footer).
        self.cost_footer = False
        self._started_at: float | None = None

    # --- Delivery ------------------------------------------------------------------

    async def start(self) -> None:
        if self._started_at is None:
            self._started_at = self.clock.monotonic()
        self._leave_line()
        if not self.handles and self._typer is None:
            self._typer = asyncio.create_task(self._type(), name="delivery-typing")
            self._typer.add_done_callback(_retrieved)

    async def text(self, delta: str) -> None:
        if not delta:
            return
        self.body += delta
        self.status_line = None
        self._stop_typing()
        self._kick()

    async def reset(self) -> None:
        self.body = ""
        self._kick()

    async def status(self, line: str) -> None:
        self.status_line = line[:120]
        self._status_due = self.clock.monotonic()
        self._kick()

    async def finish(self, result: RunResult) -> DeliveryReport:
        self.result = result
        self._closed = True
        self._stop_typing()
        self._leave_line()
        await self._stop_flusher()
        self.status_line = None
        note = result.note
        budget = result.details.get("budget")
        if result.status is RunStatus.BUDGET_DENIED and isinstance(budget, BudgetDetails):
            note = budget_refusal(budget)  # Why: says how to ask an admin for more
        elif result.status is RunStatus.BUDGET_EXHAUSTED and isinstance(budget, BudgetDetails):
            note = budget_exhausted(result.error or "your budget ran out", budget)
        if note and note not in self.notes:
            self.notes.append(note)
        if not self.body.strip() and not self.notes:
            self.notes.append("(no answer)")
        if self.cost_footer and result.model:
            seconds = (
                self.clock.monotonic() - self._started_at if self._started_at is not None else None
            )
            self.notes.append(cost_footer(result.cost_micros, result.model, seconds))
        try:
            await self._push()
        except DELIVERY_ERRORS as exc:
            log.warning("run %s: the answer did not reach Discord: %s", result.run_id, exc)
            self.report = DeliveryReport(delivered=False, error=describe_error(exc))
        else:
            self.report = DeliveryReport(delivered=True)
        finally:
            self.finished.set()
        return self.report

    # --- extras used by the chat service -------------------------------------------

    def show_cost_footer(self) -> None:
        """End the answer with ``-# $cost · model · seconds`` (the chat flow asks)."""
        self.cost_footer = True

    def note(self, line: str) -> None:
        """A line shown at the end of the answer (e.g. "history was cut")."""
        if line not in self.notes:
            self.notes.append(line)

    async def queued(self, position: int) -> None:
        """The member's request waits in their lane; ``position`` 0 means it started.
        The place goes to ``show_place`` (the channel's queue board)."""
        if position <= 0:
            self._leave_line()
        elif self._show_place is not None and not self._closed:
            self._in_line = True
            self._show_place(position)

    async def ask_approval(self, request: ApprovalRequest) -> ApprovalDecision:
        if self._asker is None:
            return ApprovalDecision(approved=False, reason="nobody can be asked here")
        # Show what has been written so far before the question.
        await self._stop_flusher()
        try:
            await self._push()
        except DELIVERY_ERRORS as exc:
            log.warning("could not show the answer so far before asking: %s", exc)
        return await self._asker(request)

    @property
    def text_so_far(self) -> str:
        return self.body

    # --- internals -------------------------------------------------------------------

    def _leave_line(self) -> None:
        if self._in_line and self._show_place is not None:
            self._in_line = False
            self._show_place(0)

    def _urgency(self) -> int:
        """How urgent this delivery's next request is, asked when a turn frees."""
        if self._text_at is None and (self.body.strip() or self.result is not None):
            return Urgency.FIRST  # the member has seen nothing of the answer yet
        if self.result is not None:
            return Urgency.FINAL
        return Urgency.UPDATE

    def _due(self) -> float:
        """When the next push may go, given what changed since the last one."""
        if self.body != self._body_shown:
            if self._text_at is None:
                return self.clock.monotonic()  # the first words: at once
            return self._text_at + self.interval
        due = self._status_due
        if self._last_push is not None:
            due = max(due, self._last_push + self.interval)
        return due

    def _kick(self) -> None:
        if self._closed:
            return
        self._dirty.set()
        task = self._flusher
        if task is not None and not task.done():
            wake = self._wake_at
            if wake is None or self._pushing or self._due() >= wake:
                return  # it will see the change
            # Parked until later than this change is due (the first words after a
            # placeholder): start over rather than wait.
            task.cancel()
        self._flusher = asyncio.create_task(self._flush_loop(), name="delivery-flush")
        self._flusher.add_done_callback(_retrieved)

    async def _flush_loop(self) -> None:
        while not self._closed:
            await self._dirty.wait()
            self._dirty.clear()
            wait = self._due() - self.clock.monotonic()
            if wait > 0:
                self._wake_at = self.clock.monotonic() + wait
                try:
                    await self.clock.sleep(wait)
                finally:
                    self._wake_at = None
            if self._closed:
                return
            try:
                await self._push()
            except DELIVERY_ERRORS as exc:
                # Why not raise: nobody awaits this task; the next change, and at the
                # latest finish(), pushes again (and finish reports what reached Discord).
                log.info("could not update the answer (will try again): %s", exc)
            except Exception as exc:
                # Why not only Discord's errors: anything else (discord.py's "Session is
                # closed" once the client closed, a bug) would end this task with nobody
                # to see it ("Task exception was never retrieved") and the answer's
                # updates with it; finish() still pushes, and reports what it raises.
                log.warning(
                    "could not update the answer (will try again): %s",
                    describe_error(exc),
                    exc_info=True,
                )

    async def _stop_flusher(self) -> None:
        task, self._flusher = self._flusher, None
        if task is None:
            return
        if not task.done() and not self._pushing:
            # Parked (throttle sleep or waiting for text): nothing is in flight.
            task.cancel()
        # Why not cancel a push: a cancelled request may still land, duplicating a message.
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # our own caller is being cancelled
        except Exception:
            log.exception("the delivery's flusher failed")

    def _stop_typing(self) -> None:
        if self._typer is not None:
            self._typer.cancel()
            self._typer = None

    async def _type(self) -> None:
        while True:
            try:
                await self.sink.typing()
            except Exception:  # Why any: a courtesy, and nobody awaits this task
                log.debug("typing indicator failed", exc_info=True)
            await self.clock.sleep(self.typing_every)

    def render(self) -> list[str]:
        """The messages as they should read now."""
        text = self.body.rstrip()
        tail: list[str] = []
        if self.status_line:
            tail.append(f"-# {self.status_line}")
        tail.extend(f"-# {n}" for n in self.notes)
        if tail:
            text = f"{text}\n\n" + "\n".join(tail) if text else "\n".join(tail)
        if not text:
            text = "…"
        prefix = self.sink.prefix
        chunks = split_message(text, self.limit - len(prefix))
        chunks[0] = prefix + chunks[0]
        return chunks

    async def _push(self) -> None:
        """Bring Discord to :meth:`render`, one request per turn of the sink's bucket,
        each rendered when its turn comes."""
        async with self._push_lock:
            await self.sink.ready()
            failures = 0
            while self._next_op() is not None:
                delay: float | None = None
                async with self._pacers(self.sink.bucket).turn(self._urgency):
                    op = self._next_op()  # what is to be shown now
                    if op is None:
                        return
                    self._pushing = True
                    self._retrying = None
                    try:
                        await self._do(op)
                    except TRANSIENT_ERRORS as exc:
                        if op.nonce is not None:
                            self._retrying = op
                        failures += 1
                        if failures <= len(self.retry_delays):
                            delay = self.retry_delays[failures - 1]
                            log.info(
                                "%s failed (%s); try %d of %d in %gs",
                                op.kind,
                                describe_error(exc),
                                failures + 1,
                                len(self.retry_delays) + 1,
                                delay,
                            )
                        elif not self._repost_instead(op, exc):
                            raise
                        else:
                            failures = 0
                    except DELIVERY_ERRORS as exc:
                        if not self._repost_instead(op, exc):
                            raise
                        failures = 0
                    else:
                        failures = 0
                        self._pushed(op)
                    finally:
                        self._pushing = False
                if delay is not None:
                    # Why outside the turn: the bucket is others' while this one waits.
                    await self.clock.sleep(delay)

    def _next_op(self) -> _Op | None:
        """The next request that brings Discord closer to :meth:`render` (None: it
        shows that already, or there is nothing to say yet)."""
        if self._retrying is not None:
            return self._retrying
        body = self.body
        if not self.handles and not (body.strip() or self.status_line or self.notes):
            return None  # nothing to say yet: no bare "…" placeholder
        chunks = self.render()
        for i, content in enumerate(chunks):
            if i >= len(self.handles):
                return _Op("send", i, content, body)
            if i in self._lost:
                return _Op("repost", i, content, body)
            if self.sent[i] != content:
                return _Op("edit", i, content, body)
        if len(self.handles) > len(chunks):
            # A failover reset shortened the answer.
            return _Op("delete", len(self.handles) - 1, "", body)
        return None

    async def _do(self, op: _Op) -> None:
        if op.kind == "delete":
            handle = self.handles.pop()
            self.sent.pop()
            self._lost.discard(op.index)
            try:
                await self.sink.delete(handle)
            except DELIVERY_ERRORS as exc:
                log.info("could not delete a message left over by a reset: %s", exc)
            return
        if op.kind == "edit":
            self.handles[op.index] = await self.sink.edit(self.handles[op.index], op.content)
            self.sent[op.index] = op.content
            return
        self._stop_typing()
        handle = await self.sink.send(op.content, nonce=op.nonce)
        if op.kind == "repost":
            self.handles[op.index] = handle
            self.sent[op.index] = op.content
            self._lost.discard(op.index)
        else:
            self.handles.append(handle)
            self.sent.append(op.content)

    def _repost_instead(self, op: _Op, exc: Exception) -> bool:
        """An edit that keeps failing (or whose message is gone) posts the text anew."""
        if op.kind != "edit" or isinstance(exc, discord.Forbidden):
            return False  # a post, or a new message that would be refused the same way
        log.warning("editing a message failed (%s); posting the text anew", describe_error(exc))
        self._lost.add(op.index)
        return True

    def _pushed(self, op: _Op) -> None:
        now = self.clock.monotonic()
        self._last_push = now
        if op.body.strip() and op.body != self._body_shown:
            self._body_shown = op.body
            self._text_at = now
