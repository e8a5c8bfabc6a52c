"""Model profiles: what each provider's models can do, passed through failover and
tiers, and read by compaction and structured output through a real TierResolver."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx2
import pytest
from pydantic import BaseModel

from executor.agent import Invocation, RunnableAgent, RunStatus
from executor.compaction import CompactionHook
from executor.critic import Judgement
from executor.messages import Message, Usage
from executor.models.base import DEFAULT_PROFILE, ModelProfile, ModelRequest, profile_of
from executor.models.config import ModelsConfig, TierConfig
from executor.models.fallback import FallbackModel
from executor.models.profiles import anthropic_profile, openai_compatible_profile
from executor.models.providers import ProviderSettings
from executor.models.tiers import TierResolver
from executor.run import Executor
from executor.structured import generate_structured, strategy_for
from executor.testing import TEST_PROFILE, Reply, ScriptedModel
from tests.executor.models.conftest import Clients, Recorder
from tests.executor.models.test_models_anthropic import MESSAGE
from tests.executor.models.test_models_registry import OK_CHAT

ANTHROPIC_ONLY = ProviderSettings(anthropic_api_key="sk-ant-test")
OPENAI_ONLY = ProviderSettings(openai_api_key="sk-test")
BOTH = ProviderSettings(anthropic_api_key="sk-ant-test", openai_api_key="sk-test")


def _text_message(text: str) -> dict[str, Any]:
    return {**MESSAGE, "content": [{"type": "text", "text": text}], "stop_reason": "end_turn"}


def _conversation(tokens: int) -> list[Message]:
    """About ``tokens`` estimated tokens of alternating turns."""
    out: list[Message] = []
    chunk = "word " * 400  # ~500 tokens a message
    for i in range(max(2, tokens // 500)):
        out.append(Message.user(f"q{i} {chunk}") if i % 2 == 0 else Message.assistant(chunk))
    if out[-1].role != "user":
        out.append(Message.user("and now?"))
    return out


# --- the tables -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "model_id", "window", "mode", "images"),
    [
        ("openai", "gpt-5.4", 400_000, "json_schema", True),
        ("openai", "gpt-4o-mini", 128_000, "json_schema", True),
        ("openai", "gpt-4.1-mini", 1_000_000, "json_schema", True),
        ("openai", "o3-mini", 200_000, "json_schema", False),
        ("openai", "something-new", 128_000, "json_schema", True),
        ("ollama", "llama3.2:3b", 8_192, "json_schema", False),
        ("ollama", "llava:13b", 8_192, "json_schema", True),
        ("ollama", "llama3.2-vision", 8_192, "json_schema", True),
        ("openrouter", "anthropic/claude-sonnet-4", 200_000, "tool", True),
        ("openrouter", "openai/gpt-4o", 128_000, "json_schema", True),
        ("openrouter", "meta-llama/llama-3.3-70b", 32_000, "prompted", False),
        ("together", "meta-llama/Llama-3.3-70B", 32_000, "prompted", False),
    ],
)
def test_openai_kind_profiles(
    provider: str, model_id: str, window: int, mode: str, images: bool
) -> None:
    p = openai_compatible_profile(provider, model_id)
    assert (p.provider, p.context_window, p.structured_output, p.sees_images) == (
        provider,
        window,
        mode,
        images,
    )


@pytest.mark.parametrize(
    ("provider", "model_id", "silent"),
    [
        ("openai", "gpt-5-mini", True),
        ("openai", "gpt-5.4", True),
        ("openai", "gpt-5-chat-latest", False),
        ("openai", "o3-mini", True),
        ("openai", "o4-mini", True),
        ("openai", "gpt-4o", False),
        ("openai", "gpt-4.1-mini", False),
        ("openrouter", "openai/gpt-5", True),
        ("openrouter", "anthropic/claude-sonnet-4", False),
        ("ollama", "qwen3:8b", False),  # streams its thinking: chunks keep coming
    ],
)
def test_which_models_are_silent_while_they_think(
    provider: str, model_id: str, silent: bool
) -> None:
    """OpenAI's reasoning models send nothing before their first token: failover gives
    them the attempt deadline rather than the tier's first-token timeout."""
    assert openai_compatible_profile(provider, model_id).silent_while_thinking is silent
    assert not anthropic_profile("claude-opus-4-8").silent_while_thinking


