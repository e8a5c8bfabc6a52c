"""Memory for every trigger, host-neutral: who may remember where, what a prompt gets,
what a run saved, the member's own notes, and the guild's lore.

- :meth:`MemoryService.policy`: memory is on unless the deployment turned it off
  (``COTERIE_MEMORY_ENABLED``), the guild did (``/config set memory:False``), or, in a
  DM, DMs are off for the deployment (``COTERIE_ALLOW_DMS``); the guild also chooses
  whether its personas share what they know about a member there (``memory_shared``)
  and whether the member confirms each save with a button (``memory_confirm``). The
  member's own switch (``/memory off``) is the store's.
- :meth:`MemoryService.prepare`: before a run, the member's notes for this persona
  and place (when the persona may remember) and the persona's lore (in a guild),
  within the token budget, in the system prompt; where memory is off, the agent loses
  its memory tools.
- :meth:`MemoryService.saved_in`: what a run's ``remember`` calls kept, for the
  delivery's "Saved: ..." line (the model never writes it).
- the member's notes (``/memory``) and the lore (admins: Manage Server), checked here
  as well as in the cog.
"""

from __future__ import annotations

import builtins as _builtins
import logging
from dataclasses import replace
from datetime import timedelta
from typing import Any

from adapters.services.errors import InvalidSetting
from adapters.services.ports import GuildConfig, GuildSettingsStore
from executor.agent import Caller, DeliveryReport, Privilege, RunnableAgent, RunResult
from executor.ports import Clock, Delivery, ForwardingDelivery, RealClock
from executor.tools.sources import FunctionSource
from memory.checks import clean_note
from memory.errors import NoteRefused
from memory.notes import Caps, Note, NoteStore, Scope, place_of
from memory.prompt import recall_for_prompt, render
from memory.tools import MEMORY_TOOLS, MemoryPolicy, memory_source

__all__ = ["LORE_MAX_PER_PERSONA", "MemoryService", "SavedNotes", "saved_line"]

log = logging.getLogger(__name__)

LORE_MAX_PER_PERSONA = 20


