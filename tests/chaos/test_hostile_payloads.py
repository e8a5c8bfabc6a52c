"""Hostile files and payloads through the real app (issue 12): ``build_app`` (SQLite,
SQL audit and budget, the persona store), the real ``/persona`` and chat cogs, the real
discord.py client against the fake Discord, attachments from a loopback CDN. Only the
model is scripted.

* the issue's alias bomb through ``/persona import`` is refused while another member's
  message is answered (the file is parsed off the event loop: a parse held in its
  thread does not hold that answer up), and a member without Manage Server is refused
  before anything is downloaded;
* attachments that claim 10 bytes and stream 50 MB are cut at the cap, through
  ``/persona import`` and through a chat message, and the bot answers regardless.

The latencies are printed (``-s``); the only bound asserted is a generous one.
"""

from __future__ import annotations

import asyncio
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import personas.markdown
import personas.store
from bot.app import App, build_app
from bot.settings import Settings
from executor.testing import RunEnds, ScriptedModel, ScriptedTiers
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import BotFactory, coterie_bot
from tests.fakediscord.server import Call, FakeInteraction
from tests.personas.test_persona_hostile import alias_bomb

pytestmark = pytest.mark.chaos

GENEROUS_S = 5.0  # the answer should take well under 1 s; this only catches a freeze
LIE = 50 * 1024 * 1024  # what a "10-byte" attachment streams
CHUNK = 64 * 1024
ANSWER = "Hello Alice."


