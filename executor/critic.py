"""The critic: a watchdog for long runs, one explicit state machine per run.

::

    critic = WatchdogCritic(CriticConfig(soft_runtime_s=60, judge="fast"),
                            clock=clock, escalator=admin_channel, resolver=tiers)
    Executor(critic=critic, clock=clock, ...)     # the same clock for both

States and moves (anything else is a bug and raises)::

    watching ──soft limit──> soft_exceeded ──continue──> watching   (new soft limit)
        │                        ├──────────warn──────> warned     (status line; new soft limit)
        │                        └──────────stop──────> stopping
        │                    warned ──soft limit──> soft_exceeded
        └──hard limit (from watching, warned or soft_exceeded)──> stopping
    any ──the run ends──> done

The soft limit is wall time or steps (``Bounds.soft_runtime_s`` / ``soft_steps``
of the agent, else the config's defaults). At it the critic gives a verdict
from cheap signals: the same tool with the same arguments ``repeat_limit``
times, ``stale_steps`` steps in a row that added nothing new, a token burn rate
over ``max_tokens_per_s``; and, where ``judge`` is set, a short structured
judgement by a cheap tier ("making progress?"; its call is covered by the run's
reservation before it is made and charged to the run, and one the member's budget
cannot cover is not made: the verdict is then a warning). ``continue`` extends the soft
limit quietly, ``warn`` tells the delivery ("still working: step 12, 95 s") and
extends it, ``stop`` ends the run (status ``killed``).

The hard limit (``hard_runtime_s``, default ``hard_factor`` x the soft runtime)
kills the run whatever the verdicts were; the run keeps its partial output and
its note says the critic stopped it. Every verdict is a
:class:`~executor.events.CriticVerdictEvent`; stops and kills also go to the
:class:`~executor.ports.Escalator`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from executor.agent import RunStatus
from executor.errors import BudgetExceeded, ModelAPIError, StructuredOutputError
from executor.events import (
    CriticVerdictEvent,
    ModelRequestEvent,
    RunEvent,
    StepFinished,
    ToolCallStarted,
)
from executor.messages import Message, Usage
from executor.models.base import Model
from executor.ports import (
    AuditSink,
    Clock,
    Escalation,
    Escalator,
    NullEscalator,
    RealClock,
    RunControl,
)
from executor.structured import TierResolver, generate_structured, resolve_model

__all__ = [
    "CriticConfig",
    "CriticState",
    "IllegalTransition",
    "Judgement",
    "RunWatch",
    "Verdict",
    "WatchdogCritic",
]

log = logging.getLogger(__name__)


class CriticState(enum.StrEnum):
    WATCHING = "watching"
    SOFT_EXCEEDED = "soft_exceeded"
    WARNED = "warned"
    STOPPING = "stopping"
    DONE = "done"


_S = CriticState
_MOVES: Mapping[CriticState, frozenset[CriticState]] = {
    _S.WATCHING: frozenset({_S.SOFT_EXCEEDED, _S.STOPPING, _S.DONE}),
    _S.SOFT_EXCEEDED: frozenset({_S.WATCHING, _S.WARNED, _S.STOPPING, _S.DONE}),
    _S.WARNED: frozenset({_S.SOFT_EXCEEDED, _S.STOPPING, _S.DONE}),
    _S.STOPPING: frozenset({_S.DONE}),
    _S.DONE: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A move the critic's state machine does not have: a bug in the critic."""


@dataclass(frozen=True, slots=True)
class CriticConfig:
    """Defaults for every run; an agent's ``Bounds.soft_*`` override the soft limits."""

    soft_runtime_s: float = 60.0
    soft_steps: int = 8
    hard_runtime_s: float | None = None  # None: hard_factor x the soft runtime
    hard_factor: float = 3.0
    extend_s: float | None = None  # after continue/warn; None: the soft runtime again
    extend_steps: int | None = None  # None: the soft steps again
    repeat_limit: int = 3  # the same tool call this many times: stop
    stale_steps: int = 3  # this many steps in a row with nothing new: stop
    max_tokens_per_s: float | None = None  # a burn rate above this: stop
    judge: Model | str | None = None  # a cheap model or tier for "making progress?"
    judge_timeout_s: float = 30.0
    status_line: str = "still working: step {step}, {elapsed:.0f} s"


