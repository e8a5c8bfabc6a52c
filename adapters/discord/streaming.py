"""Streaming a run's answer: :class:`StreamingDelivery`, the state machine.

It implements :class:`executor.ports.Delivery` against a small :class:`MessageSink`
(send / edit / delete / typing) and owns the timing: the first token is posted at
once, later edits at most one per ``interval`` seconds (on an injected clock), the
typing indicator until the first token, a short status line while tools run, a note
at the end when the run was not a plain success. Past 2,000 characters it continues
in a new message, split by :func:`~adapters.discord.split.split_message`. It makes
no discord.py call itself (the sinks in :mod:`adapters.discord.sinks` do), so it is
tested with a fake sink and a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

import discord

from adapters.discord.budget_text import budget_exhausted, budget_refusal, cost_footer
from adapters.discord.split import DISCORD_LIMIT, split_message
from executor.agent import RunResult, RunStatus
from executor.errors import BudgetDetails
from executor.ports import ApprovalDecision, ApprovalRequest, Clock, RealClock

__all__ = ["ApprovalAsker", "MessageSink", "StreamingDelivery"]

log = logging.getLogger(__name__)


@runtime_checkable
class MessageSink(Protocol):
    """Where :class:`StreamingDelivery` puts messages. ``prefix`` heads the first one."""

    @property
    def prefix(self) -> str: ...

    async def send(self, content: str) -> Any: ...

    async def edit(self, handle: Any, content: str) -> Any:
        """Edit a sent message; returns its (possibly new) handle."""
        ...

    async def delete(self, handle: Any) -> None: ...

    async def typing(self) -> None: ...


ApprovalAsker = Callable[[ApprovalRequest], Awaitable[ApprovalDecision]]


class StreamingDelivery:
    """Streams a run into a :class:`MessageSink` with throttled edits.

    ``interval``: at most one push (send/edit round) per this many seconds after the
    first; ``typing_every``: how often the typing indicator is renewed (Discord shows
    it for about 10 s) until the first token.
    """

    def __init__(
        self,
        sink: MessageSink,
        *,
        clock: Clock | None = None,
        interval: float = 1.0,
        typing_every: float = 8.0,
        limit: int = DISCORD_LIMIT,
        ask_approval: ApprovalAsker | None = None,
    ) -> None:
        self.sink = sink
        self.clock: Clock = clock if clock is not None else RealClock()
        self.interval = interval
        self.typing_every = typing_every
        self.limit = limit
        self._asker = ask_approval
        self.body = ""
        self.status_line: str | None = None
        self.notes: list[str] = []
        self.handles: list[Any] = []
        self.sent: list[str] = []
        self.result: RunResult | None = None
        self.finished = asyncio.Event()
        self._dirty = asyncio.Event()
        self._last_push: float | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._typer: asyncio.Task[None] | None = None
        self._pushing = False
        self._closed = False
        self._push_lock = asyncio.Lock()
        #: End the answer with its cost, model and time (the guild's cost footer).
        self.cost_footer = False
        self._started_at: float | None = None

    # --- Delivery ------------------------------------------------------------------

    async def start(self) -> None:
        if self._started_at is None:
            self._started_at = self.clock.monotonic()
        if self.status_line is not None and self.status_line.startswith("waiting"):
            # Was queued: say that it started.
            self.status_line = "working…"
            self._kick()
        if not self.handles and self._typer is None:
            self._typer = asyncio.create_task(self._type(), name="delivery-typing")

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
        self._kick()

    async def finish(self, result: RunResult) -> None:
        self.result = result
        self._closed = True
        self._stop_typing()
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
        finally:
            self.finished.set()

    # --- extras used by the chat service -------------------------------------------

    def show_cost_footer(self) -> None:
        """End the answer with ``-# $cost · model · seconds`` (the chat flow asks)."""
        self.cost_footer = True

    def note(self, line: str) -> None:
        """A line shown at the end of the answer (e.g. "history was cut")."""
        if line not in self.notes:
            self.notes.append(line)

    async def queued(self, position: int) -> None:
        """The member's request waits in their lane; ``position`` 0 means it started."""
        if position > 0:
            self.status_line = f"waiting in line (position {position})"
        elif self.status_line is not None and self.status_line.startswith("waiting"):
            self.status_line = "working…"
        self._kick()

    async def ask_approval(self, request: ApprovalRequest) -> ApprovalDecision:
        if self._asker is None:
            return ApprovalDecision(approved=False, reason="nobody can be asked here")
        # Show what has been written so far before the question.
        await self._stop_flusher()
        await self._push()
        return await self._asker(request)

    @property
    def text_so_far(self) -> str:
        return self.body

    # --- internals -------------------------------------------------------------------

    def _kick(self) -> None:
        if self._closed:
            return
        self._dirty.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop(), name="delivery-flush")

    async def _flush_loop(self) -> None:
        while not self._closed:
            await self._dirty.wait()
            self._dirty.clear()
            if self._last_push is not None:
                wait = self._last_push + self.interval - self.clock.monotonic()
                if wait > 0:
                    await self.clock.sleep(wait)
            if self._closed:
                return
            await self._push()

    async def _stop_flusher(self) -> None:
        task, self._flusher = self._flusher, None
        if task is None or task.done():
            return
        if not self._pushing:
            # Parked (throttle sleep or waiting for text): nothing is in flight.
            task.cancel()
        # Why not cancel a push: a cancelled request may still land, duplicating a message.
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _stop_typing(self) -> None:
        if self._typer is not None:
            self._typer.cancel()
            self._typer = None

    async def _type(self) -> None:
        while True:
            try:
                await self.sink.typing()
            except discord.HTTPException:
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
        async with self._push_lock:
            self._pushing = True
            try:
                await self._push_now()
            finally:
                self._pushing = False

    async def _push_now(self) -> None:
        self._stop_typing()
        chunks = self.render()
        for i, content in enumerate(chunks):
            if i < len(self.handles):
                if self.sent[i] != content:
                    self.handles[i] = await self.sink.edit(self.handles[i], content)
                    self.sent[i] = content
            else:
                self.handles.append(await self.sink.send(content))
                self.sent.append(content)
        while len(self.handles) > len(chunks):
            # A failover reset shortened the answer.
            handle = self.handles.pop()
            self.sent.pop()
            await self.sink.delete(handle)
        self._last_push = self.clock.monotonic()
