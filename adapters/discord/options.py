"""Slash-command options shared by cogs: transformers and autocomplete.

A cog may not import another cog, so what more than one cog offers lives here: the
persona option (a name typed in a command -> the :class:`~personas.model.Persona`,
with autocomplete on the guild's personas, 25 at most), the member option
(:data:`MemberArg` -> :class:`MemberRef`), times typed as ``7d`` or a date
(:data:`WhenArg`), and autocomplete on run ids and skills from the audit trail
(:func:`run_autocomplete`, :func:`skill_autocomplete`). Each reads the app through
a small protocol (:class:`HasPersonas`, :class:`HasRunSearch`). Who may see the
choices is the command's business: the command tree runs a command's checks before
any of its autocompletes (:func:`adapters.discord.identity.gate_autocomplete`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import discord
from discord import app_commands

from adapters.discord.client import CoterieClient
from adapters.services.errors import InvalidSetting
from adapters.services.when import parse_when
from executor.agent import Caller
from personas.model import Persona

__all__ = [
    "CHOICE_NAME_MAX",
    "MAX_CHOICES",
    "HasPersonas",
    "HasRunSearch",
    "MemberArg",
    "MemberRef",
    "MemberTransformer",
    "PersonaArg",
    "PersonaSearch",
    "PersonaTransformer",
    "RunLike",
    "RunSearch",
    "WhenArg",
    "WhenTransformer",
    "choice_label",
    "guild_key",
    "member_ref",
    "persona_autocomplete",
    "run_autocomplete",
    "run_choice_label",
    "skill_autocomplete",
]

MAX_CHOICES = 25  # Discord shows at most 25 autocomplete choices
CHOICE_NAME_MAX = 100


class PersonaSearch(Protocol):
    """What the options need of ``personas.PersonaStore``."""

    async def get(self, guild_id: str, name: str) -> Persona: ...

    async def search(
        self, guild_id: str, typed: str = ..., *, limit: int = ...
    ) -> list[Persona]: ...


class HasPersonas(Protocol):
    @property
    def personas(self) -> PersonaSearch: ...


def guild_key(interaction: discord.Interaction[Any]) -> str:
    """The guild's id as the stores key it ("" in a DM)."""
    return str(interaction.guild_id) if interaction.guild_id else ""


def choice_label(name: str, description: str = "") -> str:
    label = f"{name} — {description}" if description else name
    return label if len(label) <= CHOICE_NAME_MAX else label[: CHOICE_NAME_MAX - 1] + "…"


async def persona_autocomplete(
    interaction: discord.Interaction[CoterieClient[HasPersonas]], current: str
) -> list[app_commands.Choice[str]]:
    found = await interaction.client.app.personas.search(
        guild_key(interaction), current, limit=MAX_CHOICES
    )
    return [
        app_commands.Choice(name=choice_label(p.name, p.description), value=p.name)
        for p in found[:MAX_CHOICES]
    ]


class PersonaTransformer(app_commands.Transformer[CoterieClient[HasPersonas]]):
    """A persona name typed in a slash command -> the :class:`Persona` it names.

    An unknown name raises ``PersonaNotFound`` ("no persona named X; try /persona
    list"); discord.py wraps it in a ``TransformerError`` whose cause the renderer shows.
    """

    async def transform(
        self, interaction: discord.Interaction[CoterieClient[HasPersonas]], value: Any
    ) -> Persona:
        return await interaction.client.app.personas.get(guild_key(interaction), str(value))

    async def autocomplete(  # type: ignore[override]
        self, interaction: discord.Interaction[CoterieClient[HasPersonas]], value: str
    ) -> list[app_commands.Choice[str]]:
        return await persona_autocomplete(interaction, value)


PersonaArg = app_commands.Transform[Persona, PersonaTransformer]


# --- members -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberRef:
    """A member picked in a slash command: their id, the name to show, and (when
    Discord sent the guild member) their roles, which pick a role's budget."""

    user_id: str
    display_name: str
    roles: tuple[str, ...] = ()
    guild_id: str | None = None

    @property
    def mention(self) -> str:
        return f"<@{self.user_id}>"

    def caller(self) -> Caller:
        return Caller(
            user_id=self.user_id,
            display_name=self.display_name,
            guild_id=self.guild_id,
            roles=self.roles,
        )


