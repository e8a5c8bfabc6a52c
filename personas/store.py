"""``PersonaStore``: built-in personas merged with the ones a guild stores.

Resolution of a name in a guild, later wins: built-ins (``personas/builtin``),
then deployment-wide stored personas (``guild_id == ""``), then the guild's own.
A stored persona whose name is a built-in's is that built-in's *override* in
that guild; deleting the override brings the built-in back.

Who may do what (``by`` is the acting :class:`~executor.agent.Caller`):

- create: anyone; a name already stored in the guild is refused; a built-in's
  name creates an override, which needs an admin (it changes the persona for
  everyone in the server).
- update / delete: the persona's creator or an admin. Editing a built-in creates
  its override (admin only); a built-in itself cannot be deleted.
- tools are capped at what the person writing them may use: each *added* tool
  must pass ``ToolRegistry.refusal`` at their privilege. Tools already on the
  persona are kept when someone else edits other fields.
- ``delete_user_data(user_id)`` (the data API, ``/forgetme``) deletes the personas the
  member created; ``purge=False`` keeps them instead (others may rely on them, and
  channels may default to them) but clears ``created_by``, so only admins can change
  them afterwards. ``export_user_data(user_id)`` gives them, as stored.

Reads are cached: the chat flow looks a persona up on every message. A guild's
stored personas (its own and the deployment-wide ones) are read in one query and
kept for ``ttl_s``; every write through this store drops the cache at once
(:meth:`PersonaStore.invalidate`, the one place that does). With several processes on
PostgreSQL a write is also published (:attr:`PersonaStore.publish`, ``NOTIFY``) and
each other process drops its cache when told (``coterie forget`` publishes too);
without that (SQLite's second process, or a notification lost) a change made by
another process is seen within ``ttl_s``.
"""

from __future__ import annotations

import asyncio
import builtins as _builtins
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, Final

from sqlalchemy import delete as sa_delete
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col

from executor.agent import Caller, Privilege
from executor.models.config import DEFAULT_TIERS as _KERNEL_TIERS
from executor.ports import utcnow
from executor.tools.registry import ToolRegistry
from personas.errors import InvalidPersona, PersonaExists, PersonaNotFound, PersonaPermissionDenied
from personas.markdown import parse_markdown, render_markdown
from personas.model import Persona, normalise_name, validate_fields
from personas.tables import PersonaRow

__all__ = ["DEFAULT_TIERS", "MAX_CHOICES", "PersonaStore"]

# The kernel's built-in tier names; pass the configured ones (``models_config.tiers``).
DEFAULT_TIERS: tuple[str, ...] = tuple(_KERNEL_TIERS)
MAX_CHOICES = 25  # Discord's cap on autocomplete choices
# Why a write that reads first begins IMMEDIATE on SQLite (a copy of
# adapters.storage.db.IMMEDIATE: personas sits below adapters; tests/personas checks the
# two stay equal): a deferred transaction that reads and then writes gets "database is
# locked" at once, without the busy timeout, whenever another connection is writing.
_IMMEDIATE: Final[dict[str, Any]] = {"coterie_sqlite_begin": "IMMEDIATE"}

log = logging.getLogger(__name__)


