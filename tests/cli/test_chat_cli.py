"""``coterie chat``: the REPL on the chat service, with a scripted model."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

with warnings.catch_warnings():
    # Why: discord.py imports the deprecated audioop; the approver's module imports discord.
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    from adapters.services.approval import DeliveryApprover
from adapters.services.chat import ChatService
from bot.cli import build_parser
from bot.cli.chat import chat_loop
from executor.agent import Caller, Privilege, RunnableAgent
from executor.errors import BudgetDetails, BudgetExceeded
from executor.events import RunStarted
from executor.ports import InMemoryAuditSink, Reservation
from executor.run import Executor
from executor.testing import ScriptedModel, call
from executor.tools.registry import ToolRegistry, tool
from personas import Persona, PersonaNotFound, to_runnable


class Personas:
    def __init__(self) -> None:
        self.by_name = {
            n: Persona(name=n, system_prompt=f"You are {n}.", tools=("wipe",))
            for n in ("assistant", "poet")
        }

    async def find(self, guild_id: str | None, name: str) -> Persona | None:
        return self.by_name.get(name)


class App:
    def __init__(self, model: ScriptedModel, **executor_kwargs: Any) -> None:
        registry = ToolRegistry()

        def wipe(path: str) -> str:
            """Wipes a path."""
            return f"wiped {path}"

        registry.add(tool(wipe, requires_approval=True))
        self.audit = InMemoryAuditSink()
        self.executor = Executor(
            tools=registry, audit=self.audit, approver=DeliveryApprover(), **executor_kwargs
        )

        def to_agent(p: Persona) -> RunnableAgent:
            return replace(to_runnable(p), model=model)

        self.chat = ChatService(executor=self.executor, personas=Personas(), to_agent=to_agent)

    def operator(self) -> Caller:
        return Caller(user_id="console", display_name="operator", privilege=Privilege.OWNER)


def lines(*items: str | None) -> Any:
    it: Iterator[str | None] = iter(items)

    async def read(prompt: str) -> str | None:
        return next(it, None)

    return read


def test_the_verb_is_registered() -> None:
    args = build_parser().parse_args(["chat", "--persona", "poet"])
    assert args.persona == "poet" and callable(args.handler)


async def test_streams_answers_keeps_history_and_audits_as_console() -> None:
    model = ScriptedModel(["Hello!", "You said hi."])
    app = App(model)
    out = io.StringIO()
    code = await chat_loop(
        app, persona="poet", read=lines("hi", "", "what did I say?", "/quit"), out=out
    )
    assert code == 0
    text = out.getvalue()
    assert "poet> Hello!\n" in text and "You said hi." in text
    second = [m for m in model.requests[1].messages if m.role != "system"]
    assert [m.text for m in second] == ["hi", "Hello!", "what did I say?"]
    assert second[0].name is None  # one person at a terminal
    started = [e for e in app.audit.events if isinstance(e, RunStarted)]
    assert {e.trigger for e in started} == {"console"}
    assert {e.caller.user_id for e in started} == {"console"}
    assert {e.persona for e in started} == {"poet"}


async def test_unknown_persona_is_a_clear_error() -> None:
    with pytest.raises(PersonaNotFound, match="ghost"):
        await chat_loop(App(ScriptedModel()), persona="ghost", read=lines(), out=io.StringIO())


async def test_budget_refusal_is_said() -> None:
    class Refuse:
        async def reserve(self, caller: Caller, run_id: str, estimate: int) -> Reservation:
            raise BudgetExceeded(BudgetDetails(1, 0, 1, 1))

        async def grow(self, reservation: Reservation, amount: int) -> Reservation:
            return reservation

        async def settle(self, reservation: Reservation, cost: int) -> None:
            return None

    out = io.StringIO()
    await chat_loop(App(ScriptedModel(), budget=Refuse()), read=lines("hi"), out=out)
    assert "[budget exceeded" in out.getvalue()


async def test_approval_is_asked_at_the_prompt() -> None:
    model = ScriptedModel([call("wipe", path="/tmp/x"), "Wiped."])
    out = io.StringIO()
    await chat_loop(App(model), read=lines("wipe it", "y"), out=out)
    assert "allow it?" not in out.getvalue()  # the prompt goes to the reader
    results = [m for m in model.requests[1].messages if m.tool_results]
    assert results[0].tool_results[0].content == "wiped /tmp/x"
