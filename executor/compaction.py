"""Context compaction: summarise the oldest turns when a request grows too big.

::

    hook = CompactionHook(summariser="fast", resolver=tiers)   # or summariser=<Model>
    Executor(models=tiers, hooks=[hook])

Before each model request the hook estimates the conversation's tokens; when
they pass ``trigger_share`` of the model's context window (its profile's
``context_window``: for a tier, the candidate that will answer) it summarises the
oldest turns with a cheap model into one message and keeps the system prompt
and the newest turns. A tool call is never separated from its result, and the
member's latest message is never summarised away (it is kept verbatim). When a
provider answers :class:`~executor.errors.ContextTooLong` anyway, the hook
compacts harder and the step is retried once.

Each compaction is a :class:`~executor.events.CompactionEvent` (tokens before
and after, the model used, its usage); the summary's usage and cost are added
to the run's. Inside a run, each summarising call is covered by the run's
reservation before it is made, at the summariser tier's price, and counted as soon
as it answers (:meth:`executor.spend.RunBudget.covered`); a call the budget cannot
cover is not made, and the run stops ``budget_exhausted`` before its next step.

Token counts are :mod:`executor.tokens`' estimate (the one the budget
reservation uses too) calibrated per model by the input tokens the provider reported for earlier requests; a
``counter`` may supply a provider's own count instead.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from executor.errors import ContextTooLong, ModelAPIError
from executor.events import CompactionEvent
from executor.hooks import RunHook, RunState
from executor.messages import Message, Usage
from executor.models.base import DEFAULT_PROFILE, Model, ModelRequest, ModelResponse, profile_of
from executor.ports import Clock, RealClock
from executor.structured import TierResolver, resolve_model
from executor.tokens import estimate_message_tokens

__all__ = [
    "SUMMARY_PREFIX",
    "Compaction",
    "CompactionHook",
    "Compactor",
    "TokenCounter",
    "TokenEstimator",
]


class TokenEstimator:
    """Estimates tokens per model, calibrated by what providers reported.

    After each response the ratio of the reported input tokens to the estimate
    of that request moves the model's factor (a moving average, clamped).
    """

    def __init__(self, *, smoothing: float = 0.3) -> None:
        self._factor: dict[str, float] = {}
        self._smoothing = smoothing

    def factor(self, model_name: str) -> float:
        return self._factor.get(model_name, 1.0)

    def raw(self, messages: Sequence[Message]) -> float:
        return sum(estimate_message_tokens(m) for m in messages)

    def estimate(self, model_name: str, messages: Sequence[Message]) -> int:
        return int(self.raw(messages) * self.factor(model_name)) + 1

    def observe(self, model_name: str, messages: Sequence[Message], input_tokens: int) -> None:
        raw = self.raw(messages)
        if input_tokens <= 0 or raw < 200:  # too small to say anything
            return
        ratio = max(0.5, min(3.0, input_tokens / raw))
        old = self._factor.get(model_name)
        self._factor[model_name] = ratio if old is None else old + self._smoothing * (ratio - old)


TokenCounter = Callable[[Model, Sequence[Message]], Awaitable[int | None]]


@dataclass(frozen=True, slots=True)
class Compaction:
    """What one compaction did."""

    messages: list[Message]
    tokens_before: int
    tokens_after: int
    summarised: int
    model: str
    usage: Usage


SUMMARY_PREFIX = "[Summary of the earlier conversation]"

_SUMMARY_SYSTEM = (
    "You compress the earlier part of a conversation between members of a chat server "
    "and an AI assistant, so the assistant can continue it. Write a concise summary: who "
    "asked what, facts and numbers established, decisions made, tool results that still "
    "matter, and open questions. Keep names, identifiers, URLs and figures exact. Write "
    "plain prose or short bullets, no preamble."
)


def _render(message: Message, clip: int) -> str:
    who = message.role if message.name is None else f"{message.role} ({message.name})"
    lines: list[str] = []
    for p in message.parts:
        if p.type == "text":
            text = p.text
            if text.startswith(SUMMARY_PREFIX):
                lines.append(f"(earlier summary) {text[len(SUMMARY_PREFIX) :].strip()}")
                continue
            lines.append(f"{who}: {_clip(text, clip)}")
        elif p.type == "tool_call":
            args = json.dumps(p.arguments, default=str, ensure_ascii=False)
            lines.append(f"assistant called {p.name}({_clip(args, clip // 4)})")
        elif p.type == "tool_result":
            tag = "failed" if p.is_error else "returned"
            lines.append(f"tool {p.name} {tag}: {_clip(p.content, clip)}")
        else:
            lines.append(f"{who}: [image]")
    return "\n".join(lines)


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} [... {len(text) - limit} characters ...] {text[-half:]}"


def _latest_user(messages: Sequence[Message]) -> int | None:
    """The index of the member's latest message (a user message that is not only tool results)."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m.role == "user" and any(p.type != "tool_result" for p in m.parts):
            return i
    return None


