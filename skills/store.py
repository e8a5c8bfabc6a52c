"""``SkillStore``: a guild's skills, their versions, and forgetting a member.

A skill's name is unique in its guild. Every save makes a new, immutable version
and moves ``current_version`` to it; a rollback copies an old version into a new
one, so history only grows.

Who may do what (``by`` is the acting :class:`~executor.agent.Caller`):

- save: a new name creates the skill, owned by ``by``. Saving a name that exists
  adds a version when ``by`` owns it or is an admin, and raises
  :class:`SkillExists` otherwise.
- rollback, delete, set_enabled: the owner or an admin
  (:class:`SkillPermissionDenied` otherwise).
- tools are capped at the *saver's* rights on every save (and rollback): each must
  be registered, enabled and within ``by.privilege`` (``ToolRegistry.grant_refusal``,
  the check personas use). They are capped again at the *owner's* rights when the
  skill runs (:func:`skills.runnable.to_runnable`).
- ``description`` belongs to the skill, not to a version (the versions table has no
  column for it): a save sets it, a rollback keeps the current one, and
  ``SkillVersionInfo.spec.description`` is the skill's description.

Each write is one transaction, begun with the write lock taken (``BEGIN
IMMEDIATE`` on SQLite, a row lock on PostgreSQL), so nothing is half-written and a
concurrent save cannot slip between the read and the write. ``delete`` removes the
skill's schedules (and their slots), versions and the skill explicitly, never trusting a foreign key
cascade (SQLite only cascades with ``PRAGMA foreign_keys`` on).

``delete_user_data(user_id)`` deletes the skills the member owns (with their
versions and schedules) and the schedules they made on others' skills, and clears
their id from versions they wrote on others' skills (those versions stay: the
skill's owner relies on them). ``export_user_data(user_id)`` gives all of those.
"""

from __future__ import annotations

import asyncio
import builtins as _builtins
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final, cast

from sqlalchemy import delete as sa_delete
from sqlalchemy import func, select, update
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from executor.agent import Caller, Privilege
from executor.ports import utcnow
from executor.tools.registry import ToolRegistry
from personas.store import PersonaStore
from skills.errors import (
    InvalidSkill,
    SkillExists,
    SkillNotFound,
    SkillPermissionDenied,
    SkillVersionNotFound,
)
from skills.markdown import parse_markdown, render_markdown
from skills.model import (
    NAME_PATTERN,
    SkillDeleted,
    SkillInfo,
    SkillSpec,
    SkillVersionInfo,
    check_name,
    validate_spec,
)
from skills.tables import Schedule, ScheduleSlot, Skill, SkillVersion

__all__ = ["MAX_CHOICES", "NOTE_MAX", "SkillStore"]

MAX_CHOICES = 25  # Discord's cap on autocomplete choices
NOTE_MAX = 200  # SkillVersion.note's column
# Why a copy of adapters.storage.db.IMMEDIATE: skills sits below adapters and may not
# import it; tests/skills checks the two stay equal.
_IMMEDIATE: Final[dict[str, Any]] = {"coterie_sqlite_begin": "IMMEDIATE"}


