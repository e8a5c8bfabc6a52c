"""A wire-level fake Discord: REST API v10 and the gateway, on 127.0.0.1.

The real discord.py client talks to it; see ``README.md`` in this package for
the API and ``plugin.py`` for the pytest fixtures.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import aiohttp
from aiohttp import web

from tests.fakediscord import payloads as p

__all__ = [
    "Call",
    "FakeDiscord",
    "FakeFile",
    "FakeGuild",
    "FakeInteraction",
    "Fault",
    "RateLimits",
    "shard_of",
]

API_PREFIX = "/api/v10"
Json = Any
Handler = Callable[..., Awaitable[tuple[int, Json]]]
T = TypeVar("T")


def shard_of(guild_id: int, shard_count: int) -> int:
    """The shard Discord sends a guild's events to."""
    return (guild_id >> 22) % shard_count


@dataclass(frozen=True, slots=True)
class FakeFile:
    """One file part of a multipart request."""

    field: str
    filename: str | None
    content: bytes
    content_type: str | None


@dataclass(slots=True)
class Call:
    """One REST request the fake answered (or refused with a 404)."""

    method: str
    path: str  # relative to /api/v10, e.g. "/channels/123/messages"
    query: dict[str, str]
    json: Json  # the JSON body; for multipart, the parsed payload_json part
    files: list[FakeFile]
    headers: dict[str, str]
    status: int = 0
    response: Json = None
    unknown: bool = False  # no route matched: answered 404
    # "disconnect" or "reset": the fake dropped the connection instead of answering
    # (status stays 0 unless the request was handled first: ``Fault.landed``).
    fault: str | None = None
    at: float = 0.0  # time.monotonic() when it was answered
    # With rate limits on: (bucket, limit, remaining, resets in seconds) after this one.
    rate: tuple[str, int, int, float] | None = None

    def __repr__(self) -> str:
        dropped = f" ({self.fault})" if self.fault else ""
        return f"<Call {self.method} {self.path} -> {self.status}{dropped}>"


FaultMode = Literal["disconnect", "reset"]


@dataclass(slots=True)
class Fault:
    """Drop the connection of the next ``times`` matching requests: ``disconnect``
    closes it (aiohttp: ``ServerDisconnectedError``), ``reset`` aborts it with a TCP
    RST (``ClientOSError`` errno 104). ``landed``: handle the request first (a message
    is created or edited) and lose only the answer."""

    method: str
    pattern: re.Pattern[str]
    mode: FaultMode = "disconnect"
    times: int = 1
    landed: bool = False
    predicate: Callable[[Call], bool] | None = None

    def matches(self, call: Call) -> bool:
        return (
            self.times > 0
            and call.method == self.method
            and bool(self.pattern.fullmatch(call.path))
            and (self.predicate is None or self.predicate(call))
        )


@dataclass(slots=True)
class RateLimits:
    """Discord's rate limits as its headers tell them (``X-RateLimit-*``) and its 429s
    enforce them: ``(requests, per seconds)`` for each bucket, keyed by the route's
    major parameter (a channel, a webhook), and a global cap per second. The defaults
    are Discord's published ones for messages."""

    message_create: tuple[int, float] = (5, 5.0)  # POST /channels/{c}/messages
    message_edit: tuple[int, float] = (5, 5.0)  # PATCH|DELETE /channels/{c}/messages/{m}
    webhook: tuple[int, float] = (5, 2.0)  # /webhooks/{w}/{token}[/messages/{m}]
    typing: tuple[int, float] = (5, 5.0)
    other: tuple[int, float] = (50, 1.0)
    global_per_s: int = 50

    def bucket(self, method: str, path: str) -> tuple[str, tuple[int, float]]:
        parts = path.strip("/").split("/")
        if parts[0] == "channels" and len(parts) >= 3 and parts[2] == "messages":
            if len(parts) == 3 and method == "POST":
                return f"create:{parts[1]}", self.message_create
            if len(parts) == 4 and method in ("PATCH", "DELETE"):
                return f"edit:{parts[1]}", self.message_edit
        if parts[0] == "channels" and len(parts) == 3 and parts[2] == "typing":
            return f"typing:{parts[1]}", self.typing
        if parts[0] == "webhooks" and len(parts) >= 3:
            return f"webhook:{parts[1]}", self.webhook
        return f"other:{method}:{path}", self.other


@dataclass(slots=True)
class FakeInteraction:
    """An interaction the fake dispatched; its ids locate its responses."""

    id: int
    token: str
    payload: dict[str, Any]

    @property
    def callback_path(self) -> str:
        return f"/interactions/{self.id}/{self.token}/callback"


@dataclass(slots=True)
class FakeGuild:
    id: int
    name: str
    owner_id: int
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)  # by name
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)  # by name
    members: dict[int, dict[str, Any]] = field(default_factory=dict)  # by user id

    def role_id(self, name: str) -> int:
        return int(self.roles[name]["id"])

    def channel_id(self, name: str) -> int:
        return int(self.channels[name]["id"])


def _pattern(path_pattern: str) -> re.Pattern[str]:
    """``{name}`` matches one path segment; the rest is a regular expression."""
    return re.compile(re.sub(r"\{[A-Za-z_][A-Za-z_0-9]*\}", r"[^/]+", path_pattern))