def _can_split_at(messages: Sequence[Message], i: int) -> bool:
    """Whether the kept part may start at ``i``: it must not open on orphaned tool results."""
    return not any(p.type == "tool_result" for p in messages[i].parts)


class Compactor:
    """Summarises the oldest turns of a conversation with a cheap model."""

    def __init__(
        self,
        summariser: Model | str = "fast",
        *,
        resolver: TierResolver | None = None,
        keep_share: float = 0.35,
        summary_max_tokens: int = 1024,
        clip_chars: int = 2000,
        estimator: TokenEstimator | None = None,
    ) -> None:
        if not 0 < keep_share < 1:
            raise ValueError("keep_share must be between 0 and 1")
        self._summariser = summariser
        self._resolver = resolver
        self.keep_share = keep_share
        self.summary_max_tokens = summary_max_tokens
        self.clip_chars = clip_chars
        self.estimator = estimator or TokenEstimator()

    @property
    def summariser_tier(self) -> str | None:
        """The summariser's tier, when it was given as one (it prices the calls)."""
        return self._summariser if isinstance(self._summariser, str) else None

    def summariser(self) -> Model:
        return resolve_model(self._summariser, self._resolver)

    def split_point(self, messages: Sequence[Message], keep_tokens: int, model_name: str) -> int:
        """The first kept index: as few newest messages as fit ``keep_tokens``, at least
        the latest, never starting on tool results. 0 means nothing can be summarised."""
        factor = self.estimator.factor(model_name)
        kept = 0.0
        best = 0
        for i in range(len(messages) - 1, 0, -1):
            kept += estimate_message_tokens(messages[i]) * factor
            if not _can_split_at(messages, i):
                continue
            if kept > keep_tokens and best:
                break
            best = i
        return best

    async def compact(
        self,
        messages: Sequence[Message],
        model_name: str,
        *,
        keep_tokens: int | None = None,
        window: int | None = None,
        summariser: Model | None = None,
    ) -> Compaction | None:
        """Summarise the oldest part of ``messages`` (no system prompt), or None if
        there is nothing that may be summarised.

        ``model_name`` keys the token calibration; ``keep_tokens`` defaults to
        ``keep_share`` of ``window`` (the model's context window); ``summariser``
        replaces :meth:`summariser` (a run passes it wrapped, to cover its calls)."""
        before = self.estimator.estimate(model_name, messages)
        if keep_tokens is None:
            keep_tokens = int((window or DEFAULT_PROFILE.context_window) * self.keep_share)
        split = self.split_point(messages, keep_tokens, model_name)
        if split <= 0:
            return None
        latest = _latest_user(messages)
        old = list(messages[:split])
        pinned: list[Message] = []
        if latest is not None and latest < split:
            # Why: the member's latest request is what the run is for; keep it verbatim.
            pinned = [old.pop(latest)]
        if not old:
            return None
        summary, usage, used = await self._summarise(summariser or self.summariser(), old)
        out = [
            Message.user(f"{SUMMARY_PREFIX}\n{summary}"),
            *pinned,
            *messages[split:],
        ]
        return Compaction(
            messages=out,
            tokens_before=before,
            tokens_after=self.estimator.estimate(model_name, out),
            summarised=len(old),
            model=used,
            usage=usage,
        )

    async def _summarise(self, model: Model, old: Sequence[Message]) -> tuple[str, Usage, str]:
        # Rolling summary over chunks that fit the summariser's own window.
        budget_chars = int(profile_of(model).context_window * 0.5 * 4)
        chunks: list[str] = []
        current: list[str] = []
        size = 0
        for m in old:
            line = _render(m, self.clip_chars)
            if current and size + len(line) > budget_chars:
                chunks.append("\n".join(current))
                current, size = [], 0
            current.append(line[:budget_chars])
            size += len(line) + 1
        if current:
            chunks.append("\n".join(current))
        summary = ""
        usage = Usage()
        used = model.name
        for chunk in chunks:
            prompt = (
                f"Summary so far:\n{summary}\n\nThe conversation continues:\n{chunk}"
                if summary
                else f"The conversation:\n{chunk}"
            )
            response = await model.generate(
                ModelRequest(
                    messages=[Message.system(_SUMMARY_SYSTEM), Message.user(prompt)],
                    max_tokens=self.summary_max_tokens,
                    temperature=0.0,
                )
            )
            summary = response.text.strip() or summary
            usage = usage + response.usage
            used = response.model
        return summary, usage, used