def _info(row: Skill) -> SkillInfo:
    assert row.id is not None
    return SkillInfo(
        id=row.id,
        guild_id=row.guild_id,
        name=row.name,
        owner_id=row.owner_id,
        description=row.description,
        current_version=row.current_version,
        enabled=row.enabled,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _version_info(row: SkillVersion, description: str) -> SkillVersionInfo:
    return SkillVersionInfo(
        skill_id=row.skill_id,
        version=row.version,
        spec=SkillSpec(
            prompt=row.prompt,
            persona=row.persona,
            tier=row.tier,
            tools=tuple(row.tools or ()),
            max_steps=row.max_steps,
            max_runtime_s=row.max_runtime_s,
            description=description,
        ),
        created_by=row.created_by,
        created_at=row.created_at,
        note=row.note,
    )


def _version_row(
    skill_id: int,
    version: int,
    spec: SkillSpec,
    *,
    created_by: str,
    note: str,
    output_schema: dict[str, Any] | None = None,
) -> SkillVersion:
    return SkillVersion(
        skill_id=skill_id,
        version=version,
        prompt=spec.prompt,
        persona=spec.persona,
        tier=spec.tier,
        tools=list(spec.tools),
        output_schema=output_schema,
        max_steps=spec.max_steps,
        max_runtime_s=spec.max_runtime_s,
        created_by=created_by,
        note=note,
    )


def _count(result: Result[Any]) -> int:
    """How many rows a DELETE or UPDATE touched."""
    return int(cast(CursorResult[Any], result).rowcount or 0)


def _shown(name: str) -> str:
    """A name as typed, safe to put in a message (a valid name is shown as it is)."""
    clean = name.strip().lower()
    if NAME_PATTERN.fullmatch(clean):
        return clean
    short = "".join(c if c.isprintable() else "?" for c in name.strip()[:33])
    return short if len(short) <= 32 else short[:31] + "…"


class SkillStore:
    """Skills of every guild. Takes an ``async_sessionmaker``; opens no engine.

    ``tools``: the deployment's registry (an empty one, the default, refuses every
    tool: the safe failure when the composition root forgets it). ``tiers``: the
    configured tier names (empty: any tier). ``personas``: when given, a skill's
    persona must exist in its guild.
    """

    data_name = "skills and schedules"

    def __init__(
        self,
        sessions: async_sessionmaker[Any],
        *,
        tools: ToolRegistry | None = None,
        tiers: Sequence[str] = (),
        personas: PersonaStore | None = None,
        admin: Privilege = Privilege.ADMIN,
    ) -> None:
        self._sessions = sessions
        self._tools = tools if tools is not None else ToolRegistry()
        self._tiers = tuple(dict.fromkeys(t.strip().lower() for t in tiers))
        self._personas = personas
        self._admin = admin

    @property
    def tools(self) -> ToolRegistry:
        return self._tools

    @property
    def tiers(self) -> tuple[str, ...]:
        return self._tiers

    def is_admin(self, by: Caller) -> bool:
        return by.privilege >= self._admin

    def may_change(self, skill: SkillInfo, by: Caller) -> bool:
        """Whether ``by`` may edit, roll back, enable or delete ``skill``."""
        return self.is_admin(by) or bool(skill.owner_id and skill.owner_id == by.user_id)

    # --- reading ------------------------------------------------------------------

    async def find(self, guild_id: str | None, name: str) -> SkillInfo | None:
        """The skill called ``name`` (any case) in the guild, or None."""
        key = name.strip().lower()
        if not NAME_PATTERN.fullmatch(key):
            return None
        async with self._sessions() as session:
            row = await self._row(session, guild_id or "", key)
            return _info(row) if row is not None else None

    async def find_by_id(self, skill_id: int) -> SkillInfo | None:
        """The skill with this id (a schedule's), or None when it is gone."""
        async with self._sessions() as session:
            row = await session.get(Skill, skill_id)
            return _info(row) if row is not None else None

    async def get(self, guild_id: str | None, name: str) -> SkillInfo:
        """Like :meth:`find`; an unknown name raises :class:`SkillNotFound`."""
        info = await self.find(guild_id, name)
        if info is None:
            raise SkillNotFound(_shown(name))
        return info

    async def current(self, guild_id: str | None, name: str) -> tuple[SkillInfo, SkillVersionInfo]:
        """The skill called ``name`` and its current version, read together (what a run
        needs); an unknown name raises :class:`SkillNotFound`."""
        key = name.strip().lower()
        found = None
        if NAME_PATTERN.fullmatch(key):
            found = await self._current(
                col(Skill.guild_id) == (guild_id or ""), col(Skill.name) == key
            )
        if found is None:
            raise SkillNotFound(_shown(name))
        return found

    async def current_by_id(self, skill_id: int) -> tuple[SkillInfo, SkillVersionInfo] | None:
        """The skill with this id (a schedule's) and its current version, read together;
        None when the skill is gone."""
        return await self._current(col(Skill.id) == skill_id)

    async def _current(self, *where: Any) -> tuple[SkillInfo, SkillVersionInfo] | None:
        # Why one statement: a scheduled slot read the skill three times (by id, by name,
        # for its version) before it ran.
        stmt = (
            select(Skill, SkillVersion)
            .outerjoin(
                SkillVersion,
                (col(SkillVersion.skill_id) == col(Skill.id))
                & (col(SkillVersion.version) == col(Skill.current_version)),
            )
            .where(*where)
        )
        async with self._sessions() as session:
            row = (await session.execute(stmt)).first()
        if row is None:
            return None
        skill, version = _info(row[0]), row[1]
        if version is None:  # never written without one; say which versions there are
            return skill, await self.version(skill)
        return skill, _version_info(version, skill.description)

    async def version(self, skill: SkillInfo | int, version: int | None = None) -> SkillVersionInfo:
        """One version of a skill (its current one when ``version`` is None).

        ``skill`` is a :class:`SkillInfo` or a skill id. Raises :class:`SkillNotFound`
        when the skill is gone, :class:`SkillVersionNotFound` (listing the versions
        there are) for a version it does not have.
        """
        skill_id = skill.id if isinstance(skill, SkillInfo) else skill
        async with self._sessions() as session:
            row = await session.get(Skill, skill_id)
            if row is None:
                raise SkillNotFound(skill.name if isinstance(skill, SkillInfo) else f"#{skill_id}")
            number = row.current_version if version is None else version
            found = await session.scalar(
                select(SkillVersion).where(
                    col(SkillVersion.skill_id) == skill_id, col(SkillVersion.version) == number
                )
            )
            if found is None:
                known = await session.scalars(
                    select(col(SkillVersion.version))
                    .where(col(SkillVersion.skill_id) == skill_id)
                    .order_by(col(SkillVersion.version))
                )
                raise SkillVersionNotFound(row.name, number, _builtins.list(known))
            return _version_info(found, row.description)

    async def versions(self, skill_id: int) -> _builtins.list[SkillVersionInfo]:
        """Every version of the skill, oldest first ([] for an unknown skill)."""
        async with self._sessions() as session:
            row = await session.get(Skill, skill_id)
            if row is None:
                return []
            found = await session.scalars(
                select(SkillVersion)
                .where(col(SkillVersion.skill_id) == skill_id)
                .order_by(col(SkillVersion.version))
            )
            return [_version_info(v, row.description) for v in found]

    async def list(
        self, guild_id: str | None, *, owner_id: str | None = None
    ) -> _builtins.list[SkillInfo]:
        """The guild's skills (only ``owner_id``'s when given), by name."""
        stmt = select(Skill).where(col(Skill.guild_id) == (guild_id or ""))
        if owner_id is not None:
            stmt = stmt.where(col(Skill.owner_id) == owner_id)
        async with self._sessions() as session:
            rows = await session.scalars(stmt.order_by(col(Skill.name)))
            return [_info(r) for r in rows]

    async def search(
        self,
        guild_id: str | None,
        typed: str = "",
        *,
        owner_id: str | None = None,
        limit: int = MAX_CHOICES,
    ) -> _builtins.list[SkillInfo]:
        """For autocomplete: the guild's skills whose name starts with ``typed``, then
        those whose name or description contains it; within each group ``owner_id``'s
        own skills first, then by name. At most ``limit`` (and never more than 25)."""
        limit = max(0, min(limit, MAX_CHOICES))
        if limit == 0:
            return []
        needle = typed.strip().lower()[:100]
        mine = (col(Skill.owner_id) == owner_id) if owner_id is not None else None
        order = ([mine.desc()] if mine is not None else []) + [col(Skill.name)]
        base = select(Skill).where(col(Skill.guild_id) == (guild_id or ""))
        starts = col(Skill.name).startswith(needle, autoescape=True)
        contains = col(Skill.name).contains(needle, autoescape=True) | func.lower(
            col(Skill.description)
        ).contains(needle, autoescape=True)
        async with self._sessions() as session:
            first = _builtins.list(
                await session.scalars(base.where(starts).order_by(*order).limit(limit))
            )
            rest: _builtins.list[Skill] = []
            if len(first) < limit and needle:
                rest = _builtins.list(
                    await session.scalars(
                        base.where(contains, ~starts).order_by(*order).limit(limit - len(first))
                    )
                )
            return [_info(r) for r in first + rest]

    # --- writing ------------------------------------------------------------------

    async def save(
        self,
        guild_id: str | None,
        name: str,
        spec: SkillSpec,
        *,
        by: Caller,
        note: str = "",
    ) -> tuple[SkillInfo, SkillVersionInfo]:
        """Save ``spec`` as the next version of ``name`` (version 1 of a new skill).

        Raises :class:`InvalidSkill` naming the field at fault, :class:`SkillExists`
        when the name belongs to someone else's skill. Nothing is written on error.
        """
        gid = guild_id or ""
        key = check_name(name)
        spec = await self.check_spec(gid, spec, by=by)
        note = self._check_note(note)
        # Why two attempts: two first saves of one name race past the read; the unique
        # constraint lets one win, and the other, read again, is a new version (same
        # owner) or SkillExists (someone else's).
        for attempt in (1, 2):
            try:
                async with self._write() as session:
                    row = await self._row(session, gid, key, lock=True)
                    if row is None:
                        row = Skill(
                            guild_id=gid,
                            name=key,
                            owner_id=by.user_id,
                            description=spec.description,
                            current_version=0,
                        )
                        session.add(row)
                        await session.flush()
                    elif not self.may_change(_info(row), by):
                        raise SkillExists(key)
                    added = await self._add_version(session, row, spec, by=by, note=note)
                    return _info(row), _version_info(added, row.description)
            except IntegrityError as exc:
                if attempt == 2:
                    raise SkillExists(key) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def rollback(
        self, guild_id: str | None, name: str, version: int, *, by: Caller
    ) -> SkillVersionInfo:
        """Make a new version that copies ``version`` (note ``rollback to vN``).

        The copy is checked like a save (its persona must still exist, its tools must
        still be grantable by ``by``). Owner or admin.
        """
        gid = guild_id or ""
        info = await self.get(gid, name)
        if not self.may_change(info, by):
            raise SkillPermissionDenied(info.name, "roll back")
        old = await self.version(info, version)
        async with self._sessions() as session:
            old_row = await session.scalar(
                select(SkillVersion).where(
                    col(SkillVersion.skill_id) == info.id, col(SkillVersion.version) == version
                )
            )
            schema = old_row.output_schema if old_row is not None else None
        spec = await self.check_spec(gid, old.spec, by=by)
        async with self._write() as session:
            row = await self._row(session, gid, info.name, lock=True)
            if row is None or row.id != info.id:
                raise SkillNotFound(info.name)
            if not self.may_change(_info(row), by):
                raise SkillPermissionDenied(info.name, "roll back")
            added = await self._add_version(
                session,
                row,
                spec,
                by=by,
                note=f"rollback to v{version}",
                output_schema=schema,
                description=row.description,
            )
            return _version_info(added, row.description)

    async def delete(self, guild_id: str | None, name: str, *, by: Caller) -> SkillDeleted:
        """Delete the skill, its versions and its schedules (with their slots) in one
        transaction; return the skill as it was and how many versions and schedules
        went. Owner or admin."""
        gid = guild_id or ""
        key = name.strip().lower()
        async with self._write() as session:
            row = (
                await self._row(session, gid, key, lock=True)
                if NAME_PATTERN.fullmatch(key)
                else None
            )
            if row is None:
                raise SkillNotFound(_shown(name))
            info = _info(row)
            if not self.may_change(info, by):
                raise SkillPermissionDenied(info.name, "delete")
            schedules = await self._delete_schedules(session, col(Schedule.skill_id) == info.id)
            versions = await session.execute(
                sa_delete(SkillVersion).where(col(SkillVersion.skill_id) == info.id)
            )
            await session.execute(sa_delete(Skill).where(col(Skill.id) == info.id))
            return SkillDeleted(skill=info, versions=_count(versions), schedules=schedules)

    async def set_enabled(
        self, guild_id: str | None, name: str, enabled: bool, *, by: Caller
    ) -> SkillInfo:
        """Enable or disable the skill (a disabled skill neither runs nor fires). Owner
        or admin."""
        gid = guild_id or ""
        key = name.strip().lower()
        async with self._write() as session:
            row = (
                await self._row(session, gid, key, lock=True)
                if NAME_PATTERN.fullmatch(key)
                else None
            )
            if row is None:
                raise SkillNotFound(_shown(name))
            if not self.may_change(_info(row), by):
                raise SkillPermissionDenied(row.name, "enable or disable")
            row.enabled = bool(enabled)
            row.updated_at = utcnow()
            session.add(row)
            await session.flush()
            return _info(row)

    # --- files --------------------------------------------------------------------

    async def export_markdown(self, guild_id: str | None, name: str) -> str:
        """The skill's current version as a Markdown file (:mod:`skills.markdown`)."""
        info = await self.get(guild_id, name)
        return render_markdown(info, await self.version(info))

    async def import_markdown(
        self,
        guild_id: str | None,
        text: str,
        *,
        by: Caller,
        source: str = "<upload>",
        replace_existing: bool = False,
    ) -> tuple[SkillInfo, SkillVersionInfo]:
        """Save a skill from a Markdown file: a new skill, or (``replace_existing``) the
        next version of one ``by`` may change. The file is read with limits
        (:class:`UnsafeSkillFile`, :class:`SkillFileError`), then saved as by :meth:`save`.
        """
        # Why in a thread: an adversarial file (deep nesting at the limits) costs up to
        # ~0.15 s to refuse; other members' messages must not wait for it.
        name, spec = await asyncio.to_thread(parse_markdown, text, source=source)
        existing = await self.find(guild_id, name)
        if existing is not None:
            if not self.may_change(existing, by):
                raise SkillExists(name)
            if not replace_existing:
                raise InvalidSkill(
                    "name",
                    f"the skill `{name}` already exists; import with replace to save the "
                    "file as its next version",
                )
        shown = "".join(c if c.isprintable() else "?" for c in source)[:80]
        return await self.save(guild_id, name, spec, by=by, note=f"imported from {shown}")

    # --- forgetting ---------------------------------------------------------------

    async def export_user_data(self, user_id: str) -> dict[str, Any]:
        """The skills the member owns (each with its versions), the versions they wrote
        on others' skills, and the schedules they made, as stored."""
        if not user_id:
            return {"skills": [], "versions_on_others_skills": [], "schedules": []}
        async with self._sessions() as session:
            owned = list(
                await session.scalars(
                    select(Skill).where(col(Skill.owner_id) == user_id).order_by(col(Skill.id))
                )
            )
            ids = [s.id for s in owned]
            versions = list(
                await session.scalars(
                    select(SkillVersion)
                    .where(
                        col(SkillVersion.skill_id).in_(ids)
                        | (col(SkillVersion.created_by) == user_id)
                    )
                    .order_by(col(SkillVersion.skill_id), col(SkillVersion.version))
                )
            )
            schedules = await session.scalars(
                select(Schedule)
                .where(col(Schedule.created_by) == user_id)
                .order_by(col(Schedule.id))
            )
            return {
                "skills": [
                    {
                        **skill.model_dump(mode="json"),
                        "versions": [
                            v.model_dump(mode="json") for v in versions if v.skill_id == skill.id
                        ],
                    }
                    for skill in owned
                ],
                "versions_on_others_skills": [
                    v.model_dump(mode="json") for v in versions if v.skill_id not in ids
                ],
                "schedules": [s.model_dump(mode="json") for s in schedules],
            }

    async def delete_user_data(self, user_id: str) -> int:
        """Delete the skills a member owns (their versions and schedules with them) and
        the schedules they made on others' skills; returns how many skills, versions and
        schedules went (a schedule's slots go with it, uncounted)."""
        if not user_id:
            return 0
        async with self._write() as session:
            owned = select(col(Skill.id)).where(col(Skill.owner_id) == user_id)
            gone = await self._delete_schedules(
                session, (col(Schedule.created_by) == user_id) | col(Schedule.skill_id).in_(owned)
            )
            for stmt in (
                sa_delete(SkillVersion).where(col(SkillVersion.skill_id).in_(owned)),
                sa_delete(Skill).where(col(Skill.owner_id) == user_id),
            ):
                gone += _count(await session.execute(stmt))
            # A version this member wrote on someone else's skill keeps no name.
            await session.execute(
                update(SkillVersion)
                .where(col(SkillVersion.created_by) == user_id)
                .values(created_by="")
            )
            return gone

    # --- rules --------------------------------------------------------------------

    async def check_spec(self, guild_id: str | None, spec: SkillSpec, *, by: Caller) -> SkillSpec:
        """``spec`` tidied and checked as :meth:`save` checks it (fields, tier, persona,
        tools at ``by``'s privilege); raises :class:`InvalidSkill` naming the field.

        For the cog to refuse a modal's input before anything else happens.
        """
        spec = validate_spec(spec)
        if spec.tier is not None and self._tiers and spec.tier not in self._tiers:
            raise InvalidSkill(
                "tier", f"not a tier of this deployment; known tiers: {', '.join(self._tiers)}"
            )
        if (
            spec.persona is not None
            and self._personas is not None
            and await self._personas.find(guild_id, spec.persona) is None
        ):
            raise InvalidSkill("persona", f"no persona named `{spec.persona}`; try /persona list")
        problem = self._tools.grant_refusal(spec.tools, by.privilege)
        if problem is not None:
            raise InvalidSkill("tools", problem)
        return spec

    @staticmethod
    def _check_note(note: str) -> str:
        note = " ".join(note.split())
        if len(note) > NOTE_MAX:
            raise InvalidSkill("note", f"at most {NOTE_MAX} characters (got {len(note)})")
        return note

    # --- queries ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        """One write transaction, committed when the block ends, rolled back on error."""
        async with self._sessions() as session, session.begin():
            await session.connection(execution_options=_IMMEDIATE)
            yield session

    @staticmethod
    async def _row(
        session: AsyncSession, guild_id: str, name: str, *, lock: bool = False
    ) -> Skill | None:
        stmt = select(Skill).where(col(Skill.guild_id) == guild_id, col(Skill.name) == name)
        if lock:
            stmt = stmt.with_for_update()  # PostgreSQL; SQLite already holds the write lock
        found: Skill | None = await session.scalar(stmt)
        return found

    @staticmethod
    async def _add_version(
        session: AsyncSession,
        row: Skill,
        spec: SkillSpec,
        *,
        by: Caller,
        note: str,
        output_schema: dict[str, Any] | None = None,
        description: str | None = None,
    ) -> SkillVersion:
        assert row.id is not None
        latest = await session.scalar(
            select(func.max(col(SkillVersion.version))).where(col(SkillVersion.skill_id) == row.id)
        )
        number = int(latest or 0) + 1
        added = _version_row(
            row.id, number, spec, created_by=by.user_id, note=note, output_schema=output_schema
        )
        session.add(added)
        row.current_version = number
        row.description = spec.description if description is None else description
        row.updated_at = utcnow()
        session.add(row)
        await session.flush()
        return added

    @staticmethod
    async def _delete_schedules(session: AsyncSession, where: Any) -> int:
        """Delete the schedules ``where`` selects, their slots first; how many schedules."""
        ids = select(col(Schedule.id)).where(where)
        await session.execute(sa_delete(ScheduleSlot).where(col(ScheduleSlot.schedule_id).in_(ids)))
        return _count(await session.execute(sa_delete(Schedule).where(where)))
