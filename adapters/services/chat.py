"""The chat flow: a member's message, a ``/chat`` or a scheduled post becomes a run.

Host-neutral: it imports neither discord nor SQLAlchemy. The edge (the Discord cog,
the console) describes what arrived (an :class:`IncomingMessage`, or a
:class:`ChatRequest` with the conversation as turns) and hands over a
:class:`ChatSurface`, which reads history and speaks where the flow tells it. The
flow decides the rest:

- whether to answer (:meth:`ChatService.should_answer`): a mention, a reply to one
  of coterie's messages, a DM (when DMs are allowed), any message in a thread bound
  to a persona; in a guild, only in the channels and categories its admins chose
  (``/config answer-in``); a DM, only while the deployment allows DMs and, when some
  guild turned them off, from a member of a guild that did not;
- which history to read (the thread's, the DM's or the reply chain);
- which persona answers (:meth:`ChatService.choose_persona`), in order: the
  thread's (a bound ``/chat`` thread), one named explicitly (``/chat persona:``),
  one named at the start of the message (``researcher: ...``), the one that wrote
  the message being replied to, the channel's default, the guild's default, and
  the deployment's fallback;
- for ``/chat``, opening a thread and binding it to the persona
  (:meth:`ChatService.start_thread`);
- for the scheduler and skills, posting as a persona in a channel with no message to
  answer (:meth:`ChatService.post_as`), with the persona a skill names, else the
  guild's default, else the fallback (:meth:`ChatService.persona_for`);

then builds the conversation within its caps, applies the guild's settings to the
run (its default tier to agents on the deployment's default tier, its critic limits
to agents without their own, the cost footer) and gives it to the
:class:`~adapters.services.runner.Runner` (the member's lane, then the executor).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

from adapters.services.conversation import (
    Conversation,
    HistoryLimits,
    Turn,
    build_conversation,
    parse_persona_prefix,
    starter_text,
)
from adapters.services.errors import NotAnsweringHere
from adapters.services.memory import MemoryService
from adapters.services.ports import (
    GuildConfig,
    GuildSettingsStore,
    InMemoryThreadStore,
    ThreadStore,
)
from adapters.services.runner import LanePool, Runner
from executor.agent import Caller, Invocation, RunnableAgent, RunResult
from executor.ports import Checkpoint, Delivery
from executor.run import Executor
from personas.errors import PersonaNotFound
from personas.model import Persona
from personas.runnable import to_runnable

__all__ = [
    "ChatOutcome",
    "ChatRequest",
    "ChatService",
    "ChatSurface",
    "GuildMembership",
    "HistorySource",
    "IncomingMessage",
    "PersonaChoice",
    "PersonaFinder",
    "thread_name",
]

log = logging.getLogger(__name__)

THREAD_NAME_MAX = 100

HistorySource = Literal["thread", "dm", "reply_chain"]


class PersonaFinder(Protocol):
    """What the flow needs of ``personas.PersonaStore``."""

    async def find(self, guild_id: str | None, name: str) -> Persona | None: ...


class ChatSurface(Protocol):
    """Where the flow reads and speaks: one channel, thread or DM (the Discord edge)."""

    async def history(self, source: HistorySource, *, max_messages: int) -> list[Turn]:
        """The conversation up to the message being answered, oldest first, as turns."""
        ...

    async def open_thread(self, name: str, starter: str) -> str | None:
        """Post ``starter`` and open a thread named ``name`` from it; the surface then
        speaks in that thread. Returns the thread's id, or None where threads are not
        possible (the surface then answers below the starter)."""
        ...

    async def delivery(self, persona: Persona) -> Delivery:
        """A delivery that speaks as ``persona`` where the surface now points."""
        ...


@runtime_checkable
class GuildMembership(Protocol):
    """A DM surface that can tell which guilds the member shares with coterie."""

    async def shares_guild(self, *, excluding: Collection[str]) -> bool:
        """Whether the member is in a guild with coterie other than ``excluding``."""
        ...


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A member's message, as the facts the edge read off it."""

    caller: Caller
    guild_id: str | None  # None: a DM
    channel_id: str  # the parent channel for a thread
    thread_id: str | None = None
    category_id: str | None = None  # the (parent) channel's category
    mentions_bot: bool = False
    replies_to_ours: bool = False  # a reply to the bot or one of its personas
    is_reply: bool = False  # a reply to any message

    @property
    def is_dm(self) -> bool:
        return self.guild_id is None


