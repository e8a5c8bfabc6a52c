"""ChatService with a scripted model: persona order, conversation, caps, lanes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest

from adapters.services.chat import ChatRequest, ChatService
from adapters.services.conversation import (
    HistoryLimits,
    LeftOut,
    Turn,
    build_conversation,
    format_size,
    parse_persona_prefix,
)
from adapters.services.ports import InMemoryGuildSettings, InMemoryThreadStore
from executor.agent import Caller, RunnableAgent, RunStatus
from executor.messages import ImagePart
from executor.run import Executor
from executor.testing import RecordingDelivery, ScriptedModel
from personas import Persona, PersonaNotFound, to_runnable


class Personas:
    def __init__(self, *names: str) -> None:
        self.by_name = {n: Persona(name=n, system_prompt=f"You are {n}.") for n in names}

    async def find(self, guild_id: str | None, name: str) -> Persona | None:
        return self.by_name.get(name.lower())


def service(model: ScriptedModel, **kwargs: Any) -> ChatService:
    def to_agent(p: Persona) -> RunnableAgent:
        return replace(to_runnable(p), model=model)

    kwargs.setdefault("personas", Personas("assistant", "researcher", "poet", "chef"))
    return ChatService(executor=Executor(), to_agent=to_agent, **kwargs)


def request(text: str, **kwargs: Any) -> ChatRequest:
    kwargs.setdefault("guild_id", "g1")
    kwargs.setdefault("channel_id", "c1")
    return ChatRequest(
        caller=Caller(user_id="u1", display_name="Alice"),
        turns=[Turn(author_name="Alice", content=text, author_id="u1")],
        **kwargs,
    )


async def test_runs_the_fallback_persona_and_streams() -> None:
    model = ScriptedModel(["Hi Alice."])
    d = RecordingDelivery()
    out = await service(model).run(request("hello"), d)
    assert out.result.status is RunStatus.OK
    assert out.persona.name == "assistant"
    assert d.text_so_far == "Hi Alice."
    sent = model.requests[0].messages
    assert sent[-1].text == "hello" and sent[-1].name == "Alice"


async def test_persona_order_thread_explicit_prefix_channel_guild() -> None:
    threads = InMemoryThreadStore()
    await threads.bind(
        thread_id="t1", guild_id="g1", channel_id="c1", persona="poet", created_by="u"
    )
    settings = InMemoryGuildSettings()
    await settings.set_channel_persona("g1", "c1", "chef")
    await settings.update_guild("g1", default_persona="researcher")

    svc = service(ScriptedModel(), threads=threads, guild_settings=settings)
    pick = svc.choose_persona
    # A bound thread wins over everything, even a prefix.
    c = await pick(request("researcher: x", thread_id="t1"))
    assert (c.persona.name, c.source) == ("poet", "thread")
    c = await pick(request("researcher: find sources", persona=None))
    assert (c.persona.name, c.source, c.prompt) == ("researcher", "prefix", "find sources")
    c = await pick(request("hi", persona="poet"))
    assert (c.persona.name, c.source) == ("poet", "explicit")
    c = await pick(request("nobody: hi"))  # not a persona: the whole text is the prompt
    assert (c.persona.name, c.source, c.prompt) == ("chef", "channel", "nobody: hi")
    c = await pick(request("hi", channel_id="c2"))
    assert (c.persona.name, c.source) == ("researcher", "guild")
    with pytest.raises(PersonaNotFound):
        await pick(request("hi", persona="ghost"))


async def test_prefix_is_removed_from_the_prompt_the_model_sees() -> None:
    model = ScriptedModel(["ok"])
    out = await service(model).run(request("Researcher: what is X?"), RecordingDelivery())
    assert out.persona.name == "researcher"
    assert model.requests[0].messages[-1].text == "what is X?"


def test_parse_persona_prefix() -> None:
    assert parse_persona_prefix("poet: a haiku") == ("poet", "a haiku")
    assert parse_persona_prefix("note:") == (None, "note:")
    assert parse_persona_prefix("hello there: x") == (None, "hello there: x")


def test_conversation_caps_and_names() -> None:
    turns = [Turn(author_name=f"u{i}", content=f"m{i}" * 10) for i in range(10)]
    conv = build_conversation(turns, limits=HistoryLimits(max_messages=3, max_chars=10_000))
    assert [m.text for m in conv.messages] == [t.content for t in turns[-3:]]
    assert conv.dropped == 7 and conv.cut
    assert "last 3 messages" in (conv.note() or "")
    assert conv.messages[0].name == "u7"
    conv = build_conversation(turns, limits=HistoryLimits(max_chars=50))
    assert len(conv.messages) == 2
    private = build_conversation(turns[:1], shared=False)
    assert private.messages[0].name is None and not private.cut


def test_assistant_turns_and_a_leading_assistant_gets_a_user_placeholder() -> None:
    turns = [
        Turn(author_name="bot", content="Earlier answer", from_assistant=True),
        Turn(author_name="Bob", content="and then?"),
    ]
    conv = build_conversation(turns)
    assert [m.role for m in conv.messages] == ["user", "assistant", "user"]
    assert not conv.cut


def test_images_when_the_model_sees_and_attachments() -> None:
    img = ImagePart(url="https://cdn.example/cat.png")
    turn = Turn(author_name="A", content="look", images=(img,), attachments=(("a.txt", "hello"),))
    seen = build_conversation([turn], see_images=True).messages[0]
    assert img in seen.parts and "[attachment a.txt]\nhello" in seen.text
    blind = build_conversation([turn], see_images=False).messages[0]
    assert img not in blind.parts and "cannot see images" in blind.text


def _images(*names: str) -> dict[str, Any]:
    parts = tuple(ImagePart(url=f"https://cdn.example/{n}") for n in names)
    return {"images": parts, "image_names": names}


def test_images_past_the_count_are_dropped_oldest_first_and_named() -> None:
    turns = [
        Turn(author_name="A", content="old", **_images("o1.png", "o2.png")),
        Turn(author_name="B", content="answer", from_assistant=True),
        Turn(author_name="A", content="mid", **_images("m1.png", "m2.png")),
        Turn(author_name="A", content="new", **_images("n1.png")),
    ]
    conv = build_conversation(turns, limits=HistoryLimits(max_images=2))
    sent = [str(p.url) for m in conv.messages for p in m.parts if isinstance(p, ImagePart)]
    assert [u.rsplit("/", 1)[1] for u in sent] == ["m1.png", "n1.png"]
    # Each turn that lost an image tells the model which, and why.
    assert "[image m2.png was not shown: over the limit of 2 images]" in conv.messages[2].text
    assert "[image o1.png was not shown" in conv.messages[0].text
    assert "[image o2.png was not shown" in conv.messages[0].text
    # The member hears of the earlier ones as a count; nothing of the request was lost.
    assert conv.left_out == [] and conv.earlier_images_left_out == 3
    assert conv.note() == "3 images of earlier messages were not shown: over the image limit."


def test_the_member_hears_what_the_request_lost_and_a_cut_history() -> None:
    big = LeftOut("big.txt", "over the 512 KB limit", 5 * 1024 * 1024)
    turns = [Turn(author_name=f"u{i}", content="x" * 100) for i in range(5)]
    turns.append(Turn(author_name="A", content="summarise", left_out=(big,)))
    conv = build_conversation(turns, limits=HistoryLimits(max_messages=2))
    assert conv.note() == (
        "History was cut: only the last 2 messages were read. "
        "big.txt (5.0 MB) was not read: over the 512 KB limit."
    )
    assert conv.messages[-1].text == (
        "summarise\n\n[attachment big.txt (5.0 MB) was not read: over the 512 KB limit]"
    )
    # A model that cannot see images: the member is told which were not shown.
    blind = build_conversation(
        [Turn(author_name="A", content="look", **_images("cat.png"))], see_images=False
    )
    assert blind.note() == "cat.png was not shown: this model cannot see images."


def test_sizes_are_written_for_people() -> None:
    assert [format_size(n) for n in (900, 2048, 512 * 1024, 5 * 1024 * 1024)] == [
        "900 bytes",
        "2 KB",
        "512 KB",
        "5.0 MB",
    ]


async def test_history_cut_is_said_in_the_reply() -> None:
    notes: list[str] = []

    class NotingDelivery(RecordingDelivery):
        def note(self, line: str) -> None:
            notes.append(line)

    svc = service(ScriptedModel(["ok"]), limits=HistoryLimits(max_messages=1))
    req = request("last")
    req.turns.insert(0, Turn(author_name="A", content="first"))
    await svc.run(req, NotingDelivery())
    assert notes and "History was cut" in notes[0]


class FakeLanes:
    """One slot per key; the second request waits and is told its position."""

    def __init__(self) -> None:
        self.locks: dict[str, asyncio.Lock] = {}
        self.positions: list[int] = []

    @asynccontextmanager
    async def slot(self, key: str, *, on_position: Any = None) -> AsyncIterator[None]:
        lock = self.locks.setdefault(key, asyncio.Lock())
        if lock.locked() and on_position is not None:
            on_position(1)
        async with lock:
            if on_position is not None:
                on_position(0)
            yield


async def test_lanes_queue_a_members_second_request() -> None:
    gate = asyncio.Event()

    async def slow(_: float) -> None:
        await gate.wait()

    from executor.testing import Reply

    model = ScriptedModel([Reply(text="one", latency_s=1), "two"], sleep=slow)
    lanes = FakeLanes()
    svc = service(model, lanes=lanes)
    positions: list[int] = []

    class QueueDelivery(RecordingDelivery):
        async def queued(self, position: int) -> None:
            positions.append(position)

    first = asyncio.create_task(svc.run(request("a"), QueueDelivery()))
    while not model.requests:
        await asyncio.sleep(0)
    second = asyncio.create_task(svc.run(request("b"), QueueDelivery()))
    for _ in range(5):
        await asyncio.sleep(0)
    assert 1 in positions
    gate.set()
    a, b = await first, await second
    assert (a.result.output, b.result.output) == ("one", "two")
    assert positions.count(0) == 2


async def test_should_answer_and_which_history() -> None:
    from adapters.services.chat import IncomingMessage

    threads = InMemoryThreadStore()
    await threads.bind(thread_id="t1", guild_id="g", channel_id="c", persona="poet", created_by="u")
    svc = service(ScriptedModel(), threads=threads, allow_dms=False)
    who = Caller(user_id="u1")

    def msg(**kw: Any) -> IncomingMessage:
        kw.setdefault("guild_id", "g")
        return IncomingMessage(caller=who, channel_id="c", **kw)

    assert not await svc.should_answer(msg())  # a plain message in a channel
    assert await svc.should_answer(msg(mentions_bot=True))
    assert await svc.should_answer(msg(replies_to_ours=True, is_reply=True))
    assert await svc.should_answer(msg(thread_id="t1"))  # a bound thread
    assert not await svc.should_answer(msg(thread_id="t2"))  # someone else's thread
    assert not await svc.should_answer(msg(guild_id=None))  # DMs are off here
    svc.allow_dms = True
    assert await svc.should_answer(msg(guild_id=None))
    assert svc.history_source(msg(thread_id="t1")) == "thread"
    assert svc.history_source(msg(guild_id=None)) == "dm"
    assert svc.history_source(msg(guild_id=None, is_reply=True)) == "reply_chain"
    assert svc.history_source(msg(mentions_bot=True)) == "reply_chain"