class CompactionHook(RunHook):
    """Compacts a run's conversation before a request would pass ``trigger_share``
    of the model's window, and once more on ``ContextTooLong``."""

    def __init__(
        self,
        summariser: Model | str = "fast",
        *,
        resolver: TierResolver | None = None,
        trigger_share: float = 0.75,
        keep_share: float = 0.35,
        counter: TokenCounter | None = None,
        compactor: Compactor | None = None,
        cost: Callable[[str, Usage], int] | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not 0 < keep_share < trigger_share <= 1:
            raise ValueError("need 0 < keep_share < trigger_share <= 1")
        self.trigger_share = trigger_share
        self.clock: Clock = clock or RealClock()
        self.counter = counter
        self.cost = cost
        self.compactor = compactor or Compactor(
            summariser, resolver=resolver, keep_share=keep_share
        )

    @property
    def estimator(self) -> TokenEstimator:
        return self.compactor.estimator

    async def count(self, state: RunState, messages: Sequence[Message]) -> int:
        if self.counter is not None:
            counted = await self.counter(state.model, messages)
            if counted is not None:
                return counted
        return self.estimator.estimate(state.model.name, messages)

    @staticmethod
    def window(state: RunState) -> int:
        """The context window of the model the run's next request goes to."""
        return profile_of(state.model).context_window

    async def before_model_request(self, state: RunState, request: ModelRequest) -> ModelRequest:
        system = [m for m in request.messages if m.role == "system"]
        window = self.window(state)
        tokens = await self.count(state, [*system, *state.messages])
        if tokens > window * self.trigger_share:
            system_tokens = self.estimator.estimate(state.model.name, system)
            keep = max(256, int(window * self.compactor.keep_share) - system_tokens)
            await self._compact(state, keep)
        rest = request.messages[len(system) :]
        if len(rest) != len(state.messages) or any(
            a is not b for a, b in zip(rest, state.messages, strict=True)
        ):
            request = dataclasses.replace(request, messages=[*system, *state.messages])
        state.extra["compaction.sent"] = request.messages
        return request

    async def after_model_response(self, state: RunState, response: ModelResponse) -> None:
        sent = state.extra.pop("compaction.sent", None)
        if sent is not None and response.usage.input_tokens > 0:
            self.estimator.observe(state.model.name, sent, response.usage.input_tokens)

    async def on_model_error(self, state: RunState, error: ModelAPIError, attempt: int) -> bool:
        if not isinstance(error, ContextTooLong) or attempt > 1:
            return False
        window = self.window(state)
        now = self.estimator.estimate(state.model.name, state.messages)
        # Why harder than usual: the provider's limit is below what we sent, whatever
        # the table says; keep at most a third of it.
        keep = max(256, min(int(window * self.compactor.keep_share / 2), now // 3))
        return await self._compact(state, keep)

    def _costed(self, model: str, usage: Usage) -> Usage:
        if self.cost is not None and usage.cost_micros == 0:
            return usage.model_copy(update={"cost_micros": self.cost(model, usage)})
        return usage

    async def _compact(self, state: RunState, keep_tokens: int) -> bool:
        money = state.budget
        if money is None:  # outside a run: counted once done
            done = await self.compactor.compact(
                state.messages, state.model.name, keep_tokens=keep_tokens
            )
            if done is None:
                return False
            usage = self._costed(done.model, done.usage)
            state.add_usage(usage)
        else:
            # Each call covered before it is made and counted as it answers: a refusal
            # or a failure part-way still charges the calls that were made.
            counted = Usage()
            summariser = self.compactor.summariser()

            def count(call: Usage, model: str) -> None:
                nonlocal counted
                call = self._costed(model, call)
                counted = counted + call
                state.add_usage(call)

            tier = self.compactor.summariser_tier
            covered = money.covered(
                summariser,
                money.price_of(tier) if tier is not None and money.price_of else None,
                spent=lambda: state.usage.cost_micros,
                count=count,
            )
            done = await self.compactor.compact(
                state.messages, state.model.name, keep_tokens=keep_tokens, summariser=covered
            )
            if done is None:
                return False
            usage = counted
        state.messages[:] = done.messages
        if state.emit is not None:
            await state.emit(
                CompactionEvent(
                    run_id=state.run_id,
                    at=self.clock.now(),
                    tokens_before=done.tokens_before,
                    tokens_after=done.tokens_after,
                    model=done.model,
                    usage=usage,
                    messages_summarised=done.summarised,
                )
            )
        return True