@dataclass(slots=True)
class ChatRequest:
    """One request to chat, host-neutral. ``turns``: oldest first, the request last."""

    caller: Caller
    turns: list[Turn]
    trigger: str = "chat"  # chat, slash, console, schedule
    guild_id: str | None = None
    channel_id: str | None = None  # the parent channel for a thread
    thread_id: str | None = None
    category_id: str | None = None  # the (parent) channel's category
    persona: str | None = None  # chosen explicitly (/chat persona:, --persona)
    parse_prefix: bool = True  # "researcher: ..." at the start of the last turn
    shared: bool = True  # more than two people may speak: name each user turn
    metadata: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None  # the run's id, when the caller chose it (a scheduled slot)


@dataclass(frozen=True, slots=True)
class PersonaChoice:
    persona: Persona
    source: str  # thread, explicit, prefix, reply, channel, guild, fallback
    prompt: str  # the last turn's text, without a persona prefix


@dataclass(slots=True)
class ChatOutcome:
    result: RunResult
    persona: Persona
    conversation: Conversation
    thread_id: str | None = None


def thread_name(prompt: str) -> str:
    name = " ".join(prompt.split()) or "chat"
    return name if len(name) <= THREAD_NAME_MAX else name[: THREAD_NAME_MAX - 1] + "…"


def _builtin_fallback(name: str) -> Persona:
    return Persona(
        name=name,
        system_prompt="You are a helpful assistant in a Discord server. Be concise.",
        builtin=True,
    )


Announce = Callable[[Persona, str | None], Awaitable[None]]