def test_anthropic_profile() -> None:
    assert anthropic_profile("claude-haiku-4-5") == ModelProfile(
        provider="anthropic", context_window=200_000, structured_output="tool", sees_images=True
    )


def test_a_model_without_a_profile_gets_the_conservative_default() -> None:
    class Bare:
        name = "anthropic:claude-but-nobody-said"

    assert profile_of(Bare()) is DEFAULT_PROFILE
    assert (
        ModelProfile(
            provider="unknown",
            context_window=32_000,
            structured_output="prompted",
            sees_images=False,
        )
        == DEFAULT_PROFILE
    )
    assert profile_of(ScriptedModel()) is TEST_PROFILE


def test_provider_models_built_by_the_registry_carry_their_profile(clients: Clients) -> None:
    registry = clients.registry({})
    assert profile_of(registry.model("anthropic:claude-haiku-4-5")).structured_output == "tool"
    assert profile_of(registry.model("openai:gpt-5-mini")).context_window == 400_000
    local = profile_of(registry.model("ollama:llava:7b"))
    assert local.provider == "ollama" and local.sees_images


# --- wrappers pass the current candidate's profile through --------------------------------


def test_failover_model_shows_its_first_candidate_s_profile() -> None:
    a = ScriptedModel(name="p:a", profile=ModelProfile(provider="a", context_window=1000))
    b = ScriptedModel(name="p:b", profile=ModelProfile(provider="b", context_window=2000))
    assert FallbackModel([a, b]).profile.provider == "a"
    assert FallbackModel([b, a]).profile.provider == "b"


async def test_after_failover_the_profile_is_the_answering_candidate_s(clients: Clients) -> None:
    busy = Recorder(lambda r: httpx2.Response(529, json={"type": "error", "error": {}}))
    ok = Recorder(lambda r: httpx2.Response(200, json=OK_CHAT))
    tiers = TierResolver(ModelsConfig(), clients.registry({"anthropic": busy, "openai": ok}))
    model = tiers.resolve("standard")
    assert model.profile.provider == "anthropic"
    response = await model.generate(ModelRequest(messages=[Message.user("hi")]))
    assert response.model == "openai:gpt-5.4"
    assert model.profile.provider == "openai" and model.profile.context_window == 400_000


# --- a real TierResolver, default tiers, fake keys, no network ------------------------------


@pytest.mark.parametrize(
    ("settings", "provider", "window", "mode"),
    [
        (BOTH, "anthropic", 200_000, "tool"),
        (ANTHROPIC_ONLY, "anthropic", 200_000, "tool"),
        (OPENAI_ONLY, "openai", 400_000, "json_schema"),
    ],
)
def test_default_tiers_have_their_provider_s_profile(
    clients: Clients, settings: ProviderSettings, provider: str, window: int, mode: str
) -> None:
    # No handler is given, so any request would fail the test: resolving a tier and
    # reading its profile sends nothing.
    tiers = TierResolver(ModelsConfig(), clients.registry({}, settings))
    for tier in tiers.tiers:
        model = tiers.resolve(tier)
        assert model.name == f"tier:{tier}"
        profile = profile_of(model)
        assert (profile.provider, profile.context_window) == (provider, window)
        assert strategy_for(model) == mode
        assert profile.sees_images


