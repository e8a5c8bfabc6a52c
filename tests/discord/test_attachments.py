"""Attachments are read with a hard byte cap, whatever size Discord stated; a file
that is not passed on to the model is named to the member and to the model."""

from __future__ import annotations

import asyncio
import logging
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import discord
import pytest
from aiohttp import web

from adapters.discord.history import AttachmentTexts, read_attachment
from adapters.services.conversation import HistoryLimits
from bot.app import App, build_app
from bot.settings import Settings
from executor.messages import ImagePart
from executor.testing import ScriptedModel, ScriptedTiers
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import BotFactory, coterie_bot
from tests.fakediscord.server import Call

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


def attachment(url: str, size: int, id: int = 1) -> discord.Attachment:
    data: Any = {
        "id": str(id),
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


async def test_kept_texts_are_bounded_and_concurrent_reads_share_one_download() -> None:
    served: list[str] = []

    async def text(request: web.Request) -> web.Response:
        served.append(request.match_info["name"])
        return web.Response(body=b"y" * 400)

    app = web.Application()
    app.router.add_get("/{name}", text)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        texts = AttachmentTexts(max_chars=1_000)  # two 400-character files fit, not three
        lim = HistoryLimits()
        a, b, c = (attachment(f"{base}/{n}.txt", 400, id=i) for i, n in enumerate("abc", 1))
        reads = await asyncio.gather(*(texts.read(a, lim) for _ in range(5)))
        assert served == ["a.txt"]  # five turns at once: one download
        assert all(r == (("a.txt", "y" * 400), None) for r in reads)
        await texts.read(b, lim)
        await texts.read(a, lim)  # a is now the most recent
        await texts.read(c, lim)  # b, the least recent, makes room
        await texts.read(a, lim)
        await texts.read(b, lim)
        assert served == ["a.txt", "b.txt", "c.txt", "b.txt"]
    finally:
        await runner.cleanup()


# --- nothing dropped silently: through the chat cog, the real app, the fake Discord ---

ANSWER = "Here is my answer."


@dataclass
class CDN:
    """Discord's CDN on loopback: the files it holds, and which were asked for."""

    base: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    async def serve(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.asked.append(name)
        body = self.files.get(name)
        return web.Response(status=404) if body is None else web.Response(body=body)

    def attachment(
        self, fake: FakeDiscord, name: str, content_type: str, *, size: int | None = None
    ) -> dict[str, Any]:
        return {
            "id": str(fake.snowflake()),
            "filename": name,
            "size": size if size is not None else len(self.files.get(name, b"")),
            "url": f"{self.base}/{name}",
            "proxy_url": f"{self.base}/{name}",
            "content_type": content_type,
        }


@pytest.fixture
async def loopback_cdn() -> AsyncIterator[CDN]:
    c = CDN()
    app = web.Application()
    app.router.add_get("/attachments/{name}", c.serve)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    c.base = f"http://127.0.0.1:{runner.addresses[0][1]}/attachments"
    try:
        yield c
    finally:
        await runner.cleanup()


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[App, ScriptedModel]]:
    model = ScriptedModel(default=ANSWER)
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'coterie.db'}",
        budget_default_usd=1.0,
    )
    built = await build_app(settings, resolver=ScriptedTiers(model))
    try:
        yield built, model
    finally:
        await built.close()


@pytest.fixture
def bot_factory(app: tuple[App, ScriptedModel]) -> BotFactory:
    def make(fake: FakeDiscord) -> Any:
        return coterie_bot(fake, app=app[0], extensions=("commands.chat",))

    return make