class ChatService:
    """Turns what arrived into a run of the right persona.

    ``personas``: ``PersonaStore`` (``find``); ``guild_settings``: the guilds' and
    channels' defaults (None: none); ``threads``: the thread bindings; ``runner``
    (or ``lanes``): where runs wait for their slot; ``to_agent``: persona -> agent
    (tests give it a scripted model); ``sees_images``: whether an agent's model
    can see images (from its model's profile); ``allow_dms``: answer DMs.
    """

    def __init__(
        self,
        *,
        executor: Executor,
        personas: PersonaFinder,
        guild_settings: GuildSettingsStore | None = None,
        threads: ThreadStore | None = None,
        lanes: LanePool | None = None,
        runner: Runner | None = None,
        limits: HistoryLimits | None = None,
        fallback_persona: str = "assistant",
        to_agent: Callable[[Persona], RunnableAgent] = to_runnable,
        sees_images: Callable[[RunnableAgent], bool] | None = None,
        allow_dms: bool = True,
        default_tier: str = "standard",
        memory: MemoryService | None = None,
    ) -> None:
        self.executor = executor
        self.personas = personas
        self.guild_settings = guild_settings
        self.threads: ThreadStore = threads if threads is not None else InMemoryThreadStore()
        self.runner = runner if runner is not None else Runner(executor, lanes)
        self.limits = limits or HistoryLimits()
        self.fallback_persona = fallback_persona
        self.to_agent = to_agent
        self.sees_images = sees_images or (lambda _agent: True)
        self.allow_dms = allow_dms
        self.default_tier = default_tier
        self.memory = memory

    # --- a member's message ----------------------------------------------------------

    async def _config(self, guild_id: str | None) -> GuildConfig | None:
        if guild_id is None or self.guild_settings is None:
            return None
        return await self.guild_settings.guild(guild_id)

    async def answers_in(
        self, guild_id: str | None, channel_id: str | None, category_id: str | None
    ) -> bool:
        """Whether the guild's admins let coterie answer in this channel."""
        config = await self._config(guild_id)
        return config is None or config.answers_in(channel_id, category_id)

    async def answers_dm(self, surface: object = None) -> bool:
        if not self.allow_dms:
            return False
        if self.guild_settings is None:
            return True
        off = await self.guild_settings.guilds_without_dms()
        if not off:
            return True
        # Why the member's guilds: a guild's admins decide for their own members only.
        if isinstance(surface, GuildMembership):
            return await surface.shares_guild(excluding=off)
        return False

    async def should_answer(self, msg: IncomingMessage, surface: object = None) -> bool:
        """``surface``: where the message came from (a DM's tells the member's guilds)."""
        if msg.is_dm:
            return await self.answers_dm(surface)
        if not await self.answers_in(msg.guild_id, msg.channel_id, msg.category_id):
            return False
        if msg.mentions_bot or msg.replies_to_ours:
            return True
        # Why last: the only check that reads the database (it runs for every thread message).
        return msg.thread_id is not None and await self.threads.get(msg.thread_id) is not None

    @staticmethod
    def history_source(msg: IncomingMessage) -> HistorySource:
        if msg.thread_id is not None:
            return "thread"
        if msg.is_dm and not msg.is_reply:
            return "dm"
        return "reply_chain"

    async def answer(self, msg: IncomingMessage, surface: ChatSurface) -> ChatOutcome | None:
        """Answer ``msg`` when it is addressed to coterie (None when it is not)."""
        if not await self.should_answer(msg, surface):
            return None
        turns = await surface.history(
            self.history_source(msg), max_messages=self.limits.max_messages
        )
        request = ChatRequest(
            caller=msg.caller,
            turns=turns,
            trigger="chat",
            guild_id=msg.guild_id,
            channel_id=msg.channel_id,
            thread_id=msg.thread_id,
            category_id=msg.category_id,
            shared=not msg.is_dm,
        )
        choice = await self.choose_persona(request)
        delivery = await surface.delivery(choice.persona)
        return await self.run(request, delivery, choice=choice)

    # --- /chat: a new thread -----------------------------------------------------------

    async def start_thread(
        self,
        request: ChatRequest,
        surface: ChatSurface,
        *,
        announce: Announce | None = None,
    ) -> ChatOutcome:
        """Answer ``request`` (its last turn the prompt) in a new thread bound to the
        persona; where no thread can be opened, below the starter message.

        ``announce(persona, thread_id)`` is awaited once the thread exists, before the
        run (the cog tells the member where to look). An explicitly named persona
        that does not exist raises ``PersonaNotFound`` before anything is posted, and
        a channel the guild's admins did not open to coterie ``NotAnsweringHere``.
        """
        if not await self.answers_in(request.guild_id, request.channel_id, request.category_id):
            raise NotAnsweringHere()
        choice = await self.choose_persona(request)
        persona = choice.persona
        starter = starter_text(request.caller.display_name, persona.name, choice.prompt)
        thread_id = await surface.open_thread(thread_name(choice.prompt), starter)
        if thread_id is not None:
            await self.threads.bind(
                thread_id=thread_id,
                guild_id=request.guild_id or "",
                channel_id=request.channel_id or "",
                persona=persona.name,
                created_by=request.caller.user_id,
            )
            request.thread_id = thread_id
        if announce is not None:
            await announce(persona, thread_id)
        delivery = await surface.delivery(persona)
        outcome = await self.run(request, delivery, choice=choice)
        outcome.thread_id = thread_id
        return outcome

    # --- the scheduler: post as a persona in a channel ---------------------------------

    async def post_as(
        self,
        *,
        persona: Persona,
        caller: Caller,
        prompt: str,
        surface: ChatSurface,
        trigger: str = "schedule",
        agent: RunnableAgent | None = None,
        metadata: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> ChatOutcome:
        """Run ``prompt`` as ``persona`` (or ``agent``, built from it) and post the
        answer through ``surface``, with no message to answer. The persona is the
        caller's, already found (:meth:`persona_for`)."""
        request = ChatRequest(
            caller=caller,
            turns=[Turn(author_name=caller.display_name, content=prompt)],
            trigger=trigger,
            guild_id=caller.guild_id,
            channel_id=caller.channel_id,
            parse_prefix=False,
            shared=False,
            metadata=dict(metadata or {}),
            run_id=run_id,
        )
        delivery = await surface.delivery(persona)
        return await self.run(
            request, delivery, choice=PersonaChoice(persona, "explicit", prompt), agent=agent
        )

    # --- persona -------------------------------------------------------------------

    async def find_persona(self, guild_id: str | None, name: str) -> Persona | None:
        return await self.personas.find(guild_id, name)

    async def persona_for(self, guild_id: str | None, name: str | None) -> Persona:
        """The persona called ``name``, or with no name the guild's default, else the
        deployment's fallback (a skill's persona). ``PersonaNotFound`` when the one
        named, or a default that was deleted, does not exist."""
        if not name:
            config = await self._config(guild_id)
            name = (config.default_persona if config else None) or self.fallback_persona
        found = await self.personas.find(guild_id, name)
        if found is None:
            raise PersonaNotFound(name)
        return found

    async def _found(self, gid: str | None, name: str | None) -> Persona | None:
        return await self.personas.find(gid, name) if name else None

    async def choose_persona(self, request: ChatRequest) -> PersonaChoice:
        """The persona for this request, by the order in the module docstring.

        An explicitly chosen persona that does not exist raises ``PersonaNotFound``;
        a stale default (the persona was deleted) falls through to the next rule.
        """
        prompt = request.turns[-1].content if request.turns else ""
        gid = request.guild_id
        if request.thread_id is not None:
            binding = await self.threads.get(request.thread_id)
            if binding is not None and (found := await self._found(gid, binding.persona)):
                return PersonaChoice(found, "thread", prompt)
        if request.persona:
            found = await self.personas.find(gid, request.persona)
            if found is None:
                raise PersonaNotFound(request.persona)
            return PersonaChoice(found, "explicit", prompt)
        if request.parse_prefix:
            name, rest = parse_persona_prefix(prompt)
            if name is not None and (found := await self._found(gid, name)):
                return PersonaChoice(found, "prefix", rest)
        replied = request.turns[-2] if len(request.turns) > 1 else None
        if replied is not None and replied.from_assistant:
            found = await self._found(gid, replied.persona)
            if found is not None:
                return PersonaChoice(found, "reply", prompt)
        settings = self.guild_settings
        if settings is not None:
            for cid in (request.thread_id, request.channel_id):
                if cid is not None and (
                    found := await self._found(gid, await settings.channel_persona(cid))
                ):
                    return PersonaChoice(found, "channel", prompt)
            if gid is not None:
                config = await settings.guild(gid)
                if found := await self._found(gid, config.default_persona):
                    return PersonaChoice(found, "guild", prompt)
        found = await self.personas.find(gid, self.fallback_persona)
        return PersonaChoice(found or _builtin_fallback(self.fallback_persona), "fallback", prompt)

    # --- running -------------------------------------------------------------------

    def for_guild(self, agent: RunnableAgent, config: GuildConfig | None) -> RunnableAgent:
        """The agent with the guild's default tier (when it is on the deployment's
        default) and critic limits (where it has none of its own)."""
        if config is None:
            return agent
        changes: dict[str, Any] = {}
        if config.default_tier and agent.tier == self.default_tier:
            changes["tier"] = config.default_tier
        b = agent.bounds
        bounds: dict[str, Any] = {}
        if config.critic_soft_runtime_s is not None and b.soft_runtime_s is None:
            bounds["soft_runtime_s"] = config.critic_soft_runtime_s
        if config.critic_soft_steps is not None and b.soft_steps is None:
            bounds["soft_steps"] = config.critic_soft_steps
        hard = config.critic_hard_runtime_s
        if hard is not None and hard < b.max_runtime_s:
            bounds["max_runtime_s"] = hard
        if bounds:
            changes["bounds"] = replace(b, **bounds)
        return replace(agent, **changes) if changes else agent

    def conversation(
        self, turns: Sequence[Turn], agent: RunnableAgent, *, shared: bool
    ) -> Conversation:
        return build_conversation(
            turns, limits=self.limits, shared=shared, see_images=self.sees_images(agent)
        )

    async def _with_memory(
        self,
        request: ChatRequest,
        agent: RunnableAgent,
        delivery: Delivery,
        choice: PersonaChoice,
        config: GuildConfig | None,
    ) -> tuple[RunnableAgent, Delivery]:
        """The agent with what it remembers in its system prompt (or without its memory
        tools where memory is off), and a delivery that says what the run saved."""
        assert self.memory is not None
        agent, remembers = await self.memory.prepare(
            request.caller, agent, choice.prompt, config=config
        )
        if remembers:
            delivery = self.memory.telling_saves(delivery, request.caller.user_id)
        return agent, delivery

    async def run(
        self,
        request: ChatRequest,
        delivery: Delivery,
        *,
        choice: PersonaChoice | None = None,
        agent: RunnableAgent | None = None,
    ) -> ChatOutcome:
        """Choose the persona, build the conversation, wait in the lane, run."""
        choice = choice or await self.choose_persona(request)
        turns = list(request.turns)
        if turns and choice.prompt != turns[-1].content:
            turns[-1] = replace(turns[-1], content=choice.prompt)
        config = await self._config(request.guild_id)
        agent = self.for_guild(agent or self.to_agent(choice.persona), config)
        if self.memory is not None:
            agent, delivery = await self._with_memory(request, agent, delivery, choice, config)
        conv = self.conversation(turns, agent, shared=request.shared)
        note = conv.note()
        if note:
            delivery.note(note)
        if config is not None and config.cost_footer:
            delivery.show_cost_footer()
        invocation = Invocation(
            messages=conv.messages,
            caller=request.caller,
            trigger=request.trigger,
            delivery=delivery,
            run_id=request.run_id,
            metadata={
                **request.metadata,
                "persona_source": choice.source,
                **({"thread_id": request.thread_id} if request.thread_id else {}),
                **({"history_cut": True} if conv.cut else {}),
            },
        )
        result = await self.runner.run(agent, invocation)
        return ChatOutcome(result=result, persona=choice.persona, conversation=conv)

    async def resume(
        self,
        checkpoint: Checkpoint,
        *,
        agent: RunnableAgent,
        persona: Persona,
        caller: Caller,
        surface: ChatSurface,
        run_id: str,
    ) -> RunResult:
        """Continue an interrupted run from ``checkpoint`` as a new run ``run_id``
        (linked to it by ``resumed_from``), as ``agent`` with the guild's settings and
        memory as they are now (the checkpoint holds no system prompt), for ``caller``
        (their privilege now), answering through ``surface``."""
        config = await self._config(caller.guild_id)
        agent = self.for_guild(agent, config)
        delivery = await surface.delivery(persona)
        if self.memory is not None:
            prompt = next(
                (m.text for m in reversed(checkpoint.messages) if m.role == "user" and m.text),
                "",
            )
            agent, remembers = await self.memory.prepare(caller, agent, prompt, config=config)
            if remembers:
                delivery = self.memory.telling_saves(delivery, caller.user_id)
        if config is not None and config.cost_footer:
            delivery.show_cost_footer()
        invocation = Invocation(
            messages=[],
            caller=caller,
            trigger=checkpoint.trigger,
            delivery=delivery,
            run_id=run_id,
            resume=checkpoint,
            metadata={**checkpoint.metadata, "resumed_from": checkpoint.run_id},
        )
        return await self.runner.run(agent, invocation)