def test_reading_a_tier_s_profile_needs_no_network_and_no_sdk_before_resolve() -> None:
    code = (
        "import sys\n"
        "from executor import profile_of\n"
        "from executor.models import ModelsConfig, ProviderRegistry, ProviderSettings, TierResolver\n"
        "tiers = TierResolver(ModelsConfig(), ProviderRegistry(ProviderSettings("
        "anthropic_api_key='sk-ant-test')))\n"
        "assert 'anthropic' not in sys.modules\n"
        "print(profile_of(tiers.resolve('standard')).sees_images)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


async def test_compaction_uses_the_tier_s_window(clients: Clients) -> None:
    """A 40k-token conversation fits a Claude tier (200k) but not an Ollama one (8k).

    Named ``tier:standard``, the Claude tier used to get a 32k window and compact here.
    """
    answered = Recorder(lambda r: httpx2.Response(200, json=_text_message("fine")))
    local = Recorder(lambda r: httpx2.Response(200, json=OK_CHAT))
    config = ModelsConfig(
        tiers={
            "standard": TierConfig("standard", ("anthropic:claude-sonnet-4-6",)),
            "local": TierConfig("local", ("ollama:llama3.2:3b",)),
        }
    )
    tiers = TierResolver(config, clients.registry({"anthropic": answered, "ollama": local}))
    summariser = ScriptedModel(default=Reply(text="SUMMARY", usage=Usage(output_tokens=5)))
    executor = Executor(models=tiers, hooks=[CompactionHook(summariser)])
    history = _conversation(40_000)

    result = await executor.run(RunnableAgent(tier="standard"), Invocation(messages=history))
    assert result.status is RunStatus.OK and result.output == "fine"
    assert summariser.requests == []
    assert len(answered.bodies[0]["messages"]) == len(history)

    result = await executor.run(RunnableAgent(tier="local"), Invocation(messages=history))
    assert result.status is RunStatus.OK
    assert len(summariser.requests) >= 1
    sent = local.bodies[0]["messages"]
    assert len(sent) < len(history) / 4
    assert "Summary of the earlier conversation" in str(sent[1]["content"])


async def test_compaction_triggers_near_the_claude_tier_s_window(clients: Clients) -> None:
    answered = Recorder(lambda r: httpx2.Response(200, json=_text_message("fine")))
    tiers = TierResolver(ModelsConfig(), clients.registry({"anthropic": answered}, ANTHROPIC_ONLY))
    summariser = ScriptedModel(default=Reply(text="SUMMARY"))
    history = _conversation(160_000)  # past 75% of 200k
    result = await Executor(models=tiers, hooks=[CompactionHook(summariser)]).run(
        RunnableAgent(), Invocation(messages=history)
    )
    assert result.status is RunStatus.OK
    assert summariser.requests
    assert len(answered.bodies[0]["messages"]) < len(history) / 2


class Weather(BaseModel):
    city: str
    celsius: float


async def test_structured_output_forces_the_tool_on_a_claude_tier(clients: Clients) -> None:
    tool_use = {
        **MESSAGE,
        "content": [
            {
                "type": "tool_use",
                "id": "t1",
                "name": "Weather",
                "input": {"city": "Oslo", "celsius": -3},
            }
        ],
    }
    rec = Recorder(lambda r: httpx2.Response(200, json=tool_use))
    tiers = TierResolver(ModelsConfig(), clients.registry({"anthropic": rec}, ANTHROPIC_ONLY))
    value = await generate_structured("fast", [Message.user("Oslo?")], Weather, resolver=tiers)
    assert value == Weather(city="Oslo", celsius=-3)
    body = rec.bodies[0]
    assert body["tool_choice"] == {"type": "tool", "name": "Weather"}
    assert [t["name"] for t in body["tools"]] == ["Weather"]


async def test_the_critic_s_judge_gets_a_verdict_from_a_claude_tier(clients: Clients) -> None:
    verdict = {
        **MESSAGE,
        "content": [
            {
                "type": "tool_use",
                "id": "t1",
                "name": "Judgement",
                "input": {"progress": False, "reason": "it loops"},
            }
        ],
    }
    rec = Recorder(lambda r: httpx2.Response(200, json=verdict))
    tiers = TierResolver(ModelsConfig(), clients.registry({"anthropic": rec}, ANTHROPIC_ONLY))
    j = await generate_structured("fast", [Message.user("progress?")], Judgement, resolver=tiers)
    assert j.progress is False and j.reason == "it loops"


async def test_structured_output_is_a_json_schema_on_an_openai_tier(clients: Clients) -> None:
    answer = {
        **OK_CHAT,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": '{"city": "Oslo", "celsius": 2}'},
                "finish_reason": "stop",
            }
        ],
    }
    rec = Recorder(lambda r: httpx2.Response(200, json=answer))
    tiers = TierResolver(ModelsConfig(), clients.registry({"openai": rec}, OPENAI_ONLY))
    value = await generate_structured("fast", [Message.user("Oslo?")], Weather, resolver=tiers)
    assert value.celsius == 2
    body = rec.bodies[0]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["name"] == "Weather"
    assert "tools" not in body
