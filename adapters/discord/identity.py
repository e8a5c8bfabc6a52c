"""Who is asking: a Discord user in a place -> ``executor.agent.Caller`` with a ``Privilege``.

The policy, highest first:

- **owner**: the people who run this coterie: ``settings.owner_ids`` plus the
  application's owner (or its team's members), passed in as ``owner_ids``. A
  guild's owner is *not* an owner of the bot: they administer their server,
  so they are an admin there (Discord gives them every permission).
- **admin**: Administrator or Manage Server in the guild.
- **moderator**: Manage Messages in the guild.
- **user**: everyone else, and everyone in a DM who is not an owner.

Guild permissions (role-based, not channel overwrites) decide, so the same
person has the same privilege in every channel of a guild. Pure functions over
discord.py objects; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, TypeVar

import discord
from discord import app_commands

from executor.agent import Caller, Privilege

__all__ = [
    "PermissionDenied",
    "app_owner_ids",
    "caller_from_interaction",
    "caller_from_message",
    "caller_of",
    "privilege_of",
    "require_privilege",
]

T = TypeVar("T")

_NAMES = {
    Privilege.OWNER: "an owner of this bot",
    Privilege.ADMIN: "a server admin (Manage Server)",
    Privilege.MODERATOR: "a moderator (Manage Messages)",
    Privilege.USER: "a member",
}


class PermissionDenied(app_commands.CheckFailure):
    """A server-side privilege check failed; the message is written for the person."""

    def __init__(self, needed: Privilege) -> None:
        self.needed = needed
        super().__init__(f"Only {_NAMES[needed]} can use this command.")


def app_owner_ids(app_info: discord.AppInfo | None) -> frozenset[int]:
    """The application's owner, or every member of the team that owns it."""
    if app_info is None:
        return frozenset()
    if app_info.team is not None:
        return frozenset(m.id for m in app_info.team.members)
    return frozenset({app_info.owner.id})


def privilege_of(
    user: discord.Member | discord.User | discord.abc.User,
    *,
    owner_ids: Collection[int] = (),
) -> Privilege:
    """The privilege of ``user``: a ``Member`` carries its guild; a ``User`` is a DM."""
    if user.id in owner_ids:
        return Privilege.OWNER
    if not isinstance(user, discord.Member):
        return Privilege.USER
    perms = user.guild_permissions
    if perms.administrator or perms.manage_guild:
        return Privilege.ADMIN
    if perms.manage_messages:
        return Privilege.MODERATOR
    return Privilege.USER


def caller_of(
    user: discord.Member | discord.User | discord.abc.User,
    *,
    channel_id: int | None = None,
    owner_ids: Collection[int] = (),
) -> Caller:
    """A ``Caller`` for ``user`` in ``channel_id`` (its guild, if a Member)."""
    guild_id: str | None = None
    roles: tuple[str, ...] = ()
    if isinstance(user, discord.Member):
        guild_id = str(user.guild.id)
        roles = tuple(str(r.id) for r in user.roles if not r.is_default())
    return Caller(
        user_id=str(user.id),
        display_name=user.display_name,
        privilege=privilege_of(user, owner_ids=owner_ids),
        guild_id=guild_id,
        channel_id=str(channel_id) if channel_id is not None else None,
        roles=roles,
    )


def caller_from_message(message: discord.Message, *, owner_ids: Collection[int] = ()) -> Caller:
    return caller_of(message.author, channel_id=message.channel.id, owner_ids=owner_ids)


def caller_from_interaction(
    interaction: discord.Interaction[Any], *, owner_ids: Collection[int] | None = None
) -> Caller:
    """The interaction's caller; ``owner_ids`` default to the client's ``owner_user_ids``."""
    if owner_ids is None:
        owner_ids = _client_owner_ids(interaction.client)
    return caller_of(interaction.user, channel_id=interaction.channel_id, owner_ids=owner_ids)


def _client_owner_ids(client: Any) -> Collection[int]:
    # Why duck-typed: the client lives in bot/, above adapters/ in the layers.
    ids = getattr(client, "owner_user_ids", None)
    return frozenset(ids) if ids is not None else frozenset()


def require_privilege(needed: Privilege) -> Callable[[T], T]:
    """An ``app_commands.check``: the server-side twin of ``default_permissions``."""

    async def predicate(interaction: discord.Interaction[Any]) -> bool:
        if caller_from_interaction(interaction).privilege < needed:
            raise PermissionDenied(needed)
        return True

    return app_commands.check(predicate)
