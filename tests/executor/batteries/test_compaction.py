from __future__ import annotations

from executor.agent import Invocation, RunnableAgent, RunStatus
from executor.compaction import (
    SUMMARY_PREFIX,
    CompactionHook,
    Compactor,
    TokenEstimator,
)
from executor.errors import ContextTooLong
from executor.events import CompactionEvent
from executor.messages import Message, ToolResultPart, Usage
from executor.models.base import ModelProfile, ModelRequest
from executor.run import Executor
from executor.testing import AuditCapture, FunctionModel, Reply, ScriptedModel, call


def _conversation(turns: int, size: int = 400) -> list[Message]:
    out: list[Message] = []
    for i in range(turns):
        out.append(Message.user(f"question {i} " + "q" * size, name="ann"))
        out.append(Message.assistant(f"answer {i} " + "a" * size))
    return out


def _with_tools(turns: int, size: int = 400) -> list[Message]:
    out: list[Message] = []
    for i in range(turns):
        c = call("lookup", i=i)
        out.append(Message.user(f"question {i} " + "q" * size))
        out.append(Message(role="assistant", parts=(c,)))
        out.append(
            Message(
                role="user",
                parts=(ToolResultPart(tool_call_id=c.id, name="lookup", content="r" * size),),
            )
        )
        out.append(Message.assistant(f"answer {i} " + "a" * size))
    return out


def _summariser(text: str = "they talked", cost: int = 0) -> ScriptedModel:
    return ScriptedModel(
        default=Reply(text=text, usage=Usage(input_tokens=100, output_tokens=10, cost_micros=cost)),
        name="cheap:model",
    )


def _pairs_intact(messages: list[Message]) -> bool:
    calls: set[str] = set()
    for m in messages:
        for p in m.parts:
            if p.type == "tool_call":
                calls.add(p.id)
            if p.type == "tool_result" and p.tool_call_id not in calls:
                return False
    return True


def _window(tokens: int) -> ModelProfile:
    return ModelProfile(provider="test", context_window=tokens)


def test_estimator_calibrates_toward_reported_tokens() -> None:
    est = TokenEstimator(smoothing=1.0)
    msgs = _conversation(5)
    raw = est.estimate("m", msgs)
    est.observe("m", msgs, raw * 2)
    assert 1.9 < est.factor("m") <= 2.01
    assert est.estimate("other", msgs) == raw


async def test_compactor_keeps_newest_and_pins_the_latest_member_message() -> None:
    summariser = _summariser()
    comp = Compactor(summariser)
    msgs = _conversation(40)
    done = await comp.compact(msgs, "test:m", keep_tokens=600)
    assert done is not None
    assert done.messages[0].text.startswith(SUMMARY_PREFIX)
    assert done.messages[-1] == msgs[-1] and done.messages[-2] == msgs[-2]
    assert done.tokens_after < done.tokens_before / 5
    assert done.summarised == len(msgs) - (len(done.messages) - 1)
    # what the summariser was shown starts with the oldest turn
    prompt = summariser.requests[0].messages[-1].text
    assert "question 0" in prompt and "answer 0" in prompt


async def test_compactor_never_separates_a_tool_call_from_its_result() -> None:
    msgs = _with_tools(30)
    for keep in (50, 300, 700, 1500, 3000):
        done = await Compactor(_summariser()).compact(msgs, "test:m", keep_tokens=keep)
        assert done is not None
        assert _pairs_intact(done.messages), keep


async def test_latest_member_message_is_kept_verbatim_during_a_long_tool_loop() -> None:
    msgs = [Message.user("the one request")]
    for i in range(30):
        c = call("lookup", i=i)
        msgs.append(Message(role="assistant", parts=(c,)))
        msgs.append(
            Message(
                role="user",
                parts=(ToolResultPart(tool_call_id=c.id, name="lookup", content="x" * 800),),
            )
        )
    done = await Compactor(_summariser()).compact(msgs, "test:m", keep_tokens=500)
    assert done is not None
    assert done.messages[1] == msgs[0]
    assert _pairs_intact(done.messages)


async def test_nothing_to_compact_returns_none() -> None:
    assert await Compactor(_summariser()).compact([Message.user("hi")], "m") is None


async def test_hook_compacts_inside_a_run_and_charges_the_run() -> None:
    audit = AuditCapture()
    summariser = _summariser("SUMMARY", cost=500)
    hook = CompactionHook(summariser)
    model = ScriptedModel(
        [Reply(text="done", usage=Usage(input_tokens=10, output_tokens=5, cost_micros=100))],
        profile=_window(4000),
    )
    history = _conversation(30)  # ~6k tokens in a 4k window
    result = await Executor(audit=audit, hooks=[hook]).run(
        RunnableAgent(model=model, system_prompt="SYS"), Invocation(messages=history)
    )
    assert result.status is RunStatus.OK
    sent = model.requests[0].messages
    assert sent[0].role == "system" and sent[0].text == "SYS"
    assert sent[1].text == f"{SUMMARY_PREFIX}\nSUMMARY"
    assert sent[-1] == history[-1]
    assert result.usage.cost_micros == 600
    events = audit.of_type(CompactionEvent)
    assert len(events) == 1
    ev = events[0]
    assert ev.model == "cheap:model" and ev.usage.cost_micros == 500
    assert ev.tokens_before > 3000 > ev.tokens_after
    assert audit.kinds(result.run_id).index("CompactionEvent") < audit.kinds(result.run_id).index(
        "ModelRequestEvent"
    )


async def test_hook_leaves_small_conversations_alone() -> None:
    summariser = _summariser()
    model = ScriptedModel(["ok"])
    await Executor(hooks=[CompactionHook(summariser)]).run(
        RunnableAgent(model=model), Invocation(messages=_conversation(2))
    )
    assert summariser.requests == []


async def test_context_too_long_compacts_and_retries_once() -> None:
    audit = AuditCapture()
    sizes: list[int] = []

    def answer(req: ModelRequest) -> object:
        sizes.append(len(req.messages))
        return ContextTooLong("prompt is too long", model="test:function")

    model = FunctionModel(answer, profile=_window(1_000_000))  # type: ignore[arg-type]
    hook = CompactionHook(_summariser())
    result = await Executor(audit=audit, hooks=[hook]).run(
        RunnableAgent(model=model), Invocation(messages=_conversation(20))
    )
    # first try, one retry after compacting, then the error stands
    assert len(sizes) == 2 and sizes[1] < sizes[0]
    assert result.status is RunStatus.ERROR and result.error_kind == "context_too_long"
    assert len(audit.of_type(CompactionEvent)) == 1


async def test_context_too_long_then_success() -> None:
    model = ScriptedModel([ContextTooLong("too long"), "fine"], profile=_window(1_000_000))
    hook = CompactionHook(_summariser())
    result = await Executor(hooks=[hook]).run(
        RunnableAgent(model=model), Invocation(messages=_conversation(20))
    )
    assert result.status is RunStatus.OK and result.output == "fine"
    assert model.requests[1].messages[1].text.startswith(SUMMARY_PREFIX)
