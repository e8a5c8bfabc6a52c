"""Run checkpoints in SQL (``run_checkpoints``): the executor's
:class:`~executor.ports.Checkpoints` port, and the resume offers on the same rows
(:class:`~adapters.services.resume.ResumeStore`).

What a step costs: one small write. A kept run's first save inserts its row, each
later save rewrites it (the conversation as JSON; each message serialised once), and
a finished call that may not be repeated rewrites its ``done`` list. Writes are group
commits: runs that save while a write is under way share the next transaction (on a
SQLite file one call in the database's writer thread,
:mod:`adapters.storage.sqlite_writer`). ``drop`` writes nothing at once: the row goes
with this store's next write (or at :meth:`SqlCheckpoints.close`); a crash before that
leaves the row of a run that ended, which no offer ever reads (only runs recovery
closed as interrupted are offered) and :meth:`SqlCheckpoints.prune` deletes at start.

``keep`` says which runs are worth a row (the bot: the chat runs a member could be
offered to resume, and a scheduled slot's first attempt, which its retry resumes:
:meth:`SqlCheckpoints.take`); the rest cost nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import pydantic_core
from pydantic import BaseModel, ConfigDict, TypeAdapter
from sqlalchemy import bindparam, column, delete, insert, select, table, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from adapters.services.resume import Decision, OfferRecord, OfferStatus
from adapters.storage.db import engine_of, translate_errors, write_lock, write_transaction
from adapters.storage.sqlite_writer import WriteTx, writer_for
from adapters.storage.tables import AuditRun, RunCheckpoint
from executor.agent import Caller, Privilege
from executor.messages import Message, ToolCallPart, ToolResultPart, Usage
from executor.ports import Checkpoint, Clock, RealClock

__all__ = ["DECIDED_KEPT_FOR", "SqlCheckpoints"]

_rows = RunCheckpoint.__table__  # type: ignore[attr-defined]
_runs = AuditRun.__table__  # type: ignore[attr-defined]
# The scheduler's slots (skills.tables.ScheduleSlot), only the columns prune reads.
_slots = table("schedule_slots", column("run_id"), column("status"))

#: How long a decided (or expired) offer's row stays, conversation-free, so a late
#: press is told what happened to it.
DECIDED_KEPT_FOR = timedelta(days=7)
# Audit statuses of runs whose checkpoint nothing will read again.
_LIVE = ("running", "interrupted")


class _Caller(BaseModel):
    model_config = ConfigDict(frozen=True)

    user_id: str
    display_name: str
    privilege: int
    guild_id: str | None
    channel_id: str | None
    roles: tuple[str, ...] = ()


class _State(BaseModel):
    """A checkpoint's row, as JSON (everything but the run id, its step and ``done``)."""

    model_config = ConfigDict(frozen=True)

    messages: tuple[Message, ...]
    usage: Usage
    pending: tuple[ToolCallPart, ...] = ()
    caller: _Caller
    trigger: str
    agent: str
    tier: str
    persona: str | None = None
    skill: str | None = None
    parent_run_id: str | None = None
    resumed_from: str | None = None
    metadata: dict[str, Any] = {}


_DONE: TypeAdapter[list[ToolResultPart]] = TypeAdapter(list[ToolResultPart])
# One statement each, executed for many runs at once (executemany).
_SAVE = (
    update(_rows)
    .where(_rows.c.run_id == bindparam("b_run_id"))
    .values({c: bindparam(c) for c in ("step", "state", "done", "updated_at")})
)
_DONE_UPDATE = (
    update(_rows).where(_rows.c.run_id == bindparam("b_run_id")).values(done=bindparam("done"))
)
_INSERT = insert(_rows)
# The rows of ended runs (never one with an offer on it: a press may still come).
_DROP = delete(_rows).where(_rows.c.run_id == bindparam("b_run_id"), _rows.c.offer.is_(None))


