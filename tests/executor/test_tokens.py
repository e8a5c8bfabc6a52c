"""One token estimate for the budget reservation and for compaction."""

from __future__ import annotations

from executor.agent import Bounds, Invocation, RunnableAgent
from executor.compaction import TokenEstimator
from executor.messages import ImagePart, Message, ToolResultPart
from executor.models.base import Model, ToolDefinition
from executor.run import Executor
from executor.spend import InputCount, input_tokens
from executor.testing import ScriptedModel, call
from executor.tokens import IMAGE_CHARS, estimate_message_tokens, estimate_tokens

PICTURE = ImagePart(url="https://example.com/cat.png")


def test_what_each_part_costs() -> None:
    assert estimate_message_tokens(Message.user("x" * 400)) == 100 + 4
    with_image = Message.user("x" * 400, images=(PICTURE,))
    assert estimate_message_tokens(with_image) == 100 + IMAGE_CHARS / 4 + 4 == 1604
    c = call("lookup", q="cats")
    assert estimate_message_tokens(Message(role="assistant", parts=(c,))) > 10
    result = ToolResultPart(tool_call_id=c.id, name="lookup", content="r" * 80)
    assert estimate_message_tokens(Message(role="user", parts=(result,))) == (80 + 20) / 4 + 4
    assert estimate_tokens([Message.user("x" * 400)] * 3) == 3 * 104 + 1


def test_compaction_counts_like_the_budget_does() -> None:
    msgs = [Message.user("hello " * 50, images=(PICTURE,)), Message.assistant("hi " * 30)]
    assert TokenEstimator().estimate("any:model", msgs) == estimate_tokens(msgs)


class _Pricer:
    """A resolver that records what the run reserved for."""

    def __init__(self) -> None:
        self.inputs: list[int] = []

    def resolve(self, tier: str) -> Model:
        return ScriptedModel(["ok"])

    def estimate_micros(self, tier: str, input_tokens: int, output_tokens: int) -> int:
        self.inputs.append(input_tokens)
        return 0


async def test_the_reservation_prices_an_image_as_compaction_does() -> None:
    pricer = _Pricer()
    executor = Executor(models=pricer)
    agent = RunnableAgent(system_prompt="", bounds=Bounds(max_steps=1))
    await executor.run(agent, Invocation([Message.user("what is this?")]))
    await executor.run(agent, Invocation([Message.user("what is this?", images=(PICTURE,))]))
    # Each run prices its first call twice (the reservation, then the call itself).
    without, with_image = sorted(set(pricer.inputs))
    assert with_image - without == IMAGE_CHARS // 4 == 1500


def test_a_runs_input_count_matches_input_tokens_as_its_requests_change() -> None:
    """Issue 19: the run loop counts only what is new in a request; the figures are
    input_tokens' whatever the requests do (grow, shrink, get a message replaced, or
    other tools)."""
    add = ToolDefinition(name="add", description="Add.", parameters={"type": "object"})
    other = ToolDefinition(name="other", description="Other.", parameters={"x": "y" * 90})
    count = InputCount()
    system = Message.system("be brief " * 7)
    history = [system, Message.user("hello " * 11)]
    seen: list[tuple[int, int]] = []

    def check(messages: list[Message], tools: list[ToolDefinition]) -> None:
        seen.append((count(messages, tools), input_tokens(messages, tools)))

    check(history, [add])
    check(history, [add])  # the same request again (the budget's, then the step's)
    for i in range(4):
        c = call("add", a=i, b=1)
        history = [
            *history,
            Message(role="assistant", parts=(c,)),
            Message(
                role="user", parts=(ToolResultPart(tool_call_id=c.id, name="add", content="9"),)
            ),
        ]
        check(history, [add])
    history[2] = Message.assistant("a summary " * 30)  # a hook replaced one in the middle
    check(history, [add])
    check(history[:3], [add, other])  # compacted, and other tools
    check([], [])
    check([Message.user("x" * 400)] * 3, [])  # one message object three times
    assert [ours for ours, _ in seen] == [theirs for _, theirs in seen]