def _to_persona(row: PersonaRow, *, overrides_builtin: bool) -> Persona:
    return Persona(
        id=row.id,
        name=row.name,
        description=row.description,
        system_prompt=row.system_prompt,
        tier=row.tier,
        tools=tuple(row.tools or ()),
        avatar_url=row.avatar_url,
        temperature=row.temperature,
        guild_id=row.guild_id,
        created_by=row.created_by,
        overrides_builtin=overrides_builtin,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class PersonaStore:
    """Personas of every guild. Takes an ``async_sessionmaker``; opens no engine."""

    data_name = "personas"

    def __init__(
        self,
        sessions: async_sessionmaker[Any],
        builtins: Mapping[str, Persona] | Iterable[Persona] = (),
        *,
        tools: ToolRegistry | None = None,
        tiers: Iterable[str] = DEFAULT_TIERS,
        admin: Privilege = Privilege.ADMIN,
        ttl_s: float = 30.0,
        max_guilds: int = 2_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        # guild id ("" for none) -> (when read, its stored personas by normalised name)
        self._cache: OrderedDict[str, tuple[float, dict[str, Persona]]] = OrderedDict()
        self._generation = 0  # bumped by invalidate(): a read begun before keeps nothing
        self.ttl_s = ttl_s
        self._max_guilds = max_guilds
        self._monotonic = monotonic
        items = builtins.values() if isinstance(builtins, Mapping) else builtins
        self._builtins: dict[str, Persona] = {
            normalise_name(p.name): replace(p, builtin=True) for p in items
        }
        # Why an empty registry by default: with nothing registered every tool is
        # refused, which is the safe failure when the composition root forgets it.
        self._tools = tools if tools is not None else ToolRegistry()
        self._tiers = tuple(dict.fromkeys(t.lower() for t in tiers))
        self._admin = admin
        # Tells the other processes a guild's personas changed (its id; "" for the
        # deployment-wide ones). None: this process is alone.
        self.publish: Callable[[str], Awaitable[None]] | None = None

    # --- reading ------------------------------------------------------------------

    @property
    def tiers(self) -> tuple[str, ...]:
        return self._tiers

    @property
    def builtins(self) -> dict[str, Persona]:
        return dict(self._builtins)

    async def list(self, guild_id: str | None) -> _builtins.list[Persona]:
        """Every persona usable in the guild, sorted by name."""
        merged = self._builtins | await self._stored(guild_id)
        return sorted(merged.values(), key=lambda p: p.name)

    async def find(self, guild_id: str | None, name: str) -> Persona | None:
        """The persona called ``name`` (any case) in the guild, or None."""
        key = normalise_name(name)
        stored = (await self._stored(guild_id)).get(key)
        return stored if stored is not None else self._builtins.get(key)

    def invalidate(self, key: str | None = None) -> None:
        """Forget every cached read; the next one goes to the database. Called by
        every write of this store, and when another process says it wrote (``key``,
        the guild it wrote in, is not needed: a deployment-wide persona is in every
        guild's read, and a refill is one query)."""
        self._generation += 1
        self._cache.clear()

    async def _written(self, guild_id: str) -> None:
        """After a write: drop the cache, and tell the other processes."""
        self.invalidate()
        if self.publish is not None:
            try:
                await self.publish(guild_id)
            except Exception:  # Why not raise: the write is saved; others see it by TTL
                log.warning("could not tell the other processes about a persona change",
                            exc_info=True)  # fmt: skip

    async def _stored(self, guild_id: str | None) -> dict[str, Persona]:
        """The guild's stored personas by normalised name (its own win over the
        deployment-wide ones), from the cache when it is fresh."""
        gid = guild_id or ""
        hit = self._cache.get(gid)
        if hit is not None and self._monotonic() - hit[0] <= self.ttl_s:
            self._cache.move_to_end(gid)
            return hit[1]
        generation, read_at = self._generation, self._monotonic()
        found: dict[str, Persona] = {}
        # Deployment-wide rows first: the guild's own overwrite them.
        for row in sorted(await self._rows(gid or None), key=lambda r: r.guild_id != ""):
            key = normalise_name(row.name)
            found[key] = _to_persona(row, overrides_builtin=key in self._builtins)
        if generation == self._generation:  # no write landed while we read
            self._cache[gid] = (read_at, found)
            self._cache.move_to_end(gid)
            while len(self._cache) > self._max_guilds:
                self._cache.popitem(last=False)
        return found

    async def get(self, guild_id: str | None, name: str) -> Persona:
        """Like :meth:`find`, but an unknown name raises :class:`PersonaNotFound`."""
        persona = await self.find(guild_id, name)
        if persona is None:
            raise PersonaNotFound(normalise_name(name) or name)
        return persona

    async def search(
        self, guild_id: str | None, typed: str = "", *, limit: int = MAX_CHOICES
    ) -> _builtins.list[Persona]:
        """For autocomplete: names starting with ``typed`` first, then names or
        descriptions containing it; at most ``limit``."""
        needle = normalise_name(typed)
        everyone = await self.list(guild_id)
        starts = [p for p in everyone if p.name.startswith(needle)]
        contains = [
            p
            for p in everyone
            if p not in starts and (needle in p.name or needle in p.description.lower())
        ]
        return (starts + contains)[: max(0, min(limit, MAX_CHOICES))]

    # --- writing ------------------------------------------------------------------

    async def create(self, guild_id: str | None, persona: Persona, *, by: Caller) -> Persona:
        """Store a new persona in the guild, created by ``by``."""
        gid = guild_id or ""
        persona = self._validate(persona, by=by, previous=())
        existing = await self._row(gid, persona.name)
        if existing is not None:
            raise PersonaExists(persona.name)
        if not self._is_admin(by) and await self.find(gid, persona.name) is not None:
            # A built-in (or deployment-wide) persona by that name: storing this one
            # would override it for everyone in the server.
            kind = "a built-in" if persona.name in self._builtins else "a deployment-wide"
            raise PersonaPermissionDenied(
                persona.name,
                "override",
                f"it is {kind} persona; only an admin may override it for the whole server",
            )
        row = PersonaRow(
            guild_id=gid,
            name=persona.name,
            description=persona.description,
            system_prompt=persona.system_prompt,
            tier=persona.tier,
            tools=list(persona.tools),
            avatar_url=persona.avatar_url,
            temperature=persona.temperature,
            created_by=by.user_id,
        )
        async with self._sessions() as session:
            session.add(row)
            try:
                await session.commit()
            except IntegrityError as exc:
                # Why: two creates raced past the check above; the unique constraint decides.
                raise PersonaExists(persona.name) from exc
            finally:
                self.invalidate()
            await session.refresh(row)
        await self._written(gid)
        return _to_persona(row, overrides_builtin=persona.name in self._builtins)

    async def update(self, guild_id: str | None, persona: Persona, *, by: Caller) -> Persona:
        """Replace the fields of the persona named ``persona.name`` (no renaming).

        On a built-in this creates the guild's override of it (admin only).
        """
        gid = guild_id or ""
        name = normalise_name(persona.name)
        row = await self._row(gid, name)
        if row is None:
            # A built-in or deployment-wide persona: raises unless ``by`` may override it.
            await self.check_can_change(gid, name, by=by)
            # Editing it stores the guild's override of it.
            return await self.create(gid, replace(persona, name=name), by=by)
        self._check_owner(row, by, "edit")
        persona = self._validate(persona, by=by, previous=tuple(row.tools or ()))
        async with self._sessions() as session:
            await session.connection(execution_options=_IMMEDIATE)
            stored = await session.get(PersonaRow, row.id)
            if stored is None:
                raise PersonaNotFound(name)
            stored.description = persona.description
            stored.system_prompt = persona.system_prompt
            stored.tier = persona.tier
            stored.tools = list(persona.tools)
            stored.avatar_url = persona.avatar_url
            stored.temperature = persona.temperature
            stored.updated_at = utcnow()
            session.add(stored)
            try:
                await session.commit()
            finally:
                self.invalidate()
            await session.refresh(stored)
        await self._written(gid)
        return _to_persona(stored, overrides_builtin=name in self._builtins)

    async def check_can_change(
        self, guild_id: str | None, name: str, *, by: Caller, action: str = "edit"
    ) -> Persona:
        """The persona ``by`` is about to edit or delete; raises as the change would.

        For the cog to refuse before it shows an edit form, not after.
        """
        gid = guild_id or ""
        key = normalise_name(name)
        row = await self._row(gid, key)
        if row is not None:
            self._check_owner(row, by, action)
            return _to_persona(row, overrides_builtin=key in self._builtins)
        builtin = self._builtins.get(key)
        if builtin is None:
            found = await self.find(guild_id, key)
            if found is None:
                raise PersonaNotFound(key)
            # A deployment-wide persona seen from a guild.
            if not self._is_admin(by):
                raise PersonaPermissionDenied(
                    key, action, "it is shared by the whole deployment; only an admin may change it"
                )
            return found
        if action == "delete":
            raise PersonaPermissionDenied(
                key, action, "built-in personas cannot be deleted (edit it to override it)"
            )
        if not self._is_admin(by):
            raise PersonaPermissionDenied(
                key, action, "it is a built-in persona; only an admin may override it"
            )
        return builtin

    async def delete(self, guild_id: str | None, name: str, *, by: Caller) -> Persona:
        """Delete the guild's persona ``name``; return what was deleted.

        Deleting an override brings the built-in back; a built-in cannot be deleted.
        """
        gid = guild_id or ""
        key = normalise_name(name)
        row = await self._row(gid, key)
        if row is None:
            if key in self._builtins:
                raise PersonaPermissionDenied(
                    key, "delete", "built-in personas cannot be deleted (edit it to override it)"
                )
            raise PersonaNotFound(key)
        self._check_owner(row, by, "delete")
        deleted = _to_persona(row, overrides_builtin=key in self._builtins)
        async with self._sessions() as session:
            await session.execute(sa_delete(PersonaRow).where(col(PersonaRow.id) == row.id))
            try:
                await session.commit()
            finally:
                self.invalidate()
        await self._written(gid)
        return deleted

    async def export_markdown(self, guild_id: str | None, name: str) -> str:
        """The persona as a Markdown file, the same format as the built-ins."""
        return render_markdown(await self.get(guild_id, name))

    async def import_markdown(
        self,
        guild_id: str | None,
        text: str,
        *,
        by: Caller,
        source: str = "<upload>",
        replace_existing: bool = False,
    ) -> Persona:
        """Create a persona from a Markdown file (or update it, with ``replace_existing``).

        The file is untrusted: it is parsed with limits (:mod:`personas.markdown`), in a
        thread, so that a file near those limits does not hold up every other member
        while it is read. Check who may import before calling this.
        """
        persona = await asyncio.to_thread(parse_markdown, text, source=source)
        if replace_existing and await self.find(guild_id, persona.name) is not None:
            return await self.update(guild_id, persona, by=by)
        return await self.create(guild_id, persona, by=by)

    async def export_user_data(self, user_id: str) -> _builtins.list[dict[str, Any]]:
        """The personas ``user_id`` created, as stored."""
        if not user_id:
            return []
        async with self._sessions() as session:
            rows = await session.scalars(
                select(PersonaRow)
                .where(col(PersonaRow.created_by) == user_id)
                .order_by(col(PersonaRow.id))
            )
            return [r.model_dump(mode="json") for r in rows]

    async def delete_user_data(self, user_id: str, *, purge: bool = True) -> int:
        """Forget ``user_id``: delete their personas (or, without ``purge``, clear
        ``created_by`` on them). Returns how many personas were touched."""
        if not user_id:
            return 0
        async with self._sessions() as session:
            where = col(PersonaRow.created_by) == user_id
            if purge:
                result = await session.execute(sa_delete(PersonaRow).where(where))
            else:
                result = await session.execute(
                    update(PersonaRow).where(where).values(created_by="", updated_at=utcnow())
                )
            try:
                await session.commit()
            finally:
                self.invalidate()
        touched = int(getattr(result, "rowcount", 0) or 0)
        if touched:
            await self._written("*")  # in any guild
        return touched

    # --- rules ----------------------------------------------------------------------

    def _is_admin(self, by: Caller) -> bool:
        return by.privilege >= self._admin

    def _check_owner(self, row: PersonaRow, by: Caller, action: str) -> None:
        if self._is_admin(by):
            return
        if row.created_by and row.created_by == by.user_id:
            return
        if not row.guild_id:
            reason = "it is shared by the whole deployment; only an admin may change it"
        elif row.created_by:
            reason = f"only its creator (<@{row.created_by}>) or an admin may {action} it"
        else:
            reason = f"its creator is unknown; only an admin may {action} it"
        raise PersonaPermissionDenied(row.name, action, reason)

    def _validate(self, persona: Persona, *, by: Caller, previous: tuple[str, ...]) -> Persona:
        persona = validate_fields(persona)
        if self._tiers and persona.tier not in self._tiers:
            raise InvalidPersona(
                "tier", f"unknown tier {persona.tier!r}; known tiers: {', '.join(self._tiers)}"
            )
        # Tools kept from before were capped when they were added.
        problem = self._tools.grant_refusal(persona.tools, by.privilege, kept=previous)
        if problem is not None:
            raise InvalidPersona("tools", problem)
        return persona

    # --- queries --------------------------------------------------------------------

    async def _rows(self, guild_id: str | None) -> _builtins.list[PersonaRow]:
        gids = ["", guild_id] if guild_id else [""]
        stmt = select(PersonaRow).where(col(PersonaRow.guild_id).in_(gids))
        async with self._sessions() as session:
            result = await session.execute(stmt)
            return _builtins.list(result.scalars().all())

    async def _row(self, guild_id: str, name: str) -> PersonaRow | None:
        stmt = select(PersonaRow).where(
            col(PersonaRow.guild_id) == guild_id, func.lower(PersonaRow.name) == name
        )
        async with self._sessions() as session:
            result = await session.execute(stmt)
            return result.scalars().first()  # type: ignore[no-any-return]