class FakeDiscord:
    """The fake. ``await start()``, point discord.py at it with ``patch_discord()``.

    The default world: one guild "Test Guild" with text channels ``general`` and
    ``random``; roles ``@everyone``, ``admin`` (Administrator), ``manager``
    (Manage Server), ``moderator`` (Manage Messages), ``coterie`` (the bot's
    managed role); members ``bot``, ``owner`` (owns the guild), ``admin``,
    ``manager``, ``moderator`` and ``alice`` (no role), each in ``users`` by name.
    The application id equals the bot user id, as for every application created
    since 2019, and ``token`` starts with the base64 of that id.
    """

    heartbeat_interval_ms = 41250

    def __init__(self, *, echo_messages: bool = False) -> None:
        self.snowflake = p.Snowflakes()
        # Why: a bot created since 2019 has application id == bot user id.
        self.application_id = self.snowflake()
        self.bot_user = p.user(self.application_id, "coterie", bot=True)
        self.token = (
            base64.b64encode(str(self.application_id).encode()).decode().rstrip("=")
            + ".Gx1bVw."
            + secrets.token_urlsafe(27)
        )
        self.users: dict[str, dict[str, Any]] = {"bot": self.bot_user}
        for name in ("owner", "admin", "manager", "moderator", "alice", "bob"):
            self.users[name] = p.user(self.snowflake(), name)
        self.app_owner = self.users["owner"]
        self.echo_messages = echo_messages
        # The application's flags: GATEWAY_MESSAGE_CONTENT_LIMITED (1 << 19), as for an
        # unverified bot whose Message Content intent is switched on in the portal.
        self.application_flags = 1 << 19

        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, dict[str, Any]] = {}
        self.messages: dict[int, list[dict[str, Any]]] = {}  # channel id -> oldest first
        self.webhooks: dict[int, dict[str, Any]] = {}
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}
        self.interactions: dict[str, FakeInteraction] = {}  # by token
        self._originals: dict[str, dict[str, Any]] = {}  # interaction token -> message

        self.calls: list[Call] = []
        #: Connections to drop (:meth:`inject_fault`); consumed as they match.
        self.faults: list[Fault] = []
        #: Rate limits to announce and enforce (None: unlimited, no headers).
        self.rate_limits: RateLimits | None = None
        self.rate_limited: list[Call] = []  # the requests answered 429
        self._windows: dict[str, tuple[float, int]] = {}  # bucket -> (window start, used)
        self._nonces: dict[tuple[int, str], dict[str, Any]] = {}  # (channel, nonce) -> message
        self.gateway_frames: list[dict[str, Any]] = []  # every frame the client sent
        self._changed = asyncio.Condition()
        self._sockets: set[web.WebSocketResponse] = set()
        self._ws: web.WebSocketResponse | None = None  # the last one to IDENTIFY or RESUME
        # Each session's shard as its IDENTIFY said it ([id, count]; [0, 1] unsharded),
        # its sequence number, and the sessions by id (a RESUME keeps its shard).
        self._shard: dict[web.WebSocketResponse, tuple[int, int]] = {}
        self._seqs: dict[web.WebSocketResponse, int] = {}
        self._session_shards: dict[str, tuple[int, int]] = {}
        self._seq = 0
        # What GET /gateway/bot suggests as the shard count.
        self.recommended_shards = 1
        self.session_id = ""
        self.identify_count = 0
        self.resume_count = 0

        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._faults: list[tuple[str, re.Pattern[str], int]] = []  # see fail()
        self._holds: list[tuple[str, re.Pattern[str], asyncio.Event]] = []  # see hold()
        self.held: list[Call] = []  # requests waiting at a hold, in order
        self._install_routes()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.guild = self.add_guild("Test Guild")

    # --- world ----------------------------------------------------------------

    def add_guild(
        self, name: str, *, shard: int | None = None, shard_count: int | None = None
    ) -> FakeGuild:
        """A guild with the default channels, roles and members; with ``shard`` and
        ``shard_count``, one whose id Discord routes to that shard."""
        count = shard_count or self.recommended_shards
        gid = self.snowflake(shard=shard, shard_count=count)
        g = FakeGuild(id=gid, name=name, owner_id=int(self.users["owner"]["id"]))
        g.roles["@everyone"] = p.role(gid, "@everyone", p.EVERYONE_PERMISSIONS)
        g.roles["admin"] = p.role(self.snowflake(), "admin", p.ADMINISTRATOR, position=4)
        g.roles["manager"] = p.role(self.snowflake(), "manager", p.MANAGE_GUILD, position=3)
        g.roles["moderator"] = p.role(self.snowflake(), "moderator", p.MANAGE_MESSAGES, position=2)
        g.roles["coterie"] = p.role(
            self.snowflake(), "coterie", p.BOT_PERMISSIONS, position=1, managed=True
        )
        for i, cname in enumerate(("general", "random")):
            ch = p.text_channel(self.snowflake(), gid, cname, position=i)
            g.channels[cname] = ch
            self.channels[int(ch["id"])] = ch
        role_of = {"bot": "coterie", "admin": "admin", "manager": "manager"}
        role_of["moderator"] = "moderator"
        for uname, u in self.users.items():
            roles = [g.role_id(role_of[uname])] if uname in role_of else []
            g.members[int(u["id"])] = p.member(u, roles)
        self.guilds[gid] = g
        return g

    def user(self, who: str | int | dict[str, Any]) -> dict[str, Any]:
        """A user payload by name ("alice"), id, or payload."""
        if isinstance(who, dict):
            return who
        if isinstance(who, str):
            return self.users[who]
        for u in self.users.values():
            if int(u["id"]) == who:
                return u
        raise KeyError(who)

    def member_permissions(self, guild: FakeGuild, user_id: int) -> int:
        if user_id == guild.owner_id:
            return p.ALL_PERMISSIONS
        m = guild.members[user_id]
        perms = int(guild.roles["@everyone"]["permissions"])
        by_id = {r["id"]: r for r in guild.roles.values()}
        for rid in m["roles"]:
            perms |= int(by_id[rid]["permissions"])
        return p.ALL_PERMISSIONS if perms & p.ADMINISTRATOR else perms

    def guild_of_channel(self, channel_id: int) -> FakeGuild | None:
        ch = self.channels.get(channel_id)
        if ch is None or "guild_id" not in ch:
            return None
        return self.guilds.get(int(ch["guild_id"]))

    def add_thread(
        self, parent_id: int, name: str, *, owner: str | int | dict[str, Any] = "bot"
    ) -> dict[str, Any]:
        """Create a public thread in the fake's state (no gateway event)."""
        parent = self.channels[parent_id]
        owner_id = int(self.user(owner)["id"])
        th = p.thread_channel(self.snowflake(), int(parent["guild_id"]), parent_id, owner_id, name)
        self.channels[int(th["id"])] = th
        return th

    def add_message(
        self, channel_id: int, content: str, *, author: str | int | dict[str, Any] = "bot"
    ) -> dict[str, Any]:
        """A message in the fake's state, as if posted earlier (no gateway event)."""
        return self._new_message(channel_id, {"content": content}, self.user(author), [])

    def history(self, channel_id: int) -> list[dict[str, Any]]:
        """Messages of a channel, oldest first."""
        return self.messages.get(channel_id, [])

    def find_message(self, message_id: int) -> dict[str, Any] | None:
        for msgs in self.messages.values():
            for m in msgs:
                if int(m["id"]) == message_id:
                    return m
        return None

    def message(self, message_id: int) -> dict[str, Any]:
        """A message the fake knows (``find_message`` that raises ``KeyError``)."""
        found = self.find_message(message_id)
        if found is None:
            raise KeyError(f"no message {message_id} in the fake")
        return found

    # --- lifecycle --------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._gateway)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]

    async def close(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @contextmanager
    def patch_discord(self) -> Iterator[None]:
        """Point discord.py's REST base and default gateway at this fake."""
        import discord.gateway
        import discord.http
        import yarl

        old_base = discord.http.Route.BASE
        old_gw = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
        discord.http.Route.BASE = self.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        try:
            yield
        finally:
            discord.http.Route.BASE = old_base
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gw

    # --- waiting ------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _wait(self, find: Callable[[], T | None], timeout: float, what: str) -> T:
        async def until() -> T:
            async with self._changed:
                while (found := find()) is None:
                    await self._changed.wait()
                return found

        try:
            return await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            seen = "\n  ".join(repr(c) for c in self.calls) or "(none)"
            raise AssertionError(f"timed out waiting for {what}; calls so far:\n  {seen}") from None

    def find_calls(
        self,
        method: str,
        path_pattern: str,
        predicate: Callable[[Call], bool] | None = None,
        *,
        since: int = 0,
    ) -> list[Call]:
        """Recorded calls matching ``method`` and ``path_pattern`` (see ``wait_for_call``)."""
        pat = _pattern(path_pattern)
        return [
            c
            for c in self.calls[since:]
            if c.method == method.upper()
            and pat.fullmatch(c.path)
            and (predicate is None or predicate(c))
        ]

    async def wait_for_call(
        self,
        method: str,
        path_pattern: str,
        predicate: Callable[[Call], bool] | None = None,
        *,
        timeout: float = 5.0,
        since: int = 0,
    ) -> Call:
        """The first call (from index ``since`` of ``calls``) that matches, waiting for it.

        ``path_pattern`` is a regular expression matched against the whole path
        (without ``/api/v10``); ``{name}`` stands for one path segment, e.g.
        ``"/channels/{id}/messages"``. Pass ``since=len(fake.calls)`` to wait
        only for a call made after that point.
        """

        def find() -> Call | None:
            found = self.find_calls(method, path_pattern, predicate, since=since)
            return found[0] if found else None

        return await self._wait(find, timeout, f"{method} {path_pattern}")

    async def wait_for_any(
        self,
        routes: Sequence[tuple[str, str]],
        predicate: Callable[[Call], bool] | None = None,
        *,
        timeout: float = 5.0,
        since: int = 0,
    ) -> Call:
        """The first call matching any of ``routes`` (method, path pattern) and
        ``predicate``: e.g. an answer that may arrive as a post or as an edit."""

        def find() -> Call | None:
            found = [
                c
                for method, pattern in routes
                for c in self.find_calls(method, pattern, predicate, since=since)
            ]
            return min(found, key=self.calls.index) if found else None

        what = " or ".join(f"{m} {p}" for m, p in routes)
        return await self._wait(find, timeout, what)

    async def wait_for_gateway(
        self, op: int, *, since: int = 0, timeout: float = 5.0
    ) -> dict[str, Any]:
        """The first frame with opcode ``op`` the client sent (from index ``since``)."""

        def find() -> dict[str, Any] | None:
            for frame in self.gateway_frames[since:]:
                if frame.get("op") == op:
                    return frame
            return None

        return await self._wait(find, timeout, f"gateway op {op}")

    async def wait_for_identify(
        self, shard: int, *, since: int = 0, timeout: float = 30.0
    ) -> dict[str, Any]:
        """The first IDENTIFY for ``shard`` (from frame index ``since``)."""

        def find() -> dict[str, Any] | None:
            for frame in self.gateway_frames[since:]:
                d = frame.get("d") if frame.get("op") == 2 else None
                if isinstance(d, dict) and (d.get("shard") or [0])[0] == shard:
                    return frame
            return None

        return await self._wait(find, timeout, f"an IDENTIFY for shard {shard}")

    async def wait_for_interaction_response(
        self, interaction: FakeInteraction, *, timeout: float = 5.0
    ) -> Call:
        """The interaction's callback (``send_message``, ``defer``, ``send_modal`` ...)."""
        return await self.wait_for_call(
            "POST", re.escape(interaction.callback_path), timeout=timeout
        )

    @property
    def unknown_calls(self) -> list[Call]:
        return [c for c in self.calls if c.unknown]

    def inject_fault(
        self,
        method: str,
        path_pattern: str,
        *,
        mode: FaultMode = "disconnect",
        times: int = 1,
        landed: bool = False,
        predicate: Callable[[Call], bool] | None = None,
    ) -> Fault:
        """Drop the connection of the next ``times`` requests that match (``path_pattern``
        as in :meth:`wait_for_call`) instead of answering them; see :class:`Fault`."""
        fault = Fault(method.upper(), _pattern(path_pattern), mode, times, landed, predicate)
        self.faults.append(fault)
        return fault

    # --- gateway ------------------------------------------------------------------

    def connected_shards(self) -> dict[int, int]:
        """Shard id -> how many open sessions serve it (Discord sends each of them the
        shard's events: two means two answers)."""
        out: dict[int, int] = {}
        for ws, (shard, _count) in self._shard.items():
            if not ws.closed:
                out[shard] = out.get(shard, 0) + 1
        return out

    async def wait_for_shards(self, shards: set[int], *, timeout: float = 30) -> None:
        """Until exactly these shards have one open session each (and no other shard has one)."""

        def find() -> bool | None:
            now = self.connected_shards()
            return True if set(now) == shards and all(n == 1 for n in now.values()) else None

        await self._wait(find, timeout, f"shards {sorted(shards)} connected once each")

    def _sockets_for(self, event: str, data: Any) -> list[web.WebSocketResponse]:
        """The sessions Discord sends this event to: those of the guild's shard
        ((guild_id >> 22) % shard_count); DMs go to shard 0."""
        gid: Any = None
        if isinstance(data, dict):
            gid = data.get("guild_id") or (data.get("id") if event.startswith("GUILD_") else None)
        out = []
        for ws, (shard, count) in self._shard.items():
            if ws.closed:
                continue
            wanted = shard_of(int(gid), count) if gid is not None else 0
            if shard == wanted:
                out.append(ws)
        return out

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        # Why no compression: discord.py asks for zlib-stream, but decodes a text
        # frame as plain JSON; Discord itself only compresses binary frames.
        ws = web.WebSocketResponse(compress=False, autoping=True)
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            await self._send(
                ws, {"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}}
            )
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                self.gateway_frames.append(frame)
                await self._on_frame(ws, frame)
                await self._notify()
        finally:
            self._sockets.discard(ws)
            self._shard.pop(ws, None)
            self._seqs.pop(ws, None)
            if self._ws is ws:
                self._ws = None
            await self._notify()
        return ws

    async def _send(self, ws: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        await ws.send_str(json.dumps(frame))

    async def _on_frame(self, ws: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        op = frame.get("op")
        if op == 1:  # heartbeat
            await self._send(ws, {"op": 11})
        elif op == 2:  # identify
            self.identify_count += 1
            self._ws = ws
            self._seqs[ws] = 0
            shard, count = (frame.get("d") or {}).get("shard") or (0, 1)
            self._shard[ws] = (int(shard), int(count))
            self.session_id = secrets.token_hex(16)
            self._session_shards[self.session_id] = self._shard[ws]
            mine = [g for g in self.guilds.values() if shard_of(g.id, int(count)) == int(shard)]
            ready = self._ready_payload(mine)
            if (frame.get("d") or {}).get("shard") is not None:
                ready["shard"] = [int(shard), int(count)]
            await self._dispatch_on(ws, "READY", ready)
            for g in mine:
                await self._dispatch_on(ws, "GUILD_CREATE", self.guild_create_payload(g))
        elif op == 6:  # resume
            self.resume_count += 1
            self._ws = ws
            resumed = str((frame.get("d") or {}).get("session_id", ""))
            self._shard[ws] = self._session_shards.get(resumed, (0, 1))
            self._seqs.setdefault(ws, int((frame.get("d") or {}).get("seq") or 0))
            await self._dispatch_on(ws, "RESUMED", {})

    def _ready_payload(self, guilds: list[FakeGuild]) -> dict[str, Any]:
        return {
            "v": 10,
            "user": {**self.bot_user, "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": self.session_id,
            "resume_gateway_url": self.gateway_url,
            "session_type": "normal",
            "application": {"id": str(self.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "user_settings": {},
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "auth_session_id_hash": "",
            "_trace": ["fakediscord"],
        }

    def guild_create_payload(self, g: FakeGuild) -> dict[str, Any]:
        channels = [c for c in self.channels.values() if c.get("guild_id") == str(g.id)]
        return {
            "id": str(g.id),
            "name": g.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": str(g.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": list(g.roles.values()),
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "public_updates_channel_id": None,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "joined_at": p.iso_now(),
            "large": False,
            "unavailable": False,
            "member_count": len(g.members),
            "voice_states": [],
            "members": list(g.members.values()),
            "channels": [c for c in channels if c["type"] not in (10, 11, 12)],
            "threads": [c for c in channels if c["type"] in (10, 11, 12)],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    #: What only the gateway's GUILD_CREATE carries, never ``GET /guilds/{id}``.
    GATEWAY_ONLY = (
        "joined_at",
        "large",
        "unavailable",
        "member_count",
        "voice_states",
        "members",
        "channels",
        "threads",
        "presences",
        "stage_instances",
        "guild_scheduled_events",
        "soundboard_sounds",
    )

    def guild_rest_payload(self, g: FakeGuild) -> dict[str, Any]:
        """The guild as ``GET /guilds/{id}`` returns it: its roles, no channels or
        members (those are read one by one)."""
        payload = self.guild_create_payload(g)
        for key in self.GATEWAY_ONLY:
            payload.pop(key, None)
        return payload

    async def _dispatch_on(self, ws: web.WebSocketResponse, event: str, data: Any) -> int:
        seq = self._seqs.get(ws, 0) + 1
        self._seqs[ws] = self._seq = seq
        await self._send(ws, {"op": 0, "t": event, "s": seq, "d": data})
        return seq

    async def dispatch(self, event: str, data: Any) -> int:
        """Send one DISPATCH (op 0) to the sessions of the shard it belongs to (as
        Discord routes it: the guild's shard, DMs to shard 0); returns the sequence
        number (the first session's)."""
        sockets = self._sockets_for(event, data)
        if not sockets:
            raise RuntimeError(f"no client is connected to the fake gateway for this {event}")
        seqs = [await self._dispatch_on(ws, event, data) for ws in sockets]
        return seqs[0]

    async def request_reconnect(self) -> None:
        """Op 7: the client drops the socket and RESUMEs on a new one."""
        assert self._ws is not None
        await self._send(self._ws, {"op": 7, "d": None})

    async def invalidate_session(self) -> None:
        """Op 9 (not resumable): the client reconnects and IDENTIFYs again (a second READY)."""
        assert self._ws is not None
        await self._send(self._ws, {"op": 9, "d": False})

    # --- dispatch helpers -------------------------------------------------------------

    def _store(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.messages.setdefault(int(msg["channel_id"]), []).append(msg)
        return msg

    async def dispatch_message(
        self,
        content: str,
        *,
        author: str | int | dict[str, Any] = "alice",
        channel_id: int | None = None,
        mentions: list[str | int | dict[str, Any]] | None = None,
        message_reference: dict[str, Any] | int | None = None,
        attachments: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """MESSAGE_CREATE from ``author`` (default: alice in #general); returns the payload.

        ``channel_id`` may be a text channel, a thread, or a DM channel (from
        ``open_dm``). ``message_reference`` is a message id in the same channel
        or a full reference dict; the referenced message is included when known.
        """
        cid = channel_id if channel_id is not None else self.guild.channel_id("general")
        u = self.user(author)
        g = self.guild_of_channel(cid)
        ref: dict[str, Any] | None = None
        referenced: dict[str, Any] | None = None
        if isinstance(message_reference, int):
            ref = {"message_id": str(message_reference), "channel_id": str(cid), "type": 0}
            if g is not None:
                ref["guild_id"] = str(g.id)
        elif message_reference is not None:
            ref = message_reference
        if ref is not None:
            referenced = self.find_message(int(ref["message_id"]))
        msg = p.message(
            self.snowflake(),
            cid,
            u,
            content,
            guild_id=g.id if g else None,
            member_payload=g.members.get(int(u["id"])) if g else None,
            mentions=[self.user(m) for m in mentions or []],
            message_reference=ref,
            referenced_message=referenced,
            attachments=attachments,
            **extra,
        )
        self._store(msg)
        await self.dispatch("MESSAGE_CREATE", msg)
        return msg

    def open_dm(self, who: str | int | dict[str, Any]) -> dict[str, Any]:
        """The DM channel between the bot and a user (created on first use)."""
        u = self.user(who)
        for ch in self.channels.values():
            if ch["type"] == 1 and ch["recipients"][0]["id"] == u["id"]:
                return ch
        ch = p.dm_channel(self.snowflake(), u)
        self.channels[int(ch["id"])] = ch
        return ch

    def _interaction_base(
        self,
        itype: int,
        data: dict[str, Any],
        user: str | int | dict[str, Any],
        channel_id: int | None,
        message: dict[str, Any] | None = None,
    ) -> FakeInteraction:
        cid = channel_id if channel_id is not None else self.guild.channel_id("general")
        u = self.user(user)
        ch = self.channels[cid]
        g = self.guild_of_channel(cid)
        token = "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48)
        payload: dict[str, Any] = {
            "id": str(self.snowflake()),
            "application_id": str(self.application_id),
            "type": itype,
            "data": data,
            "channel_id": str(cid),
            "channel": ch,
            "token": token,
            "version": 1,
            "locale": "en-US",
            "app_permissions": str(p.BOT_PERMISSIONS),
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(g.id) if g else "0"},
            "attachment_size_limit": 10 * 1024 * 1024,
            "context": 0 if g else 1,
        }
        if g is not None:
            payload["guild_id"] = str(g.id)
            payload["guild"] = {"id": str(g.id), "locale": "en-US", "features": []}
            payload["guild_locale"] = "en-US"
            m = dict(g.members[int(u["id"])])
            m["permissions"] = str(self.member_permissions(g, int(u["id"])))
            payload["member"] = m
        else:
            payload["user"] = u
        if message is not None:
            payload["message"] = message
        inter = FakeInteraction(id=int(payload["id"]), token=token, payload=payload)
        self.interactions[token] = inter
        return inter

    async def dispatch_slash(
        self,
        name: str,
        options: dict[str, Any] | list[dict[str, Any]] | None = None,
        *,
        user: str | int | dict[str, Any] = "alice",
        channel_id: int | None = None,
        subcommand: str | None = None,
        group: str | None = None,
        resolved: dict[str, Any] | None = None,
    ) -> FakeInteraction:
        """INTERACTION_CREATE type 2 for ``/name [group] [subcommand] options``.

        ``options`` is ``{name: value}`` (str, int, float, bool; the option type
        is inferred) or the raw list of option dicts (for user/channel options,
        pass ``resolved`` too). The command id is the one the bot synced, when it did.
        """
        if isinstance(options, dict):
            opts: list[dict[str, Any]] = [
                {"name": k, "type": p.option_type(v), "value": v} for k, v in options.items()
            ]
        else:
            opts = list(options or [])
        if subcommand is not None:
            opts = [{"name": subcommand, "type": 1, "options": opts}]
        if group is not None:
            opts = [{"name": group, "type": 2, "options": opts}]
        cid = channel_id if channel_id is not None else self.guild.channel_id("general")
        g = self.guild_of_channel(cid)
        cmd_id = self._command_id(name, g.id if g else None)
        data: dict[str, Any] = {"id": str(cmd_id), "name": name, "type": 1, "options": opts}
        if g is not None and any(c["name"] == name for c in self.guild_commands.get(g.id, [])):
            data["guild_id"] = str(g.id)
        if resolved is not None:
            data["resolved"] = resolved
        inter = self._interaction_base(2, data, user, cid)
        await self.dispatch("INTERACTION_CREATE", inter.payload)
        return inter

    async def dispatch_autocomplete(
        self,
        name: str,
        option: str,
        typed: str | int | float = "",
        *,
        options: dict[str, Any] | None = None,
        user: str | int | dict[str, Any] = "alice",
        channel_id: int | None = None,
        subcommand: str | None = None,
        group: str | None = None,
    ) -> FakeInteraction:
        """INTERACTION_CREATE type 4: ``user`` typing ``typed`` in ``option`` of
        ``/name [group] [subcommand]`` (the other ``options`` already filled in).

        The bot answers on the callback route with type 8 and ``data.choices``
        (``await fake.wait_for_interaction_response(inter)``)."""
        opts: list[dict[str, Any]] = [
            {"name": k, "type": p.option_type(v), "value": v} for k, v in (options or {}).items()
        ]
        opts.append({"name": option, "type": p.option_type(typed), "value": typed, "focused": True})
        if subcommand is not None:
            opts = [{"name": subcommand, "type": 1, "options": opts}]
        if group is not None:
            opts = [{"name": group, "type": 2, "options": opts}]
        cid = channel_id if channel_id is not None else self.guild.channel_id("general")
        g = self.guild_of_channel(cid)
        data: dict[str, Any] = {
            "id": str(self._command_id(name, g.id if g else None)),
            "name": name,
            "type": 1,
            "options": opts,
        }
        if g is not None and any(c["name"] == name for c in self.guild_commands.get(g.id, [])):
            data["guild_id"] = str(g.id)
        inter = self._interaction_base(4, data, user, cid)
        await self.dispatch("INTERACTION_CREATE", inter.payload)
        return inter

    def _command_id(self, name: str, guild_id: int | None) -> int:
        synced = self.guild_commands.get(guild_id, []) if guild_id else []
        for c in [*synced, *self.global_commands]:
            if c["name"] == name:
                return int(c["id"])
        return self.snowflake()

    async def dispatch_component(
        self,
        custom_id: str,
        message_id: int,
        *,
        user: str | int | dict[str, Any] = "alice",
        component_type: int = 2,
        values: list[str] | None = None,
    ) -> FakeInteraction:
        """INTERACTION_CREATE type 3: a click on a button (or a select, with ``values``)."""
        msg = self.message(message_id)
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component_type}
        if values is not None:
            data["values"] = values
        inter = self._interaction_base(3, data, user, int(msg["channel_id"]), message=msg)
        await self.dispatch("INTERACTION_CREATE", inter.payload)
        return inter

    async def dispatch_modal_submit(
        self,
        custom_id: str,
        fields: dict[str, str],
        *,
        user: str | int | dict[str, Any] = "alice",
        channel_id: int | None = None,
    ) -> FakeInteraction:
        """INTERACTION_CREATE type 5: a modal submitted with ``{text input custom_id: value}``."""
        components = [
            {"type": 1, "components": [{"type": 4, "custom_id": k, "value": v}]}
            for k, v in fields.items()
        ]
        data = {"custom_id": custom_id, "components": components}
        inter = self._interaction_base(5, data, user, channel_id)
        await self.dispatch("INTERACTION_CREATE", inter.payload)
        return inter

    # --- REST ------------------------------------------------------------------------

    def _route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        pat = re.compile(re.sub(r"\{([a-z_]+)\}", r"(?P<\1>[^/]+)", path))

        def deco(fn: Handler) -> Handler:
            self._routes.append((method, pat, fn))
            return fn

        return deco

    def fail(self, method: str, path_pattern: str, status: int = 503) -> None:
        """From now on, answer ``method`` ``path_pattern`` (as in ``wait_for_call``) with
        ``status`` and Discord's error body: an outage (503: discord.py does not retry
        it), a refusal (403). The calls are still recorded."""
        self._faults.append((method.upper(), _pattern(path_pattern), status))

    def hold(self, method: str, path_pattern: str) -> asyncio.Event:
        """From now on, requests ``method`` ``path_pattern`` (as in ``wait_for_call``)
        wait, listed in :attr:`held`, until the returned event is set; then they are
        answered as usual. A slow Discord, for what must not wait on that request."""
        gate = asyncio.Event()
        self._holds.append((method.upper(), _pattern(path_pattern), gate))
        return gate

    async def wait_for_held(self, method: str, path_pattern: str, *, timeout: float = 10) -> Call:
        """The first request waiting at a hold that matches."""
        pat = _pattern(path_pattern)

        def find() -> Call | None:
            return next(
                (c for c in self.held if c.method == method.upper() and pat.fullmatch(c.path)),
                None,
            )

        return await self._wait(find, timeout, f"a held {method} {path_pattern}")

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        body: Json = None
        files: list[FakeFile] = []
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                assert isinstance(part, aiohttp.BodyPartReader)
                if part.name == "payload_json":
                    body = json.loads(await part.text())
                else:
                    files.append(
                        FakeFile(
                            field=part.name or "",
                            filename=part.filename,
                            content=bytes(await part.read()),
                            content_type=part.headers.get("Content-Type"),
                        )
                    )
        elif request.can_read_body:
            raw = await request.read()
            if raw:
                body = json.loads(raw)
        call = Call(
            method=request.method,
            path=path,
            query=dict(request.query),
            json=body,
            files=files,
            headers=dict(request.headers),
        )
        status_fault = next(
            (
                st
                for verb, pat, st in self._faults
                if verb == request.method and pat.fullmatch(path)
            ),
            None,
        )
        gate = next(
            (g for verb, pat, g in self._holds if verb == request.method and pat.fullmatch(path)),
            None,
        )
        if gate is not None and not gate.is_set():
            self.held.append(call)
            await self._notify()
            await gate.wait()
            self.held.remove(call)
        fault = next((f for f in self.faults if f.matches(call)), None)
        if fault is not None:
            fault.times -= 1
            call.fault = fault.mode
            if not fault.landed:
                return await self._drop(request, call, fault.mode)
        limited = self._rate_limit(call)
        if limited is not None:
            return limited
        if status_fault is not None:
            call.status = status_fault
            call.response = {"message": f"{status_fault}: injected", "code": 0}
        else:
            for method, pat, handler in self._routes:
                if method == request.method and (m := pat.fullmatch(path)):
                    call.status, call.response = await handler(call, **m.groupdict())
                    break
            else:
                call.unknown = True
                call.status, call.response = 404, {"message": "404: Not Found", "code": 0}
        if fault is not None:  # it landed; the answer is lost
            return await self._drop(request, call, fault.mode)
        call.at = time.monotonic()
        self.calls.append(call)
        await self._notify()
        headers = self._limit_headers(call)
        if call.status == 204 or call.response is None:
            return web.Response(status=call.status if call.status != 200 else 204, headers=headers)
        # Why exact: discord.py parses JSON only for "application/json", no charset.
        return web.Response(
            status=call.status,
            body=json.dumps(call.response).encode(),
            headers={"Content-Type": "application/json", **headers},
        )

    async def _drop(self, request: web.Request, call: Call, mode: FaultMode) -> web.Response:
        call.at = time.monotonic()
        self.calls.append(call)
        await self._notify()
        transport = request.transport
        assert transport is not None
        if mode == "reset":
            sock = transport.get_extra_info("socket")
            if sock is not None:  # linger 0: close() sends a RST
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
        # Never written: the connection is gone.
        raise web.HTTPInternalServerError()

    # --- rate limits ----------------------------------------------------------------

    def _take(self, key: str, limit: int, per: float, now: float) -> tuple[int, float] | None:
        """Use one request of ``key``'s window: (remaining, resets in), or None if spent."""
        start, used = self._windows.get(key, (now, 0))
        if now - start >= per:
            start, used = now, 0
        if used >= limit:
            self._windows[key] = (start, used)
            return None
        self._windows[key] = (start, used + 1)
        return limit - used - 1, start + per - now

    def _rate_limit(self, call: Call) -> web.Response | None:
        limits = self.rate_limits
        if limits is None:
            return None
        now = time.monotonic()
        key, (limit, per) = limits.bucket(call.method, call.path)
        glob = self._take("global", limits.global_per_s, 1.0, now)
        took = self._take(key, limit, per, now) if glob is not None else None
        if glob is not None and took is not None:
            remaining, reset_after = took
            call.rate = (key, limit, remaining, reset_after)
            return None
        is_global = glob is None
        start, _ = self._windows["global" if is_global else key]
        retry_after = max(0.001, start + (1.0 if is_global else per) - now)
        call.status = 429
        call.response = {
            "message": "You are being rate limited.",
            "retry_after": round(retry_after, 3),
            "global": is_global,
        }
        call.at = now
        self.calls.append(call)
        self.rate_limited.append(call)
        headers = {
            "Content-Type": "application/json",
            "Retry-After": f"{retry_after:.3f}",
            # Why: discord.py takes a 429 without Via for a Cloudflare ban.
            "Via": "1.1 google",
            "X-RateLimit-Scope": "global" if is_global else "user",
        }
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        else:
            headers.update(self._headers_for(key, limit, 0, retry_after))
        return web.Response(status=429, body=json.dumps(call.response).encode(), headers=headers)

    @staticmethod
    def _headers_for(key: str, limit: int, remaining: int, reset_after: float) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": key.split(":", 1)[0],
        }

    def _limit_headers(self, call: Call) -> dict[str, str]:
        return {} if call.rate is None else self._headers_for(*call.rate)

    def _not_found(self, what: str, code: int) -> tuple[int, Json]:
        return 404, {"message": f"Unknown {what}", "code": code}

    def _channel_or_404(self, channel_id: str) -> dict[str, Any] | None:
        return self.channels.get(int(channel_id))

    def _new_message(
        self,
        channel_id: int,
        body: dict[str, Any],
        author: dict[str, Any],
        files: list[FakeFile],
        **extra: Any,
    ) -> dict[str, Any]:
        g = self.guild_of_channel(channel_id)
        ref = body.get("message_reference")
        attachments = [
            {
                "id": str(self.snowflake()),
                "filename": f.filename or "file",
                "size": len(f.content),
                "url": f"{self.base_url}/attachments/{f.filename}",
                "proxy_url": f"{self.base_url}/attachments/{f.filename}",
                "content_type": f.content_type,
            }
            for f in files
        ]
        msg = p.message(
            self.snowflake(),
            channel_id,
            author,
            body.get("content") or "",
            guild_id=g.id if g else None,
            embeds=body.get("embeds"),
            components=body.get("components"),
            attachments=attachments,
            message_reference=ref,
            referenced_message=self.find_message(int(ref["message_id"])) if ref else None,
            flags=int(body.get("flags") or 0),
            **extra,
        )
        return self._store(msg)

    def _edit(self, msg: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        for key in ("content", "embeds", "components", "flags"):
            if key in body and body[key] is not None:
                msg[key] = body[key]
        msg["edited_timestamp"] = p.iso_now()
        return msg

    async def _echo(self, msg: dict[str, Any]) -> None:
        if self.echo_messages and self._sockets_for("MESSAGE_CREATE", msg):
            await self.dispatch("MESSAGE_CREATE", msg)

    def _install_routes(self) -> None:
        r = self._route

        @r("GET", "/gateway")
        async def gateway(call: Call) -> tuple[int, Json]:
            return 200, {"url": self.gateway_url}

        @r("GET", "/gateway/bot")
        async def gateway_bot(call: Call) -> tuple[int, Json]:
            return 200, {
                "url": self.gateway_url,
                "shards": self.recommended_shards,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            }

        @r("GET", "/users/@me")
        async def me(call: Call) -> tuple[int, Json]:
            if call.headers.get("Authorization") != f"Bot {self.token}":
                return 401, {"message": "401: Unauthorized", "code": 0}
            return 200, {**self.bot_user, "verified": True, "mfa_enabled": False, "flags": 0}

        @r("GET", "/users/@me/guilds")
        async def my_guilds(call: Call) -> tuple[int, Json]:
            bot_id = int(self.bot_user["id"])
            return 200, [
                {
                    "id": str(g.id),
                    "name": g.name,
                    "icon": None,
                    "owner": g.owner_id == bot_id,
                    "permissions": str(self.member_permissions(g, bot_id)),
                    "features": [],
                }
                for g in self.guilds.values()
                if bot_id in g.members
            ]

        @r("GET", "/users/{user_id}")
        async def get_user(call: Call, user_id: str) -> tuple[int, Json]:
            try:
                return 200, self.user(int(user_id))
            except KeyError:
                return self._not_found("User", 10013)

        @r("POST", "/users/@me/channels")
        async def open_dm(call: Call) -> tuple[int, Json]:
            return 200, self.open_dm(int(call.json["recipient_id"]))

        @r("GET", "/applications/@me")
        @r("GET", "/oauth2/applications/@me")
        async def app_info(call: Call) -> tuple[int, Json]:
            return 200, {
                "id": str(self.application_id),
                "name": "coterie",
                "icon": None,
                "description": "",
                "summary": "",
                "type": None,
                "bot_public": False,
                "bot_require_code_grant": False,
                "verify_key": "0" * 64,
                "owner": self.app_owner,
                "team": None,
                "flags": self.application_flags,
                "bot": self.bot_user,
                "tags": [],
                "redirect_uris": [],
                "interactions_endpoint_url": None,
            }

        # --- application commands
        def _with_ids(cmds: list[dict[str, Any]], guild_id: int | None) -> list[dict[str, Any]]:
            out = []
            for c in cmds:
                c = {
                    "type": 1,
                    "description": "",
                    "options": [],
                    **c,
                    "id": str(self.snowflake()),
                    "application_id": str(self.application_id),
                    "version": str(self.snowflake()),
                }
                if guild_id is not None:
                    c["guild_id"] = str(guild_id)
                out.append(c)
            return out

        @r("PUT", "/applications/{app_id}/commands")
        async def put_global(call: Call, app_id: str) -> tuple[int, Json]:
            self.global_commands = _with_ids(call.json or [], None)
            return 200, self.global_commands

        @r("GET", "/applications/{app_id}/commands")
        async def get_global(call: Call, app_id: str) -> tuple[int, Json]:
            return 200, self.global_commands

        @r("PUT", "/applications/{app_id}/guilds/{guild_id}/commands")
        async def put_guild(call: Call, app_id: str, guild_id: str) -> tuple[int, Json]:
            cmds = _with_ids(call.json or [], int(guild_id))
            self.guild_commands[int(guild_id)] = cmds
            return 200, cmds

        @r("GET", "/applications/{app_id}/guilds/{guild_id}/commands")
        async def get_guild_cmds(call: Call, app_id: str, guild_id: str) -> tuple[int, Json]:
            return 200, self.guild_commands.get(int(guild_id), [])

        # --- guilds
        @r("GET", "/guilds/{guild_id}")
        async def get_guild(call: Call, guild_id: str) -> tuple[int, Json]:
            g = self.guilds.get(int(guild_id))
            return (200, self.guild_rest_payload(g)) if g else self._not_found("Guild", 10004)

        @r("GET", "/guilds/{guild_id}/members/{user_id}")
        async def get_member(call: Call, guild_id: str, user_id: str) -> tuple[int, Json]:
            g = self.guilds.get(int(guild_id))
            if g is None or int(user_id) not in g.members:
                return self._not_found("Member", 10007)
            return 200, g.members[int(user_id)]

        @r("GET", "/guilds/{guild_id}/channels")
        async def get_guild_channels(call: Call, guild_id: str) -> tuple[int, Json]:
            return 200, [c for c in self.channels.values() if c.get("guild_id") == guild_id]

        @r("GET", "/guilds/{guild_id}/roles")
        async def get_roles(call: Call, guild_id: str) -> tuple[int, Json]:
            g = self.guilds.get(int(guild_id))
            return (200, list(g.roles.values())) if g else self._not_found("Guild", 10004)

        @r("GET", "/guilds/{guild_id}/webhooks")
        async def guild_webhooks(call: Call, guild_id: str) -> tuple[int, Json]:
            return 200, [w for w in self.webhooks.values() if w["guild_id"] == guild_id]

        # --- channels
        @r("GET", "/channels/{channel_id}")
        async def get_channel(call: Call, channel_id: str) -> tuple[int, Json]:
            ch = self._channel_or_404(channel_id)
            return (200, ch) if ch else self._not_found("Channel", 10003)

        @r("PATCH", "/channels/{channel_id}")
        async def edit_channel(call: Call, channel_id: str) -> tuple[int, Json]:
            ch = self._channel_or_404(channel_id)
            if ch is None:
                return self._not_found("Channel", 10003)
            body = dict(call.json or {})
            meta = ch.get("thread_metadata")
            for key in ("archived", "locked", "auto_archive_duration"):
                if meta is not None and key in body:
                    meta[key] = body.pop(key)
            ch.update(body)
            return 200, ch

        @r("POST", "/channels/{channel_id}/typing")
        async def typing(call: Call, channel_id: str) -> tuple[int, Json]:
            return 204, None

        @r("GET", "/channels/{channel_id}/messages")
        async def get_messages(call: Call, channel_id: str) -> tuple[int, Json]:
            if self._channel_or_404(channel_id) is None:
                return self._not_found("Channel", 10003)
            msgs = list(reversed(self.history(int(channel_id))))  # newest first
            if "before" in call.query:
                msgs = [m for m in msgs if int(m["id"]) < int(call.query["before"])]
            if "after" in call.query:
                after = int(call.query["after"])
                msgs = [m for m in msgs if int(m["id"]) > after][::-1]  # oldest first
            limit = int(call.query.get("limit", 50))
            return 200, msgs[:limit]

        @r("GET", "/channels/{channel_id}/messages/{message_id}")
        async def get_message(call: Call, channel_id: str, message_id: str) -> tuple[int, Json]:
            for m in self.history(int(channel_id)):
                if m["id"] == message_id:
                    return 200, m
            return self._not_found("Message", 10008)

        @r("POST", "/channels/{channel_id}/messages")
        async def post_message(call: Call, channel_id: str) -> tuple[int, Json]:
            if self._channel_or_404(channel_id) is None:
                return self._not_found("Channel", 10003)
            body = call.json or {}
            nonce = str(body["nonce"]) if body.get("enforce_nonce") and "nonce" in body else None
            if nonce is not None and (int(channel_id), nonce) in self._nonces:
                # Discord: the same nonce within a few minutes returns the first message.
                return 200, self._nonces[(int(channel_id), nonce)]
            msg = self._new_message(int(channel_id), body, self.bot_user, call.files)
            if nonce is not None:
                self._nonces[(int(channel_id), nonce)] = msg
            await self._echo(msg)
            return 200, msg

        @r("PATCH", "/channels/{channel_id}/messages/{message_id}")
        async def edit_message(call: Call, channel_id: str, message_id: str) -> tuple[int, Json]:
            for m in self.history(int(channel_id)):
                if m["id"] == message_id:
                    return 200, self._edit(m, call.json or {})
            return self._not_found("Message", 10008)

        @r("DELETE", "/channels/{channel_id}/messages/{message_id}")
        async def delete_message(call: Call, channel_id: str, message_id: str) -> tuple[int, Json]:
            msgs = self.history(int(channel_id))
            for m in msgs:
                if m["id"] == message_id:
                    msgs.remove(m)
                    return 204, None
            return self._not_found("Message", 10008)

        @r("PUT", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me")
        @r("DELETE", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me")
        async def react(
            call: Call, channel_id: str, message_id: str, emoji: str
        ) -> tuple[int, Json]:
            return 204, None

        # --- threads
        async def _thread(call: Call, parent: str, thread_id: int | None) -> tuple[int, Json]:
            ch = self._channel_or_404(parent)
            if ch is None:
                return self._not_found("Channel", 10003)
            body = call.json or {}
            th = p.thread_channel(
                thread_id or self.snowflake(),
                int(ch["guild_id"]),
                int(parent),
                self.application_id,
                body.get("name", "thread"),
                thread_type=int(body.get("type") or 11),
                auto_archive_duration=int(body.get("auto_archive_duration") or 1440),
            )
            self.channels[int(th["id"])] = th
            created = {**th, "newly_created": True}
            if self._sockets_for("THREAD_CREATE", created):
                # Why: Discord tells the gateway too; discord.py caches the thread from it.
                await self.dispatch("THREAD_CREATE", created)
            return 201, th

        @r("POST", "/channels/{channel_id}/threads")
        async def create_thread(call: Call, channel_id: str) -> tuple[int, Json]:
            return await _thread(call, channel_id, None)

        @r("POST", "/channels/{channel_id}/messages/{message_id}/threads")
        async def thread_from_message(
            call: Call, channel_id: str, message_id: str
        ) -> tuple[int, Json]:
            return await _thread(call, channel_id, int(message_id))

        @r("PUT", "/channels/{channel_id}/thread-members/@me")
        @r("DELETE", "/channels/{channel_id}/thread-members/@me")
        async def join_thread(call: Call, channel_id: str) -> tuple[int, Json]:
            return 204, None

        # --- webhooks
        @r("GET", "/channels/{channel_id}/webhooks")
        async def channel_webhooks(call: Call, channel_id: str) -> tuple[int, Json]:
            return 200, [w for w in self.webhooks.values() if w["channel_id"] == channel_id]

        @r("POST", "/channels/{channel_id}/webhooks")
        async def create_webhook(call: Call, channel_id: str) -> tuple[int, Json]:
            ch = self._channel_or_404(channel_id)
            if ch is None:
                return self._not_found("Channel", 10003)
            wid = self.snowflake()
            hook = {
                "id": str(wid),
                "type": 1,
                "guild_id": ch.get("guild_id"),
                "channel_id": channel_id,
                "name": (call.json or {}).get("name", "webhook"),
                "avatar": None,
                "token": secrets.token_urlsafe(50),
                "application_id": str(self.application_id),
                "user": self.bot_user,
            }
            self.webhooks[wid] = hook
            return 200, hook

        @r("GET", "/webhooks/{webhook_id}")
        async def get_webhook(call: Call, webhook_id: str) -> tuple[int, Json]:
            hook = self.webhooks.get(int(webhook_id))
            return (200, hook) if hook else self._not_found("Webhook", 10015)

        @r("DELETE", "/webhooks/{webhook_id}")
        async def delete_webhook(call: Call, webhook_id: str) -> tuple[int, Json]:
            return (204, None) if self.webhooks.pop(int(webhook_id), None) else (404, None)

        def _is_app(webhook_id: str) -> bool:
            return int(webhook_id) == self.application_id

        @r("POST", "/webhooks/{webhook_id}/{token}")
        async def execute(call: Call, webhook_id: str, token: str) -> tuple[int, Json]:
            body = call.json or {}
            if _is_app(webhook_id):  # an interaction followup
                inter = self.interactions.get(token)
                if inter is None:
                    return self._not_found("Webhook", 10015)
                cid = int(inter.payload["channel_id"])
                msg = self._new_message(cid, body, self.bot_user, call.files)
                return 200, msg
            hook = self.webhooks.get(int(webhook_id))
            if hook is None or hook["token"] != token:
                return self._not_found("Webhook", 10015)
            cid = int(call.query.get("thread_id") or hook["channel_id"])
            author = {
                "id": hook["id"],
                "username": body.get("username") or hook["name"],
                "avatar": None,
                "discriminator": "0000",
                "bot": True,
                "global_name": None,
            }
            msg = self._new_message(cid, body, author, call.files, webhook_id=int(webhook_id))
            if body.get("avatar_url"):
                msg["author"]["avatar_url"] = body["avatar_url"]
            await self._echo(msg)
            return (200, msg) if call.query.get("wait") in ("true", "True", "1") else (204, None)

        def _webhook_message(webhook_id: str, token: str, message_id: str) -> dict[str, Any] | None:
            if _is_app(webhook_id) and message_id == "@original":
                return self._originals.get(token)
            return self.find_message(int(message_id)) if message_id.isdigit() else None

        @r("GET", "/webhooks/{webhook_id}/{token}/messages/{message_id}")
        async def get_wh_message(
            call: Call, webhook_id: str, token: str, message_id: str
        ) -> tuple[int, Json]:
            msg = _webhook_message(webhook_id, token, message_id)
            return (200, msg) if msg else self._not_found("Message", 10008)

        @r("PATCH", "/webhooks/{webhook_id}/{token}/messages/{message_id}")
        async def edit_wh_message(
            call: Call, webhook_id: str, token: str, message_id: str
        ) -> tuple[int, Json]:
            msg = _webhook_message(webhook_id, token, message_id)
            if msg is None:
                return self._not_found("Message", 10008)
            return 200, self._edit(msg, call.json or {})

        @r("DELETE", "/webhooks/{webhook_id}/{token}/messages/{message_id}")
        async def delete_wh_message(
            call: Call, webhook_id: str, token: str, message_id: str
        ) -> tuple[int, Json]:
            msg = _webhook_message(webhook_id, token, message_id)
            if msg is None:
                return self._not_found("Message", 10008)
            self.history(int(msg["channel_id"])).remove(msg)
            return 204, None

        # --- interactions
        @r("POST", "/interactions/{interaction_id}/{token}/callback")
        async def callback(call: Call, interaction_id: str, token: str) -> tuple[int, Json]:
            inter = self.interactions.get(token)
            if inter is None or str(inter.id) != interaction_id:
                return self._not_found("interaction", 10062)
            body = call.json or {}
            kind = int(body.get("type", 0))
            data = body.get("data") or {}
            cid = int(inter.payload["channel_id"])
            interaction: dict[str, Any] = {"id": interaction_id, "type": inter.payload["type"]}
            resource: dict[str, Any] | None = {"type": kind}
            if kind in (4, 5):  # message / deferred message
                msg = self._new_message(
                    cid,
                    data if kind == 4 else {"content": "", "flags": data.get("flags", 0)},
                    self.bot_user,
                    call.files,
                    message_type=20,
                )
                invoker = inter.payload.get("member", {}).get("user") or inter.payload["user"]
                msg["interaction_metadata"] = {
                    "id": interaction_id,
                    "type": inter.payload["type"],
                    "user": invoker,
                    "authorizing_integration_owners": inter.payload[
                        "authorizing_integration_owners"
                    ],
                }
                self._originals[token] = msg
                interaction["response_message_id"] = msg["id"]
                interaction["response_message_loading"] = kind == 5
                interaction["response_message_ephemeral"] = bool(int(msg["flags"]) & 64)
                if kind == 4:
                    resource = {"type": kind, "message": msg}
            elif kind == 7:  # update the component's message
                clicked: dict[str, Any] | None = inter.payload.get("message")
                stored = self.find_message(int(clicked["id"])) if clicked else None
                if stored is not None:
                    self._edit(stored, data)
                    self._originals[token] = stored
                    resource = {"type": kind, "message": stored}
            elif kind == 6:  # deferred update
                clicked = inter.payload.get("message")
                if clicked is not None:
                    self._originals[token] = self.find_message(int(clicked["id"])) or clicked
            elif kind not in (1, 8, 9, 10, 12):
                return 400, {"message": f"Invalid interaction response type {kind}", "code": 50035}
            if call.query.get("with_response") in ("1", "true", "True"):
                return 200, {"interaction": interaction, "resource": resource}
            return 204, None