class MemoryService:
    """``store``: the notes; ``guild_settings``: the guilds' memory switches (None:
    every guild on, not shared, no confirm)."""

    def __init__(
        self,
        store: NoteStore,
        *,
        guild_settings: GuildSettingsStore | None = None,
        enabled: bool = True,
        allow_dms: bool = True,
        caps: Caps | None = None,
        prompt_tokens: int = 600,
        retention_days: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.guild_settings = guild_settings
        self.enabled = enabled
        self.allow_dms = allow_dms
        self.caps = caps or Caps()
        self.prompt_tokens = prompt_tokens
        self.retention_days = retention_days
        self.clock = clock or RealClock()

    # --- policy ------------------------------------------------------------------------

    async def _config(self, guild_id: str | None) -> GuildConfig | None:
        if guild_id is None or self.guild_settings is None:
            return None
        return await self.guild_settings.guild(guild_id)

    def _policy(self, guild_id: str | None, config: GuildConfig | None) -> MemoryPolicy:
        if not self.enabled:
            return MemoryPolicy(enabled=False, why_off="memory is off on this deployment")
        if guild_id is None:
            if not self.allow_dms:
                return MemoryPolicy(enabled=False, why_off="memory is off in DMs")
            return MemoryPolicy(caps=self.caps)
        if config is not None and not config.memory_on:
            return MemoryPolicy(
                enabled=False, why_off="memory is off in this server (/config set memory)"
            )
        return MemoryPolicy(
            shared=bool(config and config.memory_shared),
            confirm=bool(config and config.memory_confirm),
            caps=self.caps,
        )

    async def policy(self, caller: Caller) -> MemoryPolicy:
        """What memory may do for ``caller`` where they are (the tools ask this)."""
        return self._policy(caller.guild_id, await self._config(caller.guild_id))

    def source(self) -> FunctionSource:
        """The ``memory`` tool source (remember, recall, forget_note) under this policy."""
        return memory_source(self.store, self.policy)

    # --- a run -------------------------------------------------------------------------

    @staticmethod
    def remembers(agent: RunnableAgent) -> bool:
        """Whether ``agent`` was granted a memory tool (only those see the notes)."""
        return any(name in agent.tools for name in MEMORY_TOOLS)

    @staticmethod
    def persona_of(agent: RunnableAgent) -> str:
        return agent.persona or agent.name

    async def prepare(
        self,
        caller: Caller,
        agent: RunnableAgent,
        message: str,
        *,
        config: GuildConfig | None = None,
    ) -> tuple[RunnableAgent, bool]:
        """``agent`` for this run, and whether it may remember.

        Where memory is on (here and for the member), an agent granted a memory tool gets
        the member's notes for this persona and place in its system prompt, within the
        token budget; in a guild, every persona gets its lore. Where it is off, the
        memory tools are taken from the agent (the model never sees them).
        ``config``: the guild's settings when the caller already has them."""
        guild_id = caller.guild_id
        if config is None:
            config = await self._config(guild_id)
        policy = self._policy(guild_id, config)
        if not policy.enabled:
            return self._without_tools(agent), False
        persona = self.persona_of(agent)
        notes = self.remembers(agent)
        if (not notes and guild_id is None) or self.prompt_tokens <= 0:
            return agent, notes  # nothing to show: no notes, and DMs have no lore
        recollection = await recall_for_prompt(
            self.store,
            Scope(caller.user_id, None if policy.shared else persona, place_of(guild_id)),
            message if notes else "",
            budget_tokens=self.prompt_tokens,
            newest=3 if notes else 0,
            matches=8 if notes else 0,
            lore_persona=persona if guild_id is not None else None,
        )
        if recollection.off:
            agent, notes = self._without_tools(agent), False
        section = render(recollection, caller.display_name)
        if section:
            agent = replace(agent, system_prompt=f"{agent.system_prompt}\n\n{section}".strip())
        return agent, notes

    @staticmethod
    def _without_tools(agent: RunnableAgent) -> RunnableAgent:
        if not any(name in agent.tools for name in MEMORY_TOOLS):
            return agent
        return replace(agent, tools=tuple(t for t in agent.tools if t not in MEMORY_TOOLS))

    async def saved_in(self, user_id: str, run_id: str) -> _builtins.list[Note]:
        """The notes run ``run_id`` kept about ``user_id`` (and still has), oldest first."""
        notes = await self.store.list(user_id, run_id=run_id, limit=50)
        return _builtins.list(reversed(notes))

    def telling_saves(self, delivery: Delivery, user_id: str) -> Delivery:
        """``delivery``, ending the answer with "Saved: ..." for each note the run kept
        (read from the store by the run's id when it finishes, never from the model)."""
        return SavedNotes(delivery, self, user_id)

    # --- the member's notes ---------------------------------------------------------

    async def notes(
        self, user_id: str, *, persona: str | None = None, limit: int = 10, offset: int = 0
    ) -> _builtins.list[Note]:
        return await self.store.list(user_id, persona=persona, limit=limit, offset=offset)

    async def count(self, user_id: str, *, persona: str | None = None) -> int:
        return await self.store.count(user_id, persona=persona)

    async def note(self, user_id: str, note_id: int) -> Note:
        """The member's note ``note_id`` (``NoteNotFound`` when it is not theirs)."""
        return await self.store.get(user_id, note_id)

    async def forget(self, user_id: str, note_id: int) -> Note:
        return await self.store.delete(user_id, note_id)

    async def forget_all(self, user_id: str, *, persona: str | None = None) -> int:
        return await self.store.delete_all(user_id, persona=persona)

    async def set_off(self, user_id: str, off: bool) -> None:
        """The member's own switch: off, no persona reads or keeps notes about them."""
        await self.store.set_off(user_id, off)

    async def is_off(self, user_id: str) -> bool:
        return await self.store.is_off(user_id)

    async def export(self, user_id: str) -> dict[str, Any]:
        return await self.store.export_user_data(user_id)

    # --- lore and counts (admins) ---------------------------------------------------

    @staticmethod
    def _check_admin(actor: Caller) -> None:
        if actor.privilege < Privilege.ADMIN:
            raise InvalidSetting("Only a server admin (Manage Server) can do that.")

    async def add_lore(self, actor: Caller, guild_id: str, persona: str, text: str) -> Note:
        """A fact about the server that ``persona`` uses in every member's conversation."""
        self._check_admin(actor)
        try:
            cleaned = clean_note(text)
        except NoteRefused as exc:
            raise InvalidSetting(f"Not kept: {exc}.") from exc
        place = place_of(guild_id)
        if len(await self.store.lore(place, persona)) >= LORE_MAX_PER_PERSONA:
            raise InvalidSetting(
                f"{persona} already has {LORE_MAX_PER_PERSONA} lore entries here; remove one "
                "first (/memory lore remove)."
            )
        return await self.store.add_lore(place, persona, cleaned, by=actor.user_id)

    async def lore(self, guild_id: str, persona: str | None = None) -> _builtins.list[Note]:
        place = place_of(guild_id)
        if persona is None:
            return await self.store.all_lore(place)
        return await self.store.lore(place, persona)

    async def remove_lore(self, actor: Caller, guild_id: str, note_id: int) -> Note:
        self._check_admin(actor)
        return await self.store.delete_lore(place_of(guild_id), note_id)

    async def counts(self, actor: Caller, guild_id: str) -> dict[str, int]:
        """How many notes personas keep about each member here (never what they say)."""
        self._check_admin(actor)
        return await self.store.counts_by_member(place_of(guild_id))

    # --- retention ------------------------------------------------------------------

    async def purge_expired(self) -> int:
        """Delete notes older than the retention (none when retention is off)."""
        if self.retention_days is None:
            return 0
        cutoff = self.clock.now() - timedelta(days=self.retention_days)
        gone = await self.store.purge_older_than(cutoff)
        if gone:
            log.info("deleted %d note(s) older than %d days", gone, self.retention_days)
        return gone


SAVED_LINE_MAX = 300


def saved_line(note: Note) -> str:
    """What the member reads under the answer for a note the run kept."""
    text = note.text if len(note.text) <= SAVED_LINE_MAX else note.text[: SAVED_LINE_MAX - 1] + "…"
    return f"Saved: {text} (#{note.id}; /memory forget {note.id} to drop it)"


class SavedNotes(ForwardingDelivery):
    """A delivery that ends the answer with what the run's ``remember`` calls kept."""

    __slots__ = ("_memory", "_user_id")

    def __init__(self, inner: Delivery, memory: MemoryService, user_id: str) -> None:
        super().__init__(inner)
        self._memory = memory
        self._user_id = user_id

    async def finish(self, result: RunResult) -> DeliveryReport | None:
        try:
            saved = await self._memory.saved_in(self._user_id, result.run_id)
        except Exception:
            # Why not raise: the answer must still be delivered; the audit has the call.
            log.exception("could not read the notes run %s saved", result.run_id)
            saved = []
        for note in saved:
            self._inner.note(saved_line(note))
        # Why return it: whether the answer reached Discord is the inner delivery's to say.
        return await self._inner.finish(result)