class Judgement(BaseModel):
    """Your judgement of whether an agent's long run is making progress."""

    progress: bool = Field(description="true if the run is getting closer to its goal")
    reason: str = Field(description="one short sentence")
    more_seconds: float | None = Field(
        default=None, description="how much longer to let it run before asking again"
    )


VerdictKind = Literal["continue", "warn", "stop"]


@dataclass(frozen=True, slots=True)
class Verdict:
    verdict: VerdictKind
    reason: str
    extend_s: float | None = None


@dataclass(slots=True)
class _Step:
    calls: list[str] = field(default_factory=list)
    text: str = ""


_JUDGE_SYSTEM = (
    "You watch an AI agent's long run and decide whether it is making progress toward "
    "its goal or going in circles. Judge from the steps shown. Be brief."
)


class RunWatch:
    """The critic's watch over one run (a :class:`~executor.ports.CriticWatch`)."""

    def __init__(
        self,
        control: RunControl,
        config: CriticConfig,
        *,
        clock: Clock,
        escalator: Escalator,
        resolver: TierResolver | None,
        audit: AuditSink | None,
        on_close: Callable[[RunWatch], object] | None = None,
    ) -> None:
        self.control = control
        self._on_close = on_close
        self.config = config
        self.clock = clock
        self.escalator = escalator
        self.resolver = resolver
        self.audit = audit
        bounds = control.agent.bounds
        soft_s = (
            bounds.soft_runtime_s if bounds.soft_runtime_s is not None else config.soft_runtime_s
        )
        soft_steps = bounds.soft_steps if bounds.soft_steps is not None else config.soft_steps
        self.hard_s = (
            config.hard_runtime_s
            if config.hard_runtime_s is not None
            else soft_s * config.hard_factor
        )
        self.soft_at_s = soft_s
        self.soft_at_steps = soft_steps
        self.extend_s = config.extend_s if config.extend_s is not None else soft_s
        self.extend_steps = config.extend_steps if config.extend_steps is not None else soft_steps
        self.state = CriticState.WATCHING
        self.history: list[CriticState] = [self.state]
        self.verdicts: list[CriticVerdictEvent] = []
        self.steps = 0  # completed steps (their tool calls included)
        self.current_step = 0  # the step in flight
        self._log: dict[int, _Step] = {}
        self._judged = Usage()  # what judgements cost since the last verdict recorded
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"critic-{control.run_id}"
        )

    # ------------------------------------------------------------------ the machine

    def _move(self, to: CriticState) -> None:
        if to not in _MOVES[self.state]:
            raise IllegalTransition(f"critic: {self.state} -> {to}")
        self.state = to
        self.history.append(to)

    def elapsed(self) -> float:
        return self.clock.monotonic() - self.control.started_monotonic

    # ------------------------------------------------------------------ CriticWatch

    async def on_event(self, event: RunEvent) -> None:
        if isinstance(event, StepFinished):
            self._log.setdefault(event.step, _Step()).text = event.text_excerpt.strip()
        elif isinstance(event, ToolCallStarted):
            sig = f"{event.name}({json.dumps(event.arguments, sort_keys=True, default=str)})"
            self._log.setdefault(event.step, _Step()).calls.append(sig)
        elif isinstance(event, ModelRequestEvent):
            # Why here and not on StepFinished: a step's tool calls start after it;
            # when the next request starts, the previous step is complete.
            self.current_step = event.step
            done = event.step - 1
            if done > self.steps:
                self.steps = done
                if done >= self.soft_at_steps:
                    self._wake.set()

    async def close(self) -> None:
        task = self._task
        if self.state is CriticState.STOPPING and not task.done():
            # Let the stop finish recording and escalating: it is why the run ended.
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(10):
                    await asyncio.shield(task)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.state is not CriticState.DONE:
            self._move(CriticState.DONE)
        if self._on_close is not None:
            self._on_close(self)

    # ------------------------------------------------------------------ the timer

    async def _run(self) -> None:
        while self.state in (CriticState.WATCHING, CriticState.WARNED):
            self._wake.clear()
            now = self.elapsed()
            if now >= self.hard_s:
                await self._kill(f"the run passed the critic's hard limit of {self.hard_s:g} s")
                return
            if now >= self.soft_at_s or self.steps >= self.soft_at_steps:
                await self._soft_exceeded()
                continue
            await self._wait(min(self.hard_s, self.soft_at_s) - now)

    async def _wait(self, seconds: float) -> None:
        sleeper = asyncio.ensure_future(self.clock.sleep(max(seconds, 0.0)))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait([sleeper, waker], return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    async def _soft_exceeded(self) -> None:
        self._move(CriticState.SOFT_EXCEEDED)
        verdict = await self._verdict()
        if self.state is not CriticState.SOFT_EXCEEDED:  # a kill or the end came meanwhile
            return
        elapsed = self.elapsed()
        if verdict.verdict == "stop":
            self._move(CriticState.STOPPING)
            await self._record("stop", verdict.reason)
            self.control.stop(verdict.reason, RunStatus.KILLED)
            await self._escalate("stop", verdict.reason)
            return
        extend = verdict.extend_s if verdict.extend_s is not None else self.extend_s
        self.soft_at_s = min(elapsed + max(extend, 1.0), self.hard_s)
        self.soft_at_steps = self.steps + max(self.extend_steps, 1)
        if verdict.verdict == "continue":
            self._move(CriticState.WATCHING)
            await self._record("continue", verdict.reason)
        else:
            self._move(CriticState.WARNED)
            await self._record("warn", verdict.reason)
            line = self.config.status_line.format(
                step=max(self.current_step, self.steps), elapsed=elapsed
            )
            await self.control.delivery.status(line)

    async def _kill(self, reason: str) -> None:
        self._move(CriticState.STOPPING)
        # Why stop before recording: the kill is what must be quick.
        self.control.stop(reason, RunStatus.KILLED)
        await self._record("kill", reason)
        await self._escalate("kill", reason)

    # ------------------------------------------------------------------ verdicts

    def signals(self) -> Verdict | None:
        """A stop from cheap signals, or None when nothing looks wrong."""
        cfg = self.config
        steps = [self._log[k] for k in sorted(self._log) if k <= self.steps]
        counts = Counter(sig for s in steps for sig in s.calls)
        if counts:
            sig, n = counts.most_common(1)[0]
            if n >= cfg.repeat_limit:
                return Verdict("stop", f"the same tool call {_short(sig)} {n} times")
        seen: set[str] = set()
        stale = 0
        for s in steps:
            new = [c for c in s.calls if c not in seen]
            novel = bool(new) or bool(s.text and s.text not in seen)
            seen.update(s.calls)
            if s.text:
                seen.add(s.text)
            stale = 0 if novel else stale + 1
        if stale >= cfg.stale_steps:
            return Verdict("stop", f"the last {stale} steps added nothing new")
        if cfg.max_tokens_per_s is not None and self.control.usage_fn is not None:
            elapsed = max(self.elapsed(), 1e-3)
            rate = self.control.usage_fn().total_tokens / elapsed
            if rate > cfg.max_tokens_per_s:
                return Verdict(
                    "stop",
                    f"burning {rate:.0f} tokens/s (limit {cfg.max_tokens_per_s:g})",
                )
        return None

    async def _verdict(self) -> Verdict:
        bad = self.signals()
        if bad is not None:
            return bad
        if self.config.judge is None:
            return Verdict("warn", "past the soft limit with no sign of looping")
        # Why bounded by the hard limit: the timer does not watch it while judging.
        timeout = max(0.1, min(self.config.judge_timeout_s, self.hard_s - self.elapsed()))
        try:
            async with asyncio.timeout(timeout):
                j = await generate_structured(
                    self._judge(self.config.judge),
                    self._judge_messages(),
                    Judgement,
                    resolver=self.resolver,
                    max_tokens=300,
                )
        except BudgetExceeded:
            return Verdict("warn", "no judgement (the budget cannot cover one); still watching")
        except (ModelAPIError, StructuredOutputError, TimeoutError) as exc:
            return Verdict("warn", f"no judgement ({type(exc).__name__}); still watching")
        if j.progress:
            more = j.more_seconds if j.more_seconds and math.isfinite(j.more_seconds) else None
            return Verdict("continue", j.reason or "making progress", extend_s=more)
        return Verdict("stop", j.reason or "not making progress")

    def _judge(self, judge: Model | str) -> Model | str:
        """The judge, its every call covered by the run's reservation first and counted
        in the run's usage (at its tier's price; a model given as such has none)."""
        control = self.control
        money, add, usage_fn = control.budget, control.add_usage, control.usage_fn
        if money is None or add is None:
            return judge
        price = money.price_of(judge) if isinstance(judge, str) and money.price_of else None

        def count(usage: Usage, model: str) -> None:
            self._judged = self._judged + usage
            add(usage)

        return money.covered(
            resolve_model(judge, self.resolver),
            price,
            spent=lambda: usage_fn().cost_micros if usage_fn is not None else 0,
            count=count,
        )

    def _judge_messages(self) -> list[Message]:
        agent = self.control.agent
        lines = []
        for k in sorted(self._log)[-15:]:
            s = self._log[k]
            calls = ", ".join(_short(c) for c in s.calls) or "none"
            lines.append(f"step {k}: tools {calls}; said: {_short(s.text) or '-'}")
        body = (
            f"Agent: {agent.name}\nIts instructions: {_short(agent.system_prompt, 600)}\n"
            f"Running for {self.elapsed():.0f} s, {self.steps} steps.\nRecent steps:\n"
            + "\n".join(lines)
            + "\n\nIs it making progress?"
        )
        return [Message.system(_JUDGE_SYSTEM), Message.user(body)]

    # ------------------------------------------------------------------ outputs

    async def _record(self, verdict: str, reason: str) -> None:
        event = CriticVerdictEvent(
            run_id=self.control.run_id,
            at=self.clock.now(),
            verdict=verdict,
            reason=reason,
            state=self.state.value,
            step=self.steps,
            usage=self._judged,
        )
        self._judged = Usage()
        self.verdicts.append(event)
        if self.control.emit is not None:
            await self.control.emit(event)
        elif self.audit is not None:
            await self.audit.record(event)

    async def _escalate(self, action: str, reason: str) -> None:
        escalation = Escalation(
            run_id=self.control.run_id,
            agent=self.control.agent.name,
            caller=self.control.caller,
            action=action,
            reason=reason,
            elapsed_s=self.elapsed(),
            steps=self.steps,
        )
        try:
            await self.escalator.escalate(escalation)
        except Exception:
            # Why not raise: the run is already stopped and its verdict recorded; an
            # admin channel that is down must not turn a stop into a crash.
            log.exception("critic: escalating run %s failed", self.control.run_id)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class WatchdogCritic:
    """The :class:`~executor.ports.Critic`: one :class:`RunWatch` per run.

    Give it the executor's clock. Verdicts are recorded through the run's
    ``RunControl.emit`` (the executor's audit sink and observers), or ``audit``
    when a control has none.
    """

    def __init__(
        self,
        config: CriticConfig | None = None,
        *,
        clock: Clock | None = None,
        escalator: Escalator | None = None,
        resolver: TierResolver | None = None,
        audit: AuditSink | None = None,
    ) -> None:
        self.config = config or CriticConfig()
        self.clock: Clock = clock or RealClock()
        self.escalator: Escalator = escalator or NullEscalator()
        self.resolver = resolver
        self.audit = audit
        self.watches: dict[str, RunWatch] = {}  # live runs only

    def watch(self, control: RunControl) -> RunWatch:
        w = RunWatch(
            control,
            self.config,
            clock=self.clock,
            escalator=self.escalator,
            resolver=self.resolver,
            audit=self.audit,
            on_close=lambda w: self.watches.pop(w.control.run_id, None),
        )
        self.watches[control.run_id] = w
        return w