async def _answer(
    fake: FakeDiscord, text: str, attachments: list[dict[str, Any]], *, notice: bool = True
) -> str:
    """Alice mentions the bot with ``attachments``; the answer's content once complete
    (with the notice below it, when one is expected)."""
    since = len(fake.calls)
    await fake.dispatch_message(
        f"<@{fake.bot_user['id']}> {text}", mentions=["bot"], attachments=attachments
    )

    def complete(c: Call) -> bool:
        content = (c.json or {}).get("content") or ""
        return ANSWER in content and (not notice or "-# " in content)

    post = await fake.wait_for_call("POST", r"/webhooks/{id}/{token}", since=since)
    if not complete(post):
        await fake.wait_for_call(
            "PATCH", r"/webhooks/{id}/{token}/messages/{m}", predicate=complete, since=since
        )
    content: str = fake.message(int(post.response["id"]))["content"]
    return content


async def test_a_file_over_the_cap_is_named_to_the_member_and_the_model(
    fake_discord: FakeDiscord,
    discord_bot: Any,
    app: tuple[App, ScriptedModel],
    loopback_cdn: CDN,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, (_, model), cdn = fake_discord, app, loopback_cdn
    big = cdn.attachment(fake, "big.txt", "text/plain", size=BIG)
    with caplog.at_level(logging.INFO, logger="adapters.services.conversation"):
        reply = await _answer(fake, "summarise this file", [big])
    note = "big.txt (5.0 MB) was not read: over the 512 KB limit."
    # The member reads it below the answer, in the delivery's words (not the model's).
    assert reply.splitlines()[-1] == f"-# {note}"
    # The model reads it where the file would have been: it cannot pretend it read it.
    asked = model.requests[-1].messages[-1].text
    assert asked.startswith("summarise this file")
    assert "[attachment big.txt (5.0 MB) was not read: over the 512 KB limit]" in asked
    assert "big.txt" not in cdn.asked  # never downloaded
    assert note in caplog.text  # and the operator's log says so


async def test_each_file_left_out_says_why_size_count_type_download(
    fake_discord: FakeDiscord,
    discord_bot: Any,
    app: tuple[App, ScriptedModel],
    loopback_cdn: CDN,
) -> None:
    fake, (built, model), cdn = fake_discord, app, loopback_cdn
    built.chat.limits = replace(built.chat.limits, max_images=2, max_text_files=2)
    for name in ("a.txt", "b.md", "c.txt"):
        cdn.files[name] = f"text of {name}".encode()
    cdn.files["long.txt"] = b"x" * 9_000
    attachments = [
        cdn.attachment(fake, "huge.png", "image/png", size=6 * 1024 * 1024),
        cdn.attachment(fake, "one.png", "image/png", size=1000),
        cdn.attachment(fake, "two.jpg", "image/jpeg", size=1000),
        cdn.attachment(fake, "three.png", "image/png", size=1000),
        cdn.attachment(fake, "report.pdf", "application/pdf", size=2048),
        cdn.attachment(fake, "gone.txt", "text/plain", size=10),
        cdn.attachment(fake, "a.txt", "text/plain"),
        cdn.attachment(fake, "b.md", "text/markdown"),
        cdn.attachment(fake, "c.txt", "text/plain"),
    ]
    reply = await _answer(fake, "look at all this", attachments)
    seen = model.requests[-1].messages[-1]
    # What was passed on: two images (the first two within the count), two files.
    assert [p.url for p in seen.parts if isinstance(p, ImagePart)] == [
        f"{cdn.base}/one.png",
        f"{cdn.base}/two.jpg",
    ]
    assert "[attachment a.txt]\ntext of a.txt" in seen.text
    assert "[attachment b.md]\ntext of b.md" in seen.text
    expected = [
        "huge.png (6.0 MB) was not shown: over the 5.0 MB limit for an image",
        "report.pdf (2 KB) was not read: coterie reads text files and images, not "
        + "application/pdf",
        "gone.txt (10 bytes) was not read: it could not be downloaded",
        "c.txt (13 bytes) was not read: over the limit of 2 text files in one message",
        "three.png was not shown: over the limit of 2 images",
    ]
    footer = reply.splitlines()[-1]
    for why in expected:
        assert f"{why}." in footer  # the member
        assert f"[{'image' if '.png' in why else 'attachment'} {why}]" in seen.text  # the model
    assert "c.txt" not in cdn.asked  # past the count: not downloaded

    # A file cut to the character cap: read in part, and both are told.
    reply = await _answer(fake, "and this", [cdn.attachment(fake, "long.txt", "text/plain")])
    seen = model.requests[-1].messages[-1]
    assert "x" * 8_000 + "\n[… cut here: only the first 8,000 characters were read]" in seen.text
    assert reply.splitlines()[-1] == (
        "-# long.txt (9 KB) was only partly read: only the first 8,000 characters were read."
    )


async def test_an_ordinary_file_adds_no_notice(
    fake_discord: FakeDiscord,
    discord_bot: Any,
    app: tuple[App, ScriptedModel],
    loopback_cdn: CDN,
) -> None:
    fake, (_, model), cdn = fake_discord, app, loopback_cdn
    cdn.files["notes.txt"] = b"hello"
    attachment = cdn.attachment(fake, "notes.txt", "text/plain")
    reply = await _answer(fake, "read", [attachment], notice=False)
    assert reply == ANSWER
    assert model.requests[-1].messages[-1].text == "read\n\n[attachment notes.txt]\nhello"


async def test_a_file_in_the_conversation_is_downloaded_once_across_turns(
    fake_discord: FakeDiscord,
    discord_bot: Any,
    app: tuple[App, ScriptedModel],
    loopback_cdn: CDN,
) -> None:
    """Each turn re-reads its reply chain; the file in the message replied to is
    fetched from the CDN once, and the model still reads it on every turn."""
    fake, (_, model), cdn = fake_discord, app, loopback_cdn
    cdn.files["notes.txt"] = b"the launch is on friday"
    first = cdn.attachment(fake, "notes.txt", "text/plain")
    mention = f"<@{fake.bot_user['id']}>"
    since = len(fake.calls)
    sent = await fake.dispatch_message(
        f"{mention} read this", mentions=["bot"], attachments=[first]
    )
    await fake.wait_for_call("POST", r"/webhooks/{id}/{token}", since=since)
    for question in ("when?", "are you sure?"):
        since = len(fake.calls)
        await fake.dispatch_message(
            f"{mention} {question}", mentions=["bot"], message_reference=int(sent["id"])
        )
        await fake.wait_for_call("POST", r"/webhooks/{id}/{token}", since=since)
        turns = [m for m in model.requests[-1].messages if m.role == "user"]
        assert any("[attachment notes.txt]\nthe launch is on friday" in t.text for t in turns)
        assert turns[-1].text == question
        assert len(turns) == 2  # the file's message, then the question
    assert cdn.asked.count("notes.txt") == 1


async def test_a_failed_download_is_tried_again_on_the_next_turn(
    fake_discord: FakeDiscord,
    discord_bot: Any,
    app: tuple[App, ScriptedModel],
    loopback_cdn: CDN,
) -> None:
    fake, (_, model), cdn = fake_discord, app, loopback_cdn
    late = cdn.attachment(fake, "late.txt", "text/plain", size=5)  # not on the CDN yet
    mention = f"<@{fake.bot_user['id']}>"
    since = len(fake.calls)
    sent = await fake.dispatch_message(f"{mention} read this", mentions=["bot"], attachments=[late])
    await fake.wait_for_call("POST", r"/webhooks/{id}/{token}", since=since)
    first = model.requests[-1].messages[-1].text
    assert "[attachment late.txt (5 bytes) was not read: it could not be downloaded]" in first
    cdn.files["late.txt"] = b"hello"
    since = len(fake.calls)
    # The member asks again in reply to that message: the chain holds it again.
    await fake.dispatch_message(
        f"{mention} try again", mentions=["bot"], message_reference=int(sent["id"])
    )
    await fake.wait_for_call("POST", r"/webhooks/{id}/{token}", since=since)
    turns = [m for m in model.requests[-1].messages if m.role == "user"]
    assert any("[attachment late.txt]\nhello" in t.text for t in turns)
    assert cdn.asked.count("late.txt") == 2
