"""The chat service in a terminal: a delivery that streams to stdout, an approver
that asks at the prompt, and a session that keeps the history.

``coterie chat`` is the whole product minus Discord: the same personas, the same
executor, the operator's budget and audit (trigger ``console``).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TextIO

from adapters.services.chat import ChatRequest, ChatService
from adapters.services.conversation import Turn
from executor.agent import Caller, RunResult
from executor.ports import ApprovalDecision, ApprovalRequest, Delivery

__all__ = ["ConsoleDelivery", "ConsoleSession", "LineReader", "stdin_reader"]

LineReader = Callable[[str], Awaitable[str | None]]
"""Shows a prompt, returns the line typed (None at end of input)."""


async def stdin_reader(prompt: str) -> str | None:
    def read() -> str | None:
        try:
            return input(prompt)
        except EOFError:
            return None

    return await asyncio.to_thread(read)


class ConsoleDelivery(Delivery):
    """Streams text to ``out`` as it comes; status lines and notes on their own lines."""

    def __init__(self, out: TextIO | None = None, *, ask: LineReader | None = None) -> None:
        self.out: TextIO = out if out is not None else sys.stdout
        self.ask = ask
        self.notes: list[str] = []
        self.text_so_far = ""
        self._mid_line = False

    def _write(self, s: str) -> None:
        self.out.write(s)
        self.out.flush()
        if s:
            self._mid_line = not s.endswith("\n")

    def _line(self, s: str) -> None:
        if self._mid_line:
            self._write("\n")
        self._write(s + "\n")

    def note(self, line: str) -> None:
        self.notes.append(line)

    async def start(self) -> None:
        return None

    async def queued(self, position: int) -> None:
        if position > 0:
            self._line(f"  (waiting in line, position {position})")

    async def text(self, delta: str) -> None:
        self.text_so_far += delta
        self._write(delta)

    async def reset(self) -> None:
        self.text_so_far = ""
        self._line("  (starting over with another model)")

    async def status(self, line: str) -> None:
        self._line(f"  ({line})")

    async def finish(self, result: RunResult) -> None:
        if self._mid_line:
            self._write("\n")
        for n in [*self.notes, *([result.note] if result.note else [])]:
            self._line(f"  [{n}]")

    async def ask_approval(self, request: ApprovalRequest) -> ApprovalDecision:
        if self.ask is None:
            return ApprovalDecision(approved=False, reason="no terminal to ask at")
        args = json.dumps(request.arguments, ensure_ascii=False, default=str)
        self._line(f"  the tool {request.tool} wants to run with {args}")
        answer = await self.ask("  allow it? [y/N] ")
        if (answer or "").strip().lower() in ("y", "yes"):
            return ApprovalDecision(approved=True)
        return ApprovalDecision(approved=False, reason="the operator denied it")


class ConsoleSession:
    """One terminal conversation: the history is kept for the session."""

    def __init__(
        self,
        chat: ChatService,
        caller: Caller,
        *,
        persona: str | None = None,
        out: TextIO | None = None,
        ask: LineReader | None = None,
    ) -> None:
        self.chat = chat
        self.caller = caller
        self.persona = persona
        self.out = out
        self.ask = ask
        self.turns: list[Turn] = []

    async def send(self, text: str) -> RunResult:
        self.turns.append(Turn(author_name=self.caller.display_name, content=text))
        request = ChatRequest(
            caller=self.caller,
            turns=list(self.turns),
            trigger="console",
            persona=self.persona,
            shared=False,
        )
        delivery = ConsoleDelivery(self.out, ask=self.ask)
        outcome = await self.chat.run(request, delivery)
        # The persona chosen once stays for the session.
        self.persona = outcome.persona.name
        self.turns[-1] = Turn(author_name=self.caller.display_name, content=text)
        if outcome.result.output:
            self.turns.append(
                Turn(
                    author_name=outcome.persona.name,
                    content=outcome.result.output,
                    from_assistant=True,
                    persona=outcome.persona.name,
                )
            )
        return outcome.result
