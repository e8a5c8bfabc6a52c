from __future__ import annotations

import dataclasses

import pytest
from pydantic import BaseModel

from executor.errors import ConfigError, Overloaded, StructuredOutputError
from executor.messages import Message, Usage
from executor.models.base import DEFAULT_PROFILE, Model, ModelRequest
from executor.structured import generate_structured, generate_structured_result, strategy_for
from executor.testing import TEST_PROFILE, FunctionModel, Reply, ScriptedModel, call


class Weather(BaseModel):
    """The weather somewhere."""

    city: str
    celsius: float


MSGS = [Message.user("weather in Oslo?")]
TOOL = dataclasses.replace(TEST_PROFILE, structured_output="tool")
PROMPTED = dataclasses.replace(TEST_PROFILE, structured_output="prompted")


async def test_anthropic_is_forced_to_call_the_schema_tool() -> None:
    model = ScriptedModel([call("Weather", city="Oslo", celsius=-3)], profile=TOOL)
    value = await generate_structured(model, MSGS, Weather)
    assert value == Weather(city="Oslo", celsius=-3)
    req = model.requests[0]
    assert req.tool_choice == "Weather"
    assert [t.name for t in req.tools] == ["Weather"]
    assert req.tools[0].parameters["properties"]["celsius"]["type"] == "number"
    assert req.tools[0].description == "The weather somewhere."
    assert req.response_schema is None


async def test_openai_gets_a_response_schema_and_json_text_is_parsed() -> None:
    model = ScriptedModel(['```json\n{"city": "Oslo", "celsius": 2.5}\n```'], name="openai:gpt-4o")
    value = await generate_structured(model, MSGS, Weather)
    assert value.celsius == 2.5
    req = model.requests[0]
    assert req.response_schema == Weather.model_json_schema()
    assert req.response_schema_name == "Weather"
    assert req.tools == [] and req.tool_choice == "auto"


async def test_a_tool_answer_is_accepted_from_any_model() -> None:
    model = ScriptedModel([call("Weather", city="Rome", celsius=20)], name="openai:gpt-4o")
    assert (await generate_structured(model, MSGS, Weather)).city == "Rome"


async def test_invalid_json_goes_back_with_the_error_then_succeeds() -> None:
    model = ScriptedModel(['{"city": "Oslo"}', "not json at all", '{"city":"Oslo","celsius":1}'])
    result = await generate_structured_result(model, MSGS, Weather)
    assert result.value.celsius == 1 and result.tries == 3
    second = model.requests[1].messages
    assert second[-2].role == "assistant" and "celsius" in second[-1].text
    assert "Field required" in second[-1].text
    assert "not JSON" in model.requests[2].messages[-1].text
    assert result.usage.requests == 3


async def test_invalid_tool_arguments_get_a_tool_result_with_the_error() -> None:
    bad = call("Weather", city="Oslo", celsius="cold")
    model = ScriptedModel([bad, call("Weather", city="Oslo", celsius=0)], profile=TOOL)
    value = await generate_structured(model, MSGS, Weather)
    assert value.celsius == 0
    feedback = model.requests[1].messages[-1]
    assert feedback.tool_results[0].tool_call_id == bad.id
    assert feedback.tool_results[0].is_error
    assert "celsius" in feedback.tool_results[0].content


async def test_gives_up_with_a_typed_error_after_the_bound() -> None:
    model = ScriptedModel(default="nope")
    with pytest.raises(StructuredOutputError) as info:
        await generate_structured(model, MSGS, Weather, max_retries=1)
    assert info.value.attempts == 2 and len(model.requests) == 2
    assert "not JSON" in (info.value.last_error or "")


async def test_provider_errors_propagate() -> None:
    model = ScriptedModel([Overloaded("busy")])
    with pytest.raises(Overloaded):
        await generate_structured(model, MSGS, Weather)


async def test_tier_names_go_through_the_resolver() -> None:
    seen: list[str] = []

    class Resolver:
        def resolve(self, tier: str) -> Model:
            seen.append(tier)
            return FunctionModel(
                lambda r: Reply(text='{"city":"A","celsius":1}', usage=Usage(cost_micros=7))
            )

    result = await generate_structured_result("fast", MSGS, Weather, resolver=Resolver())
    assert seen == ["fast"] and result.usage.cost_micros == 7
    with pytest.raises(ConfigError):
        await generate_structured("fast", MSGS, Weather)


def test_the_strategy_is_the_profile_s_not_the_name_s() -> None:
    assert strategy_for(ScriptedModel(name="openai:gpt-4o", profile=TOOL)) == "tool"
    assert strategy_for(ScriptedModel(name="anthropic:claude")) == "json_schema"

    class Bare:  # a host's model written before profiles
        name = "anthropic:claude-x"

    assert strategy_for(Bare()) == DEFAULT_PROFILE.structured_output == "prompted"  # type: ignore[arg-type]


async def test_prompted_puts_the_schema_in_the_system_prompt() -> None:
    model = ScriptedModel(['{"city": "Oslo", "celsius": 4}'], profile=PROMPTED)
    history = [Message.system("You are terse."), *MSGS]
    assert (await generate_structured(model, history, Weather)).celsius == 4
    req = model.requests[0]
    assert req.response_schema is None and req.tools == []
    system = [m for m in req.messages if m.role == "system"]
    assert len(system) == 1 and system[0].text.startswith("You are terse.")
    assert '"celsius"' in system[0].text and "Weather" in system[0].text
    assert req.messages[1:] == MSGS
    # without a system prompt, one is made
    model = ScriptedModel(['{"city": "Oslo", "celsius": 4}'], profile=PROMPTED)
    await generate_structured(model, MSGS, Weather)
    assert model.requests[0].messages[0].role == "system"


async def test_forced_strategy_override() -> None:
    def answer(req: ModelRequest) -> object:
        assert req.tool_choice == "Weather"
        return call("Weather", city="X", celsius=3)

    model = FunctionModel(answer, name="openai:gpt-4o")  # type: ignore[arg-type]
    assert (await generate_structured(model, MSGS, Weather, strategy="tool")).city == "X"
