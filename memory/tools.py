"""The tools a persona remembers with: ``remember``, ``recall`` and ``forget_note``.

They are one tool source (``memory``), granted per persona like every tool. A save
happens only through ``remember`` (the audit records the call and its result, with the
note's id), so a model that claims to remember without calling it is visible in
``/audit show``; the chat flow tells the member what was saved, not the model.

Each call works in the caller's own scope: the member who is talking, the persona that
runs (``ToolContext.persona``; a skill's agent speaks as its persona), and the place (the
guild, or DMs). Where memory is off (the server, DMs, or the member's own switch) the
tools say so and keep nothing. Where the guild asks for it (:attr:`MemoryPolicy.confirm`),
``remember`` asks the member first, through the run's delivery (Approve / Deny buttons
on Discord), with the note as it would be kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from executor.agent import Caller
from executor.errors import ToolFailed
from executor.ports import ApprovalRequest
from executor.tools.registry import ToolContext, tool
from executor.tools.sources import FunctionSource
from memory.checks import clean_note
from memory.errors import MemoryError_
from memory.notes import Caps, NoteStore, Scope, place_of

__all__ = ["MEMORY_TOOLS", "MemoryPolicy", "PolicyOf", "memory_source"]

MEMORY_TOOLS = ("remember", "recall", "forget_note")


@dataclass(frozen=True, slots=True)
class MemoryPolicy:
    """What memory may do for one caller, decided by the host (settings, the guild)."""

    enabled: bool = True
    why_off: str = "memory is off here"
    # A guild may let its personas share what they know about a member there.
    shared: bool = False
    # The member confirms each save with a button (a guild's choice).
    confirm: bool = False
    caps: Caps = field(default_factory=Caps)


PolicyOf = Callable[[Caller], Awaitable[MemoryPolicy]]


def _persona(ctx: ToolContext) -> str:
    return ctx.persona or ctx.agent


async def _always_on(caller: Caller) -> MemoryPolicy:
    return MemoryPolicy()


def memory_source(store: NoteStore, policy_of: PolicyOf = _always_on) -> FunctionSource:
    """The ``memory`` tool source over ``store``; ``policy_of`` says what is allowed."""

    async def scope_of(ctx: ToolContext, *, reading: bool) -> tuple[Scope, MemoryPolicy]:
        policy = await policy_of(ctx.caller)
        if not policy.enabled:
            raise ToolFailed(policy.why_off + "; nothing is kept or read")
        if await store.is_off(ctx.caller.user_id):
            raise ToolFailed(
                "this member turned memory off for themselves (/memory on turns it back on)"
            )
        persona = None if (reading and policy.shared) else _persona(ctx)
        return Scope(ctx.caller.user_id, persona, place_of(ctx.caller.guild_id)), policy

    async def confirmed(ctx: ToolContext, text: str) -> str | None:
        """None when the member confirmed the save, else why it is not kept."""
        delivery = ctx.invocation.delivery if ctx.invocation is not None else None
        if delivery is None:
            return "the member must confirm each save here and cannot be asked"
        decision = await delivery.ask_approval(
            ApprovalRequest(
                run_id=ctx.run_id,
                caller=ctx.caller,
                tool="remember",
                call_id=ctx.call_id,
                arguments={"note": text},
                delivery=delivery,
            )
        )
        if decision.approved:
            return None
        return "the member did not confirm it" + (
            f" ({decision.reason})" if decision.reason else ""
        )

    async def remember(note: str, ctx: ToolContext) -> str:
        """Save one short fact about the member you are talking to, for later conversations.

        Only call it for something the member wants remembered (a preference, a name, a
        plan); never for secrets. The member is told what was saved.

        Args:
            note: the fact, in a sentence, at most 500 characters.
        """
        scope, policy = await scope_of(ctx, reading=False)
        try:
            text = clean_note(note)
            if policy.confirm and (refused := await confirmed(ctx, text)) is not None:
                raise ToolFailed(f"not saved: {refused}")
            saved = await store.add(
                Scope(scope.user_id, _persona(ctx), scope.place),
                text,
                caps=policy.caps,
                run_id=ctx.run_id,
                created_by=ctx.caller.user_id,
            )
        except MemoryError_ as exc:
            raise ToolFailed(f"not saved: {exc}") from exc
        return f"Saved note #{saved.id}: {saved.text}"

    async def recall(query: str, ctx: ToolContext) -> str:
        """Search what you remember about the member you are talking to.

        Args:
            query: words to look for in your notes about them.
        """
        scope, _ = await scope_of(ctx, reading=True)
        found = await store.search(scope, query, 10)
        if not found:
            return "No note about this member matches that."
        return "\n".join(f"[#{n.id}] {n.text}" for n in found)

    async def forget_note(note_id: int, ctx: ToolContext) -> str:
        """Delete one of your notes about the member you are talking to, when they ask.

        Args:
            note_id: the note's number, as shown in your notes ([#12] -> 12).
        """
        scope, _ = await scope_of(ctx, reading=True)
        try:
            note = await store.get(scope.user_id, note_id)
            if note.place != scope.place or (scope.persona and note.persona != scope.persona):
                raise ToolFailed(f"note #{note_id} is not one of your notes about them here")
            await store.delete(scope.user_id, note_id)
        except MemoryError_ as exc:
            raise ToolFailed(str(exc)) from exc
        return f"Forgot note #{note_id}: {note.text}"

    return FunctionSource(
        "memory",
        [
            # Why 150 s: a guild may ask the member to confirm (the buttons wait 120 s).
            tool(remember, status="remembering", timeout_s=150.0),
            tool(recall, status="remembering", timeout_s=10.0, read_only=True),
            tool(forget_note, status="forgetting a note", timeout_s=10.0),
        ],
    )