def member_ref(user: discord.User | discord.Member | discord.abc.User) -> MemberRef:
    if isinstance(user, discord.Member):
        return MemberRef(
            user_id=str(user.id),
            display_name=user.display_name,
            roles=tuple(str(r.id) for r in user.roles if not r.is_default()),
            guild_id=str(user.guild.id),
        )
    return MemberRef(user_id=str(user.id), display_name=user.display_name)


class MemberTransformer(app_commands.Transformer[Any]):
    """A user option (Discord's member picker) -> :class:`MemberRef`."""

    @property
    def type(self) -> discord.AppCommandOptionType:
        return discord.AppCommandOptionType.user

    async def transform(self, interaction: discord.Interaction[Any], value: Any) -> MemberRef:
        if isinstance(value, discord.abc.User):
            return member_ref(value)
        return MemberRef(user_id=str(value), display_name=str(value))


MemberArg = app_commands.Transform[MemberRef, MemberTransformer]


# --- times -----------------------------------------------------------------------------


class WhenTransformer(app_commands.Transformer[Any]):
    """``7d``, ``2h``, ``2w`` back, or an ISO date -> an aware datetime."""

    async def transform(self, interaction: discord.Interaction[Any], value: Any) -> datetime:
        try:
            return parse_when(str(value))
        except InvalidSetting as exc:
            # Why: discord.py wraps it in a TransformerError; the renderer shows the cause.
            raise app_commands.TransformerError(
                str(value), discord.AppCommandOptionType.string, self
            ) from exc


WhenArg = app_commands.Transform[datetime, WhenTransformer]


# --- runs and skills (the audit) ---------------------------------------------------


class RunLike(Protocol):
    """What a run's choice shows (an audit row)."""

    @property
    def run_id(self) -> str: ...
    @property
    def persona(self) -> str | None: ...
    @property
    def skill(self) -> str | None: ...
    @property
    def agent(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def user_name(self) -> str: ...
    @property
    def started_at(self) -> datetime: ...


class RunSearch(Protocol):
    """What the run and skill options need of the audit (``AuditService``)."""

    async def recent_runs(
        self, *, guild_id: str | None = ..., typed: str = ..., limit: int = ...
    ) -> Sequence[RunLike]: ...

    async def recent_skills(
        self, *, guild_id: str | None = ..., typed: str = ..., limit: int = ...
    ) -> list[str]: ...


class HasRunSearch(Protocol):
    @property
    def audit_service(self) -> RunSearch: ...


def _ago(when: datetime) -> str:
    seconds = max((datetime.now(UTC) - when).total_seconds(), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return "just now"


def run_choice_label(run: RunLike) -> str:
    who = run.skill or run.persona or run.agent
    by = f" · {run.user_name}" if run.user_name else ""
    return choice_label(run.run_id[:12], f"{who} · {run.status}{by} · {_ago(run.started_at)}")


async def run_autocomplete(
    interaction: discord.Interaction[CoterieClient[HasRunSearch]], current: str
) -> list[app_commands.Choice[str]]:
    """Recent runs here, newest first, whose id starts with what was typed."""
    runs = await interaction.client.app.audit_service.recent_runs(
        guild_id=str(interaction.guild_id) if interaction.guild_id else None,
        typed=current,
        limit=MAX_CHOICES,
    )
    return [app_commands.Choice(name=run_choice_label(r), value=r.run_id) for r in runs]


async def skill_autocomplete(
    interaction: discord.Interaction[CoterieClient[HasRunSearch]], current: str
) -> list[app_commands.Choice[str]]:
    """Skills that ran here, most recent first (deleted ones too: the audit keeps them)."""
    names = await interaction.client.app.audit_service.recent_skills(
        guild_id=str(interaction.guild_id) if interaction.guild_id else None,
        typed=current,
        limit=MAX_CHOICES,
    )
    return [app_commands.Choice(name=choice_label(n), value=n) for n in names[:MAX_CHOICES]]
