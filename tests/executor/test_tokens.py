"""One token estimate for the budget reservation and for compaction."""

from __future__ import annotations

from executor.agent import Bounds, Invocation, RunnableAgent
from executor.compaction import TokenEstimator
from executor.messages import ImagePart, Message, ToolResultPart
from executor.models.base import Model
from executor.run import Executor
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
