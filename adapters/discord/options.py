"""Slash-command options shared by cogs: transformers and autocomplete.

A cog may not import another cog, so what more than one cog offers lives here: the
persona option (a name typed in a command -> the :class:`~personas.model.Persona`,
with autocomplete on the guild's personas, 25 at most). Each reads the app through
the small :class:`HasPersonas` protocol.
"""

from __future__ import annotations

from typing import Any, Protocol

import discord
from discord import app_commands

from adapters.discord.client import CoterieClient
from personas.model import Persona

__all__ = [
    "CHOICE_NAME_MAX",
    "MAX_CHOICES",
    "HasPersonas",
    "PersonaArg",
    "PersonaSearch",
    "PersonaTransformer",
    "choice_label",
    "guild_key",
    "persona_autocomplete",
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
