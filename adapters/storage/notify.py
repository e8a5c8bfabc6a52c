"""Telling the other processes on a PostgreSQL database: ``LISTEN``/``NOTIFY``.

One channel (``coterie``), one dedicated asyncpg connection per process (not from the
pool: a pooled connection is recycled and would drop its ``LISTEN``). A notification's
payload is a small JSON object: the topic (``guild_settings``, ``personas``,
``threads``, ``shards``, ``schedules``, ``approvals``), a key within it (a guild id, ...; none: everything) and the sender's
instance id (a process ignores its own). What a topic means is its subscriber's
business: caches drop the key, the shard balancer wakes up, a run waiting for an
approval reads its question.

A notification sent while a process's connection is down is lost to it, so on
reconnecting it tells every subscriber "everything" (``key=None``): a cache is
emptied rather than left stale, a waiting run reads its question again. The caches keep their short TTL besides.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any, Final

from sqlalchemy.engine import URL

from adapters.storage.db import async_url, translate_errors

__all__ = ["CHANNEL", "PgNotifier", "Subscriber"]

log = logging.getLogger("coterie.notify")

CHANNEL: Final = "coterie"
Subscriber = Callable[[str | None], None]  # the key, or None: everything
_RETRY_S = (0.5, 1.0, 2.0, 5.0)


class PgNotifier:
    """Publish and receive notifications on the ``coterie`` channel."""

    def __init__(self, url: str | URL, *, sender: str) -> None:
        self.url = async_url(url)
        self.sender = sender
        self._subscribers: dict[str, list[Subscriber]] = {}
        self._conn: Any = None  # asyncpg.Connection
        self._send = asyncio.Lock()  # one query at a time on the connection
        self._reconnect: asyncio.Task[None] | None = None
        self._closed = False

    def subscribe(self, topic: str, callback: Subscriber) -> None:
        self._subscribers.setdefault(topic, []).append(callback)

    # --- life --------------------------------------------------------------------

    async def start(self) -> None:
        await self._connect()

    async def _connect(self) -> None:
        import asyncpg

        dsn = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with translate_errors(self.url):
            conn = await asyncpg.connect(
                dsn, timeout=10, server_settings={"application_name": "coterie notify"}
            )
        await conn.add_listener(CHANNEL, self._on_notification)
        conn.add_termination_listener(self._on_termination)
        self._conn = conn

    async def close(self) -> None:
        self._closed = True
        task, self._reconnect = self._reconnect, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    def _on_termination(self, conn: Any) -> None:
        if self._closed or conn is not self._conn:
            return
        self._conn = None
        log.warning("the notification connection dropped; reconnecting")
        self._reconnect = asyncio.get_running_loop().create_task(
            self._reconnect_loop(), name="coterie-notify-reconnect"
        )

    async def _reconnect_loop(self) -> None:
        attempt = 0
        while not self._closed:
            try:
                await self._connect()
            except Exception:
                await asyncio.sleep(_RETRY_S[min(attempt, len(_RETRY_S) - 1)])
                attempt += 1
                continue
            log.info("the notification connection is back; dropping the caches")
            for topic in list(self._subscribers):
                self._deliver(topic, None)
            return

    # --- messages ----------------------------------------------------------------

    async def publish(self, topic: str, key: str | None = None) -> None:
        """Tell the other processes (delivered when this statement commits: at once)."""
        conn = self._conn
        if conn is None:
            log.warning("cannot tell the other processes about %s %s: not connected", topic, key)
            return
        payload = json.dumps({"t": topic, "k": key, "f": self.sender}, separators=(",", ":"))
        async with self._send:
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)

    def _on_notification(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
            topic, key, sender = str(message["t"]), message.get("k"), message.get("f")
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a notification that is not coterie's: %.80s", payload)
            return
        if sender == self.sender:
            return
        self._deliver(topic, None if key is None else str(key))

    def _deliver(self, topic: str, key: str | None) -> None:
        for callback in self._subscribers.get(topic, ()):
            try:
                callback(key)
            except Exception:
                log.exception("a subscriber to %s failed", topic)
