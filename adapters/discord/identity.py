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
discord.py objects; no I/O, except :func:`gate_autocomplete`, which answers an
autocomplete the caller may not see with no choices.

Every check a command makes, its autocomplete makes: discord.py runs a command's
checks before its callback but not before its autocomplete, so an autocomplete is an
unauthenticated read unless the tree asks (``CoterieTree.interaction_check`` calls
:func:`gate_autocomplete` for every autocomplete of every command).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any, TypeVar

import discord
from discord import app_commands

from executor.agent import Caller, Privilege

__all__ = [
    "PermissionDenied",
    "PrivilegeCheck",
    "app_owner_ids",
    "caller_from_interaction",
    "caller_from_message",
    "caller_of",
    "gate_autocomplete",
    "may_run",
    "privilege_of",
    "require_privilege",
    "required_privilege",
]

T = TypeVar("T")

log = logging.getLogger("coterie.discord.identity")

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


class PrivilegeCheck:
    """The predicate :func:`require_privilege` adds to a command: raises
    :class:`PermissionDenied` below ``needed``. A class, not a closure, so the command
    tree can tell what a command needs (:func:`required_privilege`)."""

    __slots__ = ("needed",)

    def __init__(self, needed: Privilege) -> None:
        self.needed = needed

    async def __call__(self, interaction: discord.Interaction[Any]) -> bool:
        if caller_from_interaction(interaction).privilege < self.needed:
            raise PermissionDenied(self.needed)
        return True


def require_privilege(needed: Privilege) -> Callable[[T], T]:
    """An ``app_commands.check``: the server-side twin of ``default_permissions``.
    The command's autocompletes are held to it too (:func:`gate_autocomplete`)."""
    return app_commands.check(PrivilegeCheck(needed))


def required_privilege(command: app_commands.Command[Any, ..., Any]) -> Privilege:
    """The privilege ``command``'s checks ask for (``USER`` when it has none)."""
    return max(
        (c.needed for c in command.checks if isinstance(c, PrivilegeCheck)),
        default=Privilege.USER,
    )


async def may_run(
    command: app_commands.Command[Any, ..., Any], interaction: discord.Interaction[Any]
) -> bool:
    """Whether ``command``'s checks (its group's and cog's included) pass for
    ``interaction``: the same ones discord.py runs before the callback."""
    try:
        # Why the private method: it is exactly what discord.py runs before a
        # callback (parent group, cog, then the command's own checks); a copy would
        # drift from it.
        return await command._check_can_run(interaction)
    except app_commands.CheckFailure:
        return False


async def gate_autocomplete(interaction: discord.Interaction[Any]) -> bool:
    """For an autocomplete: False, after answering it with no choices, when the
    caller may not run the command it completes; True otherwise (and for anything
    that is not an autocomplete)."""
    if interaction.type is not discord.InteractionType.autocomplete:
        return True
    command = interaction.command
    if not isinstance(command, app_commands.Command):
        return True  # unknown to the tree: discord.py answers nothing
    try:
        allowed = await may_run(command, interaction)
    except Exception:
        # Why fail closed: a check that breaks must not open the door; discord.py
        # itself logs and drops a failing autocomplete the same way.
        log.exception("a check of /%s failed on an autocomplete", command.qualified_name)
        allowed = False
    if not allowed:
        log.info(
            "autocomplete of /%s refused to user %s", command.qualified_name, interaction.user.id
        )
        if not interaction.response.is_done():
            await interaction.response.autocomplete([])
    return allowed
