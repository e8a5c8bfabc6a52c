"""The chat service: an incoming request becomes a run. Discord-free.

The cog (``commands/chat.py``) and the console (``coterie chat``) both turn what
they received into a :class:`ChatRequest` (who, where, the conversation as
:class:`~adapters.conversation.Turn` s, oldest first) and a delivery; this module
chooses the persona, builds the conversation within its caps, waits for a slot
in the member's lane, and runs the persona through the executor.

The persona is, in order: the thread's (a bound ``/chat`` thread), one named
explicitly (``/chat persona:``), one named at the start of the message
(``researcher: ...``), the one that wrote the message being replied to, the
channel's default, the guild's default, and the deployment's fallback.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from adapters.conversation import (
    Conversation,
    HistoryLimits,
    Turn,
    build_conversation,
    parse_persona_prefix,
)
from adapters.threads import InMemoryThreadStore, ThreadStore
from executor.agent import Caller, Invocation, RunnableAgent, RunResult
from executor.ports import Delivery
from executor.run import Executor
from personas.errors import PersonaNotFound
from personas.model import Persona
from personas.runnable import to_runnable

__all__ = [
    "ChatOutcome",
    "ChatRequest",
    "ChatService",
    "LanePool",
    "PersonaChoice",
    "PersonaFinder",
]

log = logging.getLogger(__name__)

PositionCallback = Callable[[int], Any]


class PersonaFinder(Protocol):
    """What the service needs of ``personas.PersonaStore``."""

    async def find(self, guild_id: str | None, name: str) -> Persona | None: ...


class DefaultsLookup(Protocol):
    async def get(self, channel_id: str) -> str | None: ...


class LanePool(Protocol):
    """What the service needs of ``executor.lanes.Lanes``: a slot in a member's lane.

    ``on_position(n)`` is called while the request waits (n ahead of it, 1 = next)
    and with 0 when it starts.
    """

    def slot(
        self, key: str, *, on_position: PositionCallback | None = None
    ) -> AbstractAsyncContextManager[Any]: ...


@dataclass(slots=True)
class ChatRequest:
    """One request to chat, host-neutral. ``turns``: oldest first, the request last."""

    caller: Caller
    turns: list[Turn]
    trigger: str = "chat"  # chat, slash, console
    guild_id: str | None = None
    channel_id: str | None = None  # the parent channel for a thread
    thread_id: str | None = None
    persona: str | None = None  # chosen explicitly (/chat persona:, --persona)
    parse_prefix: bool = True  # "researcher: ..." at the start of the last turn
    shared: bool = True  # more than two people may speak: name each user turn
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PersonaChoice:
    persona: Persona
    source: str  # thread, explicit, prefix, channel, guild, fallback
    prompt: str  # the last turn's text, without a persona prefix


@dataclass(slots=True)
class ChatOutcome:
    result: RunResult
    persona: Persona
    conversation: Conversation


def _builtin_fallback(name: str) -> Persona:
    return Persona(
        name=name,
        system_prompt="You are a helpful assistant in a Discord server. Be concise.",
        builtin=True,
    )


class ChatService:
    """Turns a :class:`ChatRequest` into a run of the right persona.

    ``personas``: ``PersonaStore`` (``find``); ``channel_defaults``: a channel's
    default persona (``personas.ChannelDefaults``); ``guild_default``: an async
    function guild id -> persona name (None: no guild defaults); ``threads``: the
    thread bindings; ``lanes``: fair-share lanes (None: no queueing);
    ``to_agent``: persona -> agent (tests give it a scripted model);
    ``sees_images``: whether an agent's model can see images.
    """

    def __init__(
        self,
        *,
        executor: Executor,
        personas: PersonaFinder,
        channel_defaults: DefaultsLookup | None = None,
        guild_default: Callable[[str], Awaitable[str | None]] | None = None,
        threads: ThreadStore | None = None,
        lanes: LanePool | None = None,
        limits: HistoryLimits | None = None,
        fallback_persona: str = "assistant",
        to_agent: Callable[[Persona], RunnableAgent] = to_runnable,
        sees_images: Callable[[RunnableAgent], bool] | None = None,
    ) -> None:
        self.executor = executor
        self.personas = personas
        self.channel_defaults = channel_defaults
        self.guild_default = guild_default
        self.threads: ThreadStore = threads if threads is not None else InMemoryThreadStore()
        self.lanes = lanes
        self.limits = limits or HistoryLimits()
        self.fallback_persona = fallback_persona
        self.to_agent = to_agent
        self.sees_images = sees_images or (lambda _agent: True)

    # --- persona -------------------------------------------------------------------

    async def find_persona(self, guild_id: str | None, name: str) -> Persona | None:
        return await self.personas.find(guild_id, name)

    async def choose_persona(self, request: ChatRequest) -> PersonaChoice:
        """The persona for this request, by the order in the module docstring.

        An explicitly chosen persona that does not exist raises ``PersonaNotFound``;
        a stale default (the persona was deleted) falls through to the next rule.
        """
        prompt = request.turns[-1].content if request.turns else ""
        gid = request.guild_id
        if request.thread_id is not None:
            binding = await self.threads.get(request.thread_id)
            if binding is not None:
                found = await self.personas.find(gid, binding.persona)
                if found is not None:
                    return PersonaChoice(found, "thread", prompt)
        if request.persona:
            found = await self.personas.find(gid, request.persona)
            if found is None:
                raise PersonaNotFound(request.persona)
            return PersonaChoice(found, "explicit", prompt)
        if request.parse_prefix:
            name, rest = parse_persona_prefix(prompt)
            if name is not None:
                found = await self.personas.find(gid, name)
                if found is not None:
                    return PersonaChoice(found, "prefix", rest)
        if len(request.turns) > 1 and request.turns[-2].from_assistant:
            name = request.turns[-2].persona
            if name:
                found = await self.personas.find(gid, name)
                if found is not None:
                    return PersonaChoice(found, "reply", prompt)
        if self.channel_defaults is not None:
            for cid in (request.thread_id, request.channel_id):
                if cid is None:
                    continue
                name = await self.channel_defaults.get(cid)
                if name:
                    found = await self.personas.find(gid, name)
                    if found is not None:
                        return PersonaChoice(found, "channel", prompt)
        if gid is not None and self.guild_default is not None:
            name = await self.guild_default(gid)
            if name:
                found = await self.personas.find(gid, name)
                if found is not None:
                    return PersonaChoice(found, "guild", prompt)
        found = await self.personas.find(gid, self.fallback_persona)
        return PersonaChoice(found or _builtin_fallback(self.fallback_persona), "fallback", prompt)

    # --- running -------------------------------------------------------------------

    def conversation(
        self, turns: Sequence[Turn], agent: RunnableAgent, *, shared: bool
    ) -> Conversation:
        return build_conversation(
            turns, limits=self.limits, shared=shared, see_images=self.sees_images(agent)
        )

    async def run(
        self,
        request: ChatRequest,
        delivery: Delivery,
        *,
        choice: PersonaChoice | None = None,
    ) -> ChatOutcome:
        """Choose the persona, build the conversation, wait in the lane, run."""
        choice = choice or await self.choose_persona(request)
        turns = list(request.turns)
        if turns and choice.prompt != turns[-1].content:
            turns[-1] = replace(turns[-1], content=choice.prompt)
        agent = self.to_agent(choice.persona)
        conv = self.conversation(turns, agent, shared=request.shared)
        note = conv.note()
        add_note = getattr(delivery, "note", None)
        if note and callable(add_note):
            add_note(note)
        invocation = Invocation(
            messages=conv.messages,
            caller=request.caller,
            trigger=request.trigger,
            delivery=delivery,
            metadata={
                **request.metadata,
                "persona_source": choice.source,
                **({"thread_id": request.thread_id} if request.thread_id else {}),
                **({"history_cut": True} if conv.cut else {}),
            },
        )
        async with self._slot(request.caller, delivery):
            result = await self.executor.run(agent, invocation)
        return ChatOutcome(result=result, persona=choice.persona, conversation=conv)

    @asynccontextmanager
    async def _slot(self, caller: Caller, delivery: Delivery) -> AsyncIterator[None]:
        if self.lanes is None:
            yield
            return
        queued = getattr(delivery, "queued", None)

        async def on_position(position: int) -> None:
            if callable(queued):
                out = queued(position)
                if inspect.isawaitable(out):
                    await out

        tasks: set[asyncio.Task[None]] = set()
        async with self.lanes.slot(caller.user_id, on_position=_sync_or_async(on_position, tasks)):
            # Why: the "started" update must reach the member before the answer does.
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            yield


def _sync_or_async(
    fn: Callable[[int], Coroutine[Any, Any, None]], tasks: set[asyncio.Task[None]]
) -> PositionCallback:
    """Lanes may call ``on_position`` synchronously; schedule the update then."""

    def call(position: int) -> Any:
        coro = fn(position)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - lanes run on the loop
            coro.close()
            return None
        task = loop.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    return call