@dataclass(slots=True)
class _Live:
    """A run this process keeps a row for: the calls known to have finished, and each
    message's JSON as last written (messages are immutable: a step adds a few, and
    only those are serialised again)."""

    done: list[ToolResultPart] = field(default_factory=list)
    messages: list[tuple[Message, bytes]] = field(default_factory=list)

    def messages_json(self, messages: Sequence[Message]) -> bytes:
        known = self.messages
        fresh: list[tuple[Message, bytes]] = []
        for i, m in enumerate(messages):
            if i < len(known) and known[i][0] is m:
                fresh.append(known[i])
            else:
                fresh.append((m, pydantic_core.to_json(m)))
        self.messages = fresh
        return b"[" + b",".join(j for _, j in fresh) + b"]"


def _dump_state(c: Checkpoint, messages_json: bytes) -> str:
    caller = c.caller
    # Why a dict and to_json: the models inside are serialised as they are (no second
    # validation of every message on each step); odd metadata values become strings.
    state = {
        "messages": _MESSAGES,
        "usage": c.usage,
        "pending": c.pending,
        "caller": {
            "user_id": caller.user_id,
            "display_name": caller.display_name,
            "privilege": int(caller.privilege),
            "guild_id": caller.guild_id,
            "channel_id": caller.channel_id,
            "roles": caller.roles,
        },
        "trigger": c.trigger,
        "agent": c.agent,
        "tier": c.tier,
        "persona": c.persona,
        "skill": c.skill,
        "parent_run_id": c.parent_run_id,
        "resumed_from": c.resumed_from,
        "metadata": dict(c.metadata),
    }
    head, tail = pydantic_core.to_json(state, fallback=str).split(_MESSAGES_JSON, 1)
    return (head + messages_json + tail).decode()


# A placeholder swapped for the messages' JSON, written apart (and cached).
_MESSAGES = "\x00messages\x00"
_MESSAGES_JSON = pydantic_core.to_json(_MESSAGES)


def _dump_done(done: Sequence[ToolResultPart]) -> str:
    return pydantic_core.to_json(list(done)).decode()


def _load(run_id: str, step: int, state: str, done: str) -> Checkpoint:
    s = _State.model_validate_json(state)
    c = s.caller
    return Checkpoint(
        run_id=run_id,
        step=step,
        messages=s.messages,
        usage=s.usage,
        caller=Caller(
            user_id=c.user_id,
            display_name=c.display_name,
            privilege=Privilege(c.privilege),
            guild_id=c.guild_id,
            channel_id=c.channel_id,
            roles=c.roles,
        ),
        trigger=s.trigger,
        agent=s.agent,
        tier=s.tier,
        persona=s.persona,
        skill=s.skill,
        parent_run_id=s.parent_run_id,
        resumed_from=s.resumed_from,
        pending=s.pending,
        done=tuple(_DONE.validate_json(done)) if done else (),
        metadata=s.metadata,
    )


