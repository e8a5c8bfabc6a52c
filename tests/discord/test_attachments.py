"""Attachments are read with a hard byte cap, whatever size Discord stated."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import discord
import pytest
from aiohttp import web

from adapters.discord.history import read_attachment

BIG = 5 * 1024 * 1024


@pytest.fixture
async def cdn() -> AsyncIterator[str]:
    async def lying(request: web.Request) -> web.StreamResponse:
        # Claims nothing, streams far more than the attachment said.
        response = web.StreamResponse()
        await response.prepare(request)
        chunk = b"x" * 65536
        for _ in range(BIG // len(chunk)):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def small(request: web.Request) -> web.Response:
        return web.Response(body=b"hello")

    async def gone(request: web.Request) -> web.Response:
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/lying.txt", lying)
    app.router.add_get("/small.txt", small)
    app.router.add_get("/gone.txt", gone)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def attachment(url: str, size: int) -> discord.Attachment:
    data: Any = {
        "id": "1",
        "filename": url.rsplit("/", 1)[-1],
        "size": size,
        "url": url,
        "proxy_url": url,
    }
    return discord.Attachment(data=data, state=SimpleNamespace(http=None))  # type: ignore[arg-type]


async def test_a_lying_attachment_is_cut_at_the_cap(cdn: str) -> None:
    tracemalloc.start()
    try:
        got = await read_attachment(attachment(f"{cdn}/lying.txt", 10), max_bytes=64 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got is None
    assert peak < 2 * 1024 * 1024  # nowhere near the 5 MB the server sent


async def test_an_honest_attachment_is_read(cdn: str) -> None:
    assert await read_attachment(attachment(f"{cdn}/small.txt", 5), max_bytes=100) == b"hello"


async def test_a_stated_size_over_the_cap_is_not_downloaded(cdn: str) -> None:
    assert await read_attachment(attachment(f"{cdn}/gone.txt", 1000), max_bytes=100) is None


async def test_a_failed_download_is_a_discord_exception(cdn: str) -> None:
    with pytest.raises(discord.DiscordException, match="HTTP 404"):
        await read_attachment(attachment(f"{cdn}/gone.txt", 5), max_bytes=100)
