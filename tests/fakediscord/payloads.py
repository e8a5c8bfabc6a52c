"""Builders for Discord API payloads, shaped like the real ones (API v10).

Only the fields discord.py reads are filled in, with realistic defaults; every
builder returns a plain ``dict`` so a test can tweak it before dispatching.
"""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime
from typing import Any

DISCORD_EPOCH_MS = 1420070400000

# Permission bits (https://discord.com/developers/docs/topics/permissions).
ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
MANAGE_WEBHOOKS = 1 << 29
USE_APPLICATION_COMMANDS = 1 << 31
CREATE_PUBLIC_THREADS = 1 << 35
SEND_MESSAGES_IN_THREADS = 1 << 38
ALL_PERMISSIONS = (1 << 53) - 1

EVERYONE_PERMISSIONS = (
    VIEW_CHANNEL
    | SEND_MESSAGES
    | READ_MESSAGE_HISTORY
    | ADD_REACTIONS
    | EMBED_LINKS
    | ATTACH_FILES
    | USE_APPLICATION_COMMANDS
    | CREATE_PUBLIC_THREADS
    | SEND_MESSAGES_IN_THREADS
)
BOT_PERMISSIONS = EVERYONE_PERMISSIONS | MANAGE_WEBHOOKS


class Snowflakes:
    """Increasing snowflake ids whose timestamp part is the current time."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def __call__(self, *, shard: int | None = None, shard_count: int = 1) -> int:
        """A new id; with ``shard``, one whose guild Discord routes to that shard of
        ``shard_count`` ((id >> 22) % count: the timestamp, moved a few ms ahead)."""
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        if shard is not None:
            ms += (shard - ms) % shard_count
        return (ms << 22) | (next(self._counter) & 0x3FFFFF)


def iso_now() -> str:
    return datetime.now(UTC).isoformat()


def user(user_id: int, username: str, *, bot: bool = False) -> dict[str, Any]:
    return {
        "id": str(user_id),
        "username": username,
        "discriminator": "0",
        "global_name": None if bot else username.capitalize(),
        "avatar": None,
        "bot": bot,
        "public_flags": 0,
    }


def role(
    role_id: int, name: str, permissions: int, *, position: int = 0, managed: bool = False
) -> dict[str, Any]:
    return {
        "id": str(role_id),
        "name": name,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "icon": None,
        "unicode_emoji": None,
        "position": position,
        "permissions": str(permissions),
        "managed": managed,
        "mentionable": False,
        "flags": 0,
    }


def member(user_payload: dict[str, Any], roles: list[int]) -> dict[str, Any]:
    return {
        "user": user_payload,
        "nick": None,
        "avatar": None,
        "roles": [str(r) for r in roles],
        "joined_at": iso_now(),
        "premium_since": None,
        "deaf": False,
        "mute": False,
        "flags": 0,
        "pending": False,
    }


def text_channel(channel_id: int, guild_id: int, name: str, *, position: int = 0) -> dict[str, Any]:
    return {
        "id": str(channel_id),
        "type": 0,
        "guild_id": str(guild_id),
        "name": name,
        "position": position,
        "permission_overwrites": [],
        "nsfw": False,
        "topic": None,
        "last_message_id": None,
        "rate_limit_per_user": 0,
        "parent_id": None,
        "flags": 0,
    }


def thread_channel(
    thread_id: int,
    guild_id: int,
    parent_id: int,
    owner_id: int,
    name: str,
    *,
    thread_type: int = 11,
    auto_archive_duration: int = 1440,
) -> dict[str, Any]:
    return {
        "id": str(thread_id),
        "type": thread_type,
        "guild_id": str(guild_id),
        "parent_id": str(parent_id),
        "owner_id": str(owner_id),
        "name": name,
        "last_message_id": None,
        "rate_limit_per_user": 0,
        "message_count": 0,
        "member_count": 1,
        "total_message_sent": 0,
        "flags": 0,
        "applied_tags": [],
        "thread_metadata": {
            "archived": False,
            "auto_archive_duration": auto_archive_duration,
            "archive_timestamp": iso_now(),
            "locked": False,
            "invitable": True,
            "create_timestamp": iso_now(),
        },
    }


def dm_channel(channel_id: int, recipient: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(channel_id), "type": 1, "recipients": [recipient], "last_message_id": None}


def message(
    message_id: int,
    channel_id: int,
    author: dict[str, Any],
    content: str,
    *,
    guild_id: int | None = None,
    member_payload: dict[str, Any] | None = None,
    mentions: list[dict[str, Any]] | None = None,
    message_reference: dict[str, Any] | None = None,
    referenced_message: dict[str, Any] | None = None,
    embeds: list[dict[str, Any]] | None = None,
    attachments: list[dict[str, Any]] | None = None,
    components: list[dict[str, Any]] | None = None,
    webhook_id: int | None = None,
    flags: int = 0,
    message_type: int = 0,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": str(message_id),
        "channel_id": str(channel_id),
        "author": author,
        "content": content,
        "timestamp": iso_now(),
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": mentions or [],
        "mention_roles": [],
        "attachments": attachments or [],
        "embeds": embeds or [],
        "components": components or [],
        "pinned": False,
        "type": message_type,
        "flags": flags,
    }
    if guild_id is not None:
        payload["guild_id"] = str(guild_id)
    if member_payload is not None:
        payload["member"] = {k: v for k, v in member_payload.items() if k != "user"}
    if message_reference is not None:
        payload["message_reference"] = message_reference
        payload["type"] = 19 if message_type == 0 else message_type
    if referenced_message is not None:
        payload["referenced_message"] = referenced_message
    if webhook_id is not None:
        payload["webhook_id"] = str(webhook_id)
    return payload


def option_type(value: Any) -> int:
    """The application command option type for a Python value."""
    if isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return 4
    if isinstance(value, float):
        return 10
    return 3
