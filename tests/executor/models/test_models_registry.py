"""The provider registry and the tier resolver."""

from __future__ import annotations

import subprocess
import sys

import httpx2
import pytest

from executor.errors import MissingCredentials, UnknownModel, UnknownTier
from executor.messages import Message
from executor.models.base import ModelRequest
from executor.models.config import load_tier_config
from executor.models.fallback import FallbackModel
from executor.models.providers import DeferredModel, ProviderSettings, ProviderSpec
from executor.models.tiers import TierResolver
from tests.executor.models.conftest import Clients, Recorder
from tests.executor.models.test_models_anthropic import MESSAGE

OK_CHAT = {
    "id": "c",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


def test_importing_the_package_imports_no_sdk() -> None:
    code = "import sys, executor.models, executor.models.tiers; print('anthropic' in sys.modules, 'openai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_unknown_provider_lists_the_known_ones(clients: Clients) -> None:
    registry = clients.registry({})
    with pytest.raises(UnknownModel, match="anthropic, ollama, openai, openrouter"):
        registry.model("mistral:large")
    with pytest.raises(UnknownModel):
        registry.model("no-colon")


def test_missing_key_names_the_variable(clients: Clients) -> None:
    registry = clients.registry({}, ProviderSettings())
    with pytest.raises(MissingCredentials, match="ANTHROPIC_API_KEY"):
        registry.model("anthropic:claude-haiku-4-5")
    with pytest.raises(MissingCredentials, match="OPENROUTER_API_KEY"):
        registry.model("openrouter:openai/gpt-5")


async def test_ollama_needs_no_key_and_uses_its_base_url_and_max_tokens(clients: Clients) -> None:
    rec = Recorder(lambda r: httpx2.Response(200, json=OK_CHAT))
    registry = clients.registry({"ollama": rec}, ProviderSettings())
    model = registry.model("ollama:llama3.2:3b")
    assert model.name == "ollama:llama3.2:3b"
    await model.generate(ModelRequest(messages=[Message.user("hi")]))
    assert str(rec.requests[0].url) == "http://localhost:11434/v1/chat/completions"
    assert rec.bodies[0]["model"] == "llama3.2:3b" and "max_tokens" in rec.bodies[0]


async def test_base_urls_and_keys_come_from_settings(clients: Clients) -> None:
    ant = Recorder(lambda r: httpx2.Response(200, json=MESSAGE))
    oai = Recorder(lambda r: httpx2.Response(200, json=OK_CHAT))
    settings = ProviderSettings.from_environ(
        {
            "ANTHROPIC_API_KEY": "sk-a",
            "ANTHROPIC_BASE_URL": "http://127.0.0.1:9/ant",
            "OPENAI_API_KEY": "sk-o",
            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        }
    )
    registry = clients.registry({"anthropic": ant, "openai": oai}, settings)
    await registry.model("anthropic:claude-haiku-4-5").generate(
        ModelRequest(messages=[Message.user("hi")])
    )
    await registry.model("openai:gpt-5").generate(ModelRequest(messages=[Message.user("hi")]))
    assert str(ant.requests[0].url) == "http://127.0.0.1:9/ant/v1/messages"
    assert str(oai.requests[0].url) == "http://127.0.0.1:9/v1/chat/completions"
    assert oai.requests[0].headers["authorization"] == "Bearer sk-o"


async def test_custom_provider_from_config_and_one_client_per_provider(clients: Clients) -> None:
    rec = Recorder(lambda r: httpx2.Response(200, json=OK_CHAT))
    made: list[str] = []
    spec = ProviderSpec(
        "together", "openai", base_url="http://127.0.0.1:9/v1", api_key_env="TOGETHER_API_KEY"
    )
    registry = clients.registry(
        {"together": rec},
        ProviderSettings(extra={"TOGETHER_API_KEY": "tk"}),
        providers={"together": spec},
    )
    factory = registry._http_client_factory
    assert factory is not None

    def recording_factory(s: ProviderSpec) -> object:
        made.append(s.name)
        return factory(s)

    registry._http_client_factory = recording_factory
    m1 = registry.model("together:llama-70b")
    m2 = registry.model("together:qwen")
    await m1.generate(ModelRequest(messages=[Message.user("hi")]))
    await m2.generate(ModelRequest(messages=[Message.user("hi")]))
    assert made == ["together"]
    assert rec.requests[0].headers["authorization"] == "Bearer tk"


async def test_tier_resolver(clients: Clients) -> None:
    cfg = load_tier_config(
        None, {"COTERIE_TIER_FAST": "anthropic:claude-haiku-4-5,openai:gpt-5-mini"}
    )
    registry = clients.registry(
        {
            "anthropic": lambda r: httpx2.Response(200, json=MESSAGE),
            "openai": lambda r: httpx2.Response(200, json=OK_CHAT),
        }
    )
    tiers = TierResolver(cfg, registry)
    assert tiers.tiers == ["fast", "smart", "standard"]
    assert tiers.candidates("fast") == ["anthropic:claude-haiku-4-5", "openai:gpt-5-mini"]
    model = tiers.resolve("fast")
    assert isinstance(model, FallbackModel) and tiers.resolve("fast") is model
    assert tiers.resolve() is tiers.resolve("standard")
    resp = await model.generate(ModelRequest(messages=[Message.user("hi")]))
    assert resp.model == "anthropic:claude-haiku-4-5" and len(resp.attempts) == 1
    with pytest.raises(UnknownTier, match="fast, smart, standard"):
        tiers.resolve("huge")
    # gpt-5.5 ($5/$30) is dearer than opus 4.8 ($5/$25)
    assert tiers.estimate_micros("smart", 1000, 100) == 5000 + 3000


async def test_a_backup_is_built_when_failover_first_reaches_it(clients: Clients) -> None:
    cfg = load_tier_config(
        None, {"COTERIE_TIER_FAST": "anthropic:claude-haiku-4-5,openai:gpt-5-mini"}
    )
    down = {"anthropic": True}
    registry = clients.registry(
        {
            "anthropic": lambda r: httpx2.Response(529 if down["anthropic"] else 200, json=MESSAGE),
            "openai": lambda r: httpx2.Response(200, json=OK_CHAT),
        }
    )
    model = TierResolver(cfg, registry).resolve("fast")
    assert isinstance(model, FallbackModel)
    backup = model.candidates[1]
    assert isinstance(backup, DeferredModel)
    assert backup.name == "openai:gpt-5-mini" and not backup.built
    assert model.profile.provider == "anthropic"  # the first candidate's, backup unbuilt
    assert not backup.built

    resp = await model.generate(ModelRequest(messages=[Message.user("hi")]))
    assert resp.model == "openai:gpt-5-mini"
    assert [a.model for a in resp.attempts] == ["anthropic:claude-haiku-4-5", "openai:gpt-5-mini"]
    assert backup.built
    built = backup.model()
    # The backup answers first while the primary cools down: its profile now.
    assert model.profile.provider == "openai"
    await model.generate(ModelRequest(messages=[Message.user("again")]))
    assert backup.model() is built  # built once


def test_a_backup_with_no_key_is_left_out_without_building_anything(clients: Clients) -> None:
    registry = clients.registry({}, ProviderSettings(anthropic_api_key="sk-ant"))
    with pytest.raises(MissingCredentials, match="OPENAI_API_KEY"):
        registry.deferred("openai:gpt-5-mini")
    with pytest.raises(UnknownModel):
        registry.deferred("mistral:large")


def test_tier_skips_candidates_without_keys(clients: Clients) -> None:
    cfg = load_tier_config(None, {})
    tiers = TierResolver(cfg, clients.registry({}, ProviderSettings(openai_api_key="sk")))
    model = tiers.resolve("fast")
    assert isinstance(model, FallbackModel)
    assert [m.name for m in model.candidates] == ["openai:gpt-5-mini"]
    assert tiers.available("fast") == ["openai:gpt-5-mini"]
    none = TierResolver(cfg, clients.registry({}, ProviderSettings()))
    with pytest.raises(MissingCredentials, match="ANTHROPIC_API_KEY"):
        none.resolve("fast")


def test_preload_imports_only_what_the_usable_candidates_need_and_builds_nothing() -> None:
    code = (
        "import sys\n"
        "from executor.models.config import load_tier_config\n"
        "from executor.models.providers import ProviderRegistry, ProviderSettings\n"
        "from executor.models.tiers import TierResolver\n"
        "cfg = load_tier_config(None, {'COTERIE_TIER_SMART': 'mistral:large,openai:gpt-5'})\n"
        "tiers = TierResolver(cfg, ProviderRegistry(ProviderSettings(openai_api_key='sk')))\n"
        "kinds = tiers.preload()\n"
        "print(kinds, 'anthropic' in sys.modules, 'openai' in sys.modules, tiers._models)\n"
        "print(tiers.preload(['nosuchtier']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # anthropic has no key and mistral is no provider: skipped, not raised (a run says so).
    assert out.stdout.splitlines() == ["['openai'] False True {}", "[]"]


def test_a_tier_resolved_without_failover_never_imports_its_backups_sdk() -> None:
    """``coterie ask`` with both keys: the default tier's first candidate's SDK only
    (preloaded without backups, then resolved); the backup's if failover reaches it."""
    code = (
        "import sys\n"
        "from executor.models.config import load_tier_config\n"
        "from executor.models.providers import ProviderRegistry, ProviderSettings\n"
        "from executor.models.tiers import TierResolver\n"
        "cfg = load_tier_config(None, {'COTERIE_TIER_FAST': 'anthropic:claude-haiku-4-5,openai:gpt-5-mini'})\n"
        "keys = ProviderSettings(anthropic_api_key='sk-ant', openai_api_key='sk')\n"
        "tiers = TierResolver(cfg, ProviderRegistry(keys))\n"
        "print(tiers.preload(['fast'], backups=False), tiers.preload(['nosuch'], backups=False))\n"
        "model = tiers.resolve('fast')\n"
        "print([m.name for m in model.candidates], 'openai' in sys.modules)\n"
        "model.candidates[1].model()\n"
        "print('openai' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "['anthropic'] []",
        "['anthropic:claude-haiku-4-5', 'openai:gpt-5-mini'] False",
        "True",
    ]