class SqlCheckpoints:
    """Checkpoints of the runs ``keep`` accepts (None: every run), and their offers."""

    #: The part's name in the data API's reports and exports.
    data_name = "interrupted runs to resume"

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        keep: Callable[[Checkpoint], bool] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._sessions = sessions
        self._engine = engine_of(sessions)
        self.keep = keep
        self.clock: Clock = clock if clock is not None else RealClock()
        # The runs this process keeps a row for, with the calls known to have finished.
        self._live: dict[str, _Live] = {}
        self._drops: list[str] = []  # rows of ended runs, deleted with the next write
        # The group commit: writes queued since the last transaction, and which batch
        # is durable (runs that save while a write is under way share the next one).
        self._inserts: list[dict[str, Any]] = []
        self._updates: list[dict[str, Any]] = []
        self._dones: list[dict[str, Any]] = []
        self._lock = asyncio.Lock()
        self._generation = 0
        self._durable = -1

    # --- executor.ports.Checkpoints ------------------------------------------------------

    async def save(self, checkpoint: Checkpoint) -> None:
        run_id = checkpoint.run_id
        live = self._live.get(run_id)
        if live is None and self.keep is not None and not self.keep(checkpoint):
            return
        fresh = _Live() if live is None else live
        values = {
            "step": checkpoint.step,
            "state": _dump_state(checkpoint, fresh.messages_json(checkpoint.messages)),
            "done": _dump_done(checkpoint.done) if checkpoint.done else "",
            "updated_at": self.clock.now(),
        }
        if live is None:
            self._inserts.append({"run_id": run_id, "user_id": checkpoint.caller.user_id, **values})
        else:
            self._updates.append({"b_run_id": run_id, **values})
        await self._commit()
        fresh.done = list(checkpoint.done)
        self._live[run_id] = fresh

    async def tool_done(self, run_id: str, result: ToolResultPart) -> None:
        live = self._live.get(run_id)
        if live is None:
            return
        live.done.append(result)
        self._dones.append({"b_run_id": run_id, "done": _dump_done(live.done)})
        await self._commit()

    async def drop(self, run_id: str) -> None:
        if self._live.pop(run_id, None) is not None:
            self._drops.append(run_id)

    async def close(self) -> None:
        """Delete the rows of the runs that ended since the last write."""
        if self._drops:
            await self._commit()

    async def _commit(self) -> None:
        """Make every queued write durable: one transaction for whatever was queued
        while the last one was under way (N runs saving at once cost about one)."""
        mine = self._generation
        async with self._lock:
            if self._durable >= mine:
                return  # a writer before us took our rows with theirs
            inserts, self._inserts = self._inserts, []
            updates, self._updates = self._updates, []
            dones, self._dones = self._dones, []
            taken = self._generation
            self._generation += 1
            drops, self._drops = self._drops, []
            statements = [
                (statement, rows)
                for statement, rows in (
                    (_DROP, [{"b_run_id": r} for r in drops]),
                    (_INSERT, inserts),
                    (_SAVE, updates),
                    (_DONE_UPDATE, dones),
                )
                if rows
            ]
            try:
                cancelled = await self._save_rows(statements)
            except BaseException:
                # Keep them for the next try, ahead of newer ones.
                self._drops[:0] = drops
                self._inserts[:0] = inserts
                self._updates[:0] = updates
                self._dones[:0] = dones
                raise
            self._durable = taken
        if cancelled:
            raise asyncio.CancelledError  # after the rows were committed: they stay

    async def _save_rows(self, statements: list[tuple[Any, list[dict[str, Any]]]]) -> bool:
        """One transaction (an executemany a statement): on a SQLite file one call in
        the database's writer thread (issue 19: a chat run's first save is on its
        message's path before the model request), elsewhere through the engine. True
        when the caller was cancelled while the thread committed it."""
        writer = writer_for(self._engine)
        if writer is None:
            async with write_transaction(self._engine) as conn:
                for statement, rows in statements:
                    await conn.execute(statement, rows)
            return False

        def job(tx: WriteTx) -> None:
            for statement, rows in statements:
                tx.execute(statement, rows)

        async with write_lock(self._engine):
            submitted = writer.submit(job)
            try:
                await submitted.future
            except asyncio.CancelledError:
                # Why wait: the thread commits or not whatever we do; only its outcome
                # says whether the rows are written or must be kept for the next try.
                committed, _ = await submitted.settled()
                if not committed:
                    raise
                return True
        return False

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction that first deletes the rows of the runs that ended."""
        drops, self._drops = self._drops, []
        try:
            async with write_transaction(self._engine) as conn:
                if drops:
                    await conn.execute(
                        delete(_rows).where(_rows.c.run_id.in_(drops), _rows.c.offer.is_(None))
                    )
                yield conn
        except BaseException:
            self._drops[:0] = drops
            raise

    # --- the offers (adapters.services.resume.ResumeStore) ------------------------------

    async def interrupted(self, run_ids: Sequence[str]) -> list[Checkpoint]:
        if not run_ids:
            return []
        found: list[Checkpoint] = []
        with translate_errors(self._engine.url):
            async with self._sessions() as session:
                rows = await session.execute(
                    select(_rows.c.run_id, _rows.c.step, _rows.c.state, _rows.c.done).where(
                        _rows.c.run_id.in_(list(run_ids)),
                        _rows.c.offer.is_(None),
                        _rows.c.state != "",
                    )
                )
                for run_id, step, state, done in rows:
                    found.append(_load(run_id, step, state, done))
        order = {r: i for i, r in enumerate(run_ids)}
        return sorted(found, key=lambda c: order[c.run_id])

    async def offered(self, run_id: str, *, expires_at: datetime) -> None:
        async with self._write() as conn:
            await conn.execute(
                update(_rows)
                .where(_rows.c.run_id == run_id)
                .values(offer="offered", offer_expires_at=expires_at)
            )

    async def posted(self, run_id: str, *, channel_id: str, message_id: str) -> None:
        async with self._write() as conn:
            await conn.execute(
                update(_rows)
                .where(_rows.c.run_id == run_id)
                .values(offer_channel_id=channel_id, offer_message_id=message_id)
            )

    async def withdraw(self, run_id: str) -> None:
        async with self._write() as conn:
            await conn.execute(delete(_rows).where(_rows.c.run_id == run_id))

    async def forget(self, run_ids: Sequence[str]) -> int:
        if not run_ids:
            return 0
        async with self._write() as conn:
            gone = await conn.execute(
                delete(_rows).where(_rows.c.run_id.in_(list(run_ids)), _rows.c.offer.is_(None))
            )
        return int(cast(Any, gone).rowcount or 0)

    async def record(self, run_id: str) -> OfferRecord | None:
        with translate_errors(self._engine.url):
            async with self._sessions() as session:
                row = (await session.execute(select(_rows).where(_rows.c.run_id == run_id))).first()
        if row is None:
            return None
        m = row._mapping
        return OfferRecord(
            run_id=run_id,
            user_id=m["user_id"],
            status=cast(OfferStatus | None, m["offer"]),
            expires_at=m["offer_expires_at"],
            checkpoint=_load(run_id, m["step"], m["state"], m["done"]) if m["state"] else None,
        )

    async def decide(
        self,
        run_id: str,
        *,
        user_id: str,
        decision: Decision,
        now: datetime,
        resumed_as: str | None = None,
    ) -> Checkpoint | None:
        async with self._write() as conn:
            row = (
                await conn.execute(
                    select(_rows.c.step, _rows.c.state, _rows.c.done)
                    .where(
                        _rows.c.run_id == run_id,
                        _rows.c.user_id == user_id,
                        _rows.c.offer == "offered",
                        _rows.c.offer_expires_at > now,
                        _rows.c.state != "",
                    )
                    .with_for_update()
                )
            ).first()
            if row is None:
                return None
            await conn.execute(
                update(_rows)
                .where(_rows.c.run_id == run_id)
                .values(offer=decision, decided_at=now, resumed_as=resumed_as, state="", done="")
            )
        return _load(run_id, row.step, row.state, row.done)

    async def take(self, run_id: str, *, resumed_as: str, now: datetime) -> Checkpoint | None:
        """Claim an interrupted run's checkpoint for the one run that resumes it with
        nobody asked (a scheduled slot's retry, as ``resumed_as``): like a Resume
        pressed, its conversation is deleted and the row says which run resumed it.
        None when there is none to take (never kept, offered, taken or forgotten)."""
        async with self._write() as conn:
            row = (
                await conn.execute(
                    select(_rows.c.step, _rows.c.state, _rows.c.done)
                    .where(_rows.c.run_id == run_id, _rows.c.offer.is_(None), _rows.c.state != "")
                    .with_for_update()
                )
            ).first()
            if row is None:
                return None
            await conn.execute(
                update(_rows)
                .where(_rows.c.run_id == run_id)
                .values(offer="resumed", decided_at=now, resumed_as=resumed_as, state="", done="")
            )
        return _load(run_id, row.step, row.state, row.done)

    async def expire(self, now: datetime) -> list[tuple[str, str]]:
        due = (_rows.c.offer == "offered", _rows.c.offer_expires_at <= now)
        async with self._write() as conn:
            rows = (
                await conn.execute(
                    select(
                        _rows.c.run_id, _rows.c.offer_channel_id, _rows.c.offer_message_id
                    ).where(*due)
                )
            ).all()
            if rows:
                await conn.execute(
                    update(_rows)
                    .where(_rows.c.run_id.in_([r[0] for r in rows]), *due)
                    .values(offer="expired", decided_at=now, state="", done="")
                )
        return [(r[1], r[2]) for r in rows if r[1] and r[2]]

    async def prune(self, now: datetime) -> int:
        """Delete the rows of runs that ended (left by a crash before their drop was
        written), decided offers older than :data:`DECIDED_KEPT_FOR`, and interrupted
        runs never offered that long after their last step (the process that closed
        them died before it could offer them). Never a row of a run still running
        (another process's, on PostgreSQL), nor of a recent interrupted one (its
        offer may be on its way), nor of a scheduled slot's run while the slot is
        running (its retry resumes it)."""
        # Why not a slot's run while its slot is running: a drain cut it (closed as
        # cancelled), and the slot's retry resumes it from this row.
        slotted = select(_slots.c.run_id).where(
            _slots.c.status == "running", _slots.c.run_id.is_not(None)
        )
        ended = select(_runs.c.run_id).where(
            _runs.c.status.not_in(_LIVE), _runs.c.run_id.not_in(slotted)
        )
        interrupted = select(_runs.c.run_id).where(_runs.c.status == "interrupted")
        async with self._write() as conn:
            stale = await conn.execute(
                delete(_rows).where(_rows.c.offer.is_(None), _rows.c.run_id.in_(ended))
            )
            never = await conn.execute(
                delete(_rows).where(
                    _rows.c.offer.is_(None),
                    _rows.c.updated_at < now - DECIDED_KEPT_FOR,
                    _rows.c.run_id.in_(interrupted),
                )
            )
            old = await conn.execute(
                delete(_rows).where(
                    _rows.c.offer.is_not(None),
                    _rows.c.offer != "offered",
                    _rows.c.decided_at < now - DECIDED_KEPT_FOR,
                )
            )
        return sum(int(cast(Any, r).rowcount or 0) for r in (stale, never, old))

    # --- the data API -------------------------------------------------------------------

    async def export_user_data(self, user_id: str) -> list[dict[str, Any]]:
        """The member's checkpoints and offers: the conversation a running (or
        interrupted, not yet decided) run kept, and each offer's state."""
        with translate_errors(self._engine.url):
            async with self._sessions() as session:
                rows = (
                    await session.execute(
                        select(_rows).where(_rows.c.user_id == user_id).order_by(_rows.c.updated_at)
                    )
                ).mappings()
                out: list[dict[str, Any]] = []
                for row in rows:
                    item = {k: _jsonable(v) for k, v in row.items()}
                    for key in ("state", "done"):
                        item[key] = _parsed(row[key])
                    out.append(item)
        return out

    async def delete_user_data(self, user_id: str) -> int:
        """Delete the member's checkpoints and offers (a run in flight keeps running; it
        just cannot be resumed any more)."""
        async with self._write() as conn:
            gone = await conn.execute(delete(_rows).where(_rows.c.user_id == user_id))
        return int(cast(Any, gone).rowcount or 0)


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _parsed(text: str) -> Any:
    """A stored JSON column as data (a row written by hand may hold plain text)."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