@dataclass
class CDN:
    """Discord's CDN on loopback: honest files, and lying ones that stream ``LIE`` bytes."""

    base: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    lying: set[str] = field(default_factory=set)
    asked: list[str] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)

    async def serve(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.asked.append(name)
        if name in self.lying:
            response = web.StreamResponse()  # no length: it just keeps coming
            await response.prepare(request)
            self.sent[name] = 0
            try:
                while self.sent[name] < LIE:
                    await response.write(b"x" * CHUNK)
                    self.sent[name] += CHUNK
            except (ConnectionError, RuntimeError):
                pass  # the reader hung up: what it took is in self.sent
            return response
        body = self.files.get(name)
        if body is None:
            return web.Response(status=404)
        return web.Response(body=body, content_type="text/markdown")


@pytest.fixture
async def cdn() -> AsyncIterator[CDN]:
    c = CDN()
    app = web.Application()
    app.router.add_get("/attachments/{name}", c.serve)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
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
def finished(app: tuple[App, ScriptedModel]) -> RunEnds:
    f = RunEnds()
    app[0].executor.observers.append(f)
    return f


@pytest.fixture
def bot_factory(app: tuple[App, ScriptedModel]) -> BotFactory:
    def make(fake: FakeDiscord) -> Any:
        return coterie_bot(fake, app=app[0], extensions=("commands.persona", "commands.chat"))

    return make


def _attachment(fake: FakeDiscord, cdn: CDN, name: str, size: int) -> dict[str, Any]:
    return {
        "id": str(fake.snowflake()),
        "filename": name,
        "size": size,
        "url": f"{cdn.base}/{name}",
        "proxy_url": f"{cdn.base}/{name}",
        "content_type": "text/markdown" if name.endswith(".md") else "text/plain",
    }


async def _import(
    fake: FakeDiscord, cdn: CDN, name: str, *, size: int, user: str
) -> tuple[FakeInteraction, Call]:
    a = _attachment(fake, cdn, name, size)
    inter = await fake.dispatch_slash(
        "persona",
        [{"name": "file", "type": 11, "value": a["id"]}],
        subcommand="import",
        user=user,
        resolved={"attachments": {a["id"]: a}},
    )
    return inter, await fake.wait_for_interaction_response(inter)


async def _followup(fake: FakeDiscord, inter: FakeInteraction) -> Call:
    return await fake.wait_for_call("POST", f"/webhooks/{fake.application_id}/{inter.token}")


async def _alice_is_answered(fake: FakeDiscord, **message: Any) -> tuple[float, Call]:
    """Alice mentions the bot; how long until the persona's answer is posted (then,
    untimed, until it is complete: the delivery may post a placeholder first)."""
    since = len(fake.calls)
    t0 = time.perf_counter()
    await fake.dispatch_message(f"<@{fake.bot_user['id']}> hi", mentions=["bot"], **message)
    # Why not the application's webhook: an interaction's followup is no persona answer.
    post = await fake.wait_for_call(
        "POST",
        r"/webhooks/{id}/{token}",
        predicate=lambda c: c.path.split("/")[2] != str(fake.application_id),
        since=since,
        timeout=30,
    )
    seconds = time.perf_counter() - t0
    if ANSWER not in (post.json.get("content") or ""):
        await fake.wait_for_call(
            "PATCH",
            r"/webhooks/{id}/{token}/messages/{m}",
            predicate=lambda c: ANSWER in (c.json.get("content") or ""),
            since=since,
            timeout=30,
        )
    return seconds, post


async def test_the_alias_bomb_is_refused_while_another_member_is_answered(
    fake_discord: FakeDiscord,
    discord_bot: Any,
    app: tuple[App, ScriptedModel],
    cdn: CDN,
    finished: RunEnds,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = fake_discord
    cdn.files["bomb.md"] = alias_bomb().encode()
    assert len(cdn.files["bomb.md"]) < 1024  # the few hundred bytes

    # 1. A parse held in its thread (as a slow one would be) does not hold the loop.
    loop = asyncio.get_running_loop()
    parsing, release = asyncio.Event(), threading.Event()
    released: list[bool] = []
    real_parse = personas.markdown.parse_markdown

    def held_parse(text: str, *, source: str) -> Any:
        loop.call_soon_threadsafe(parsing.set)
        # On the loop, this would wait out its timeout: nothing could release it.
        released.append(release.wait(10))
        return real_parse(text, source=source)

    monkeypatch.setattr(personas.store, "parse_markdown", held_parse)
    inter, deferred = await _import(fake, cdn, "bomb.md", size=400, user="manager")
    assert deferred.json["type"] == 5  # deferred: the download and the parse follow
    await parsing.wait()
    during, post = await _alice_is_answered(fake)
    release.set()
    assert (await finished.next()).result.ok
    refused = await _followup(fake, inter)
    assert released == [True]  # the parse ran in a thread, held until Alice was answered
    assert "YAML anchors and aliases are not allowed" in refused.json["content"]
    assert post.json["username"]  # a persona answered Alice, while the parse was held
    monkeypatch.setattr(personas.store, "parse_markdown", real_parse)

    # 2. The real thing, at once: the bomb imported and Alice's message, side by side.
    a = _attachment(fake, cdn, "bomb.md", 400)
    importing = asyncio.create_task(
        fake.dispatch_slash(
            "persona",
            [{"name": "file", "type": 11, "value": a["id"]}],
            subcommand="import",
            user="manager",
            resolved={"attachments": {a["id"]: a}},
        )
    )
    side_by_side, _ = await _alice_is_answered(fake)
    assert (await finished.next()).result.ok
    inter2 = await importing
    await fake.wait_for_interaction_response(inter2)
    assert "YAML anchors and aliases" in (await _followup(fake, inter2)).json["content"]
    personas_now = await app[0].personas.list(str(fake.guild.id))
    assert "probe" not in [p.name for p in personas_now]

    # 3. A member without Manage Server: refused before the CDN is asked.
    asked = len(cdn.asked)
    _, call = await _import(fake, cdn, "bomb.md", size=400, user="alice")
    assert call.json["data"]["content"].startswith("Only a server admin (Manage Server)")
    assert len(cdn.asked) == asked
    assert during < GENEROUS_S and side_by_side < GENEROUS_S
    print(
        f"\nalias bomb: the other member's answer came {during * 1000:.0f} ms after their "
        f"message while the import's parse was held, {side_by_side * 1000:.0f} ms side by side"
    )


async def test_a_lying_attachment_is_cut_at_the_cap_through_the_cogs(
    fake_discord: FakeDiscord,
    discord_bot: Any,
    app: tuple[App, ScriptedModel],
    cdn: CDN,
    finished: RunEnds,
) -> None:
    fake = fake_discord
    _, model = app
    cdn.lying |= {"liar.md", "notes.txt"}
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        inter, _ = await _import(fake, cdn, "liar.md", size=10, user="manager")
        refused = await _followup(fake, inter)
        assert "liar.md: is larger than 32 KB" in refused.json["content"]
        seconds, post = await _alice_is_answered(
            fake, attachments=[_attachment(fake, cdn, "notes.txt", 10)]
        )
        assert (await finished.next()).result.ok
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert post.json is not None and seconds < GENEROUS_S
    # The chat flow left the lying file out of what the model saw.
    last = model.requests[-1].messages[-1]
    assert "xxxx" not in last.text
    # Neither reader drained the stream, and memory stayed near the caps (32 KB, 512 KB).
    assert set(cdn.asked) >= {"liar.md", "notes.txt"}
    assert all(n < LIE // 4 for n in cdn.sent.values()), cdn.sent
    assert peak < 16 * 1024 * 1024, peak
    print(
        f"\nlying attachments: served {cdn.sent} bytes of {LIE} before the readers hung up; "
        f"peak traced memory +{peak / 1e6:.1f} MB; the answer came in {seconds * 1000:.0f} ms"
    )
