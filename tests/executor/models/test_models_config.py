"""Tier config: defaults, the TOML file, the environment, and the errors."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from executor.errors import ConfigError
from executor.messages import Usage
from executor.models.config import DEFAULT_TIERS, TIER_TIMEOUTS, load_tier_config

EXAMPLE = Path(__file__).parents[3] / "coterie.example.toml"


def test_defaults_without_a_file() -> None:
    cfg = load_tier_config(None, {})
    assert cfg.default_tier == "standard"
    assert set(cfg.tiers) == {"fast", "standard", "smart"}
    for tier in cfg.tiers.values():
        assert tier.candidates and all(":" in c for c in tier.candidates)
        assert all(cfg.price_table().is_priced(c) for c in tier.candidates)


def test_example_file_loads() -> None:
    cfg = load_tier_config(EXAMPLE, {})
    assert cfg.tiers["local"].candidates == ("ollama:llama3.2:3b",)
    assert cfg.tiers["standard"].first_token_s == 20
    assert cfg.tiers["local"].first_token_s == 60  # a local model on a CPU starts slowly
    assert cfg.providers["vllm"].base_url == "http://gpu-box:8000/v1"
    assert cfg.providers["vllm"].api_key_env is None
    price = cfg.prices["openrouter:meta-llama/llama-3.3-70b-instruct"]
    assert price.input == Decimal("0.12")
    table = cfg.price_table()
    assert (
        table.cost_micros(
            "openrouter:meta-llama/llama-3.3-70b-instruct",
            Usage(input_tokens=100, output_tokens=10),
        )
        == 15
    )


def test_environment_wins(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(
        'default_tier = "fast"\n[tiers.fast]\ncandidates = ["anthropic:claude-haiku-4-5"]\ntimeout_seconds = 5\n'
    )
    cfg = load_tier_config(
        f,
        {
            "COTERIE_TIER_FAST": "openai:gpt-5-mini, ollama:qwen3:8b",
            "COTERIE_TIER_CHEAP": "ollama:llama3.2",
            "COTERIE_DEFAULT_TIER": "cheap",
            "UNRELATED": "x",
        },
    )
    assert cfg.tiers["fast"].candidates == ("openai:gpt-5-mini", "ollama:qwen3:8b")
    assert cfg.tiers["fast"].timeout_s == 5  # the file's timeout is kept
    assert cfg.tiers["cheap"].candidates == ("ollama:llama3.2",)
    assert cfg.default_tier == "cheap"
    assert cfg.tiers["smart"] == DEFAULT_TIERS["smart"]


def test_malformed_file_says_where(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('default_tier = "fast"\n[tiers.fast]\ncandidates = ["a:b"\n')
    with pytest.raises(ConfigError, match=rf"{f.name}:\d+:\d+: invalid TOML"):
        load_tier_config(f, {})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[tiers.fast]\ncandidates = []\n", "tiers.fast.candidates"),
        ('[tiers.fast]\ncandidates = ["claude-haiku-4-5"]\n', "tiers.fast.candidates"),
        (
            '[tiers.fast]\ncandidates = ["a:b"]\ntimeout_seconds = "soon"\n',
            "tiers.fast.timeout_seconds",
        ),
        ('default_tier = "nope"\n', "default_tier"),
        ('[providers.x]\nkind = "grpc"\n', "providers.x.kind"),
        ('[prices."a:b"]\ninput = 1\n', "prices.'a:b'"),
        ("cooldown_seconds = -1\n", "cooldown_seconds"),
        ("tierz = 1\n", "tierz"),
        (
            '[tiers.fast]\ncandidates = ["a:b"]\nidle_seconds = 0\n',
            "tiers.fast.idle_seconds must be greater than 0",
        ),
        (
            '[tiers.fast]\ncandidates = ["a:b"]\nfirst_token_seconds = "10s"\n',
            "tiers.fast.first_token_seconds",
        ),
        (
            '[tiers.fast]\ncandidates = ["a:b"]\nidle_timeout = 5\n',
            "unknown keys ['idle_timeout']; expected candidates, timeout_seconds, "
            "first_token_seconds, idle_seconds",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_tier_config(f, {})
    assert key in str(info.value)


@pytest.mark.parametrize("value", ["", "claude-haiku-4-5", "anthropic:"])
def test_bad_env_tier_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="COTERIE_TIER_FAST"):
        load_tier_config(None, {"COTERIE_TIER_FAST": value})


def test_unknown_default_tier_from_env() -> None:
    with pytest.raises(ConfigError, match="COTERIE_DEFAULT_TIER"):
        load_tier_config(None, {"COTERIE_DEFAULT_TIER": "huge"})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_tier_config(tmp_path / "absent.toml", {})


def test_malformed_line_and_column(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('default_tier = "fast"\ncooldown_seconds = = 3\n')
    with pytest.raises(ConfigError, match=r"bad\.toml:2:\d+: invalid TOML"):
        load_tier_config(f, {})


def test_every_tier_has_its_timeouts_from_the_file_or_the_defaults(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(
        '[tiers.standard]\ncandidates = ["openai:gpt-5.4"]\n'
        '[tiers.fast]\ncandidates = ["a:b"]\nidle_seconds = 4\n'
        '[tiers.local]\ncandidates = ["ollama:llama3.2:3b"]\nfirst_token_seconds = 90\n'
    )
    cfg = load_tier_config(f, {})
    standard, default = cfg.tiers["standard"], DEFAULT_TIERS["standard"]
    # A default tier's new candidates keep its timeouts.
    assert (standard.timeout_s, standard.first_token_s, standard.idle_s) == (
        default.timeout_s,
        default.first_token_s,
        default.idle_s,
    )
    assert cfg.tiers["fast"].idle_s == 4
    assert cfg.tiers["fast"].first_token_s == DEFAULT_TIERS["fast"].first_token_s
    local = cfg.tiers["local"]
    assert (local.timeout_s, local.first_token_s, local.idle_s) == (
        TIER_TIMEOUTS.timeout_s,
        90,
        TIER_TIMEOUTS.idle_s,
    )


def test_the_environment_sets_a_tier_s_timeouts(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[tiers.fast]\ncandidates = ["a:b"]\nfirst_token_seconds = 8\n')
    cfg = load_tier_config(
        f,
        {
            "COTERIE_TIER_FAST_FIRST_TOKEN_SECONDS": "5",
            "COTERIE_TIER_SMART_TIMEOUT_SECONDS": "100",
            "COTERIE_TIER_SMART_IDLE_SECONDS": "12.5",
            # a tier the environment defines, timed by the environment
            "COTERIE_TIER_CHEAP_IDLE_SECONDS": "3",
            "COTERIE_TIER_CHEAP": "ollama:llama3.2",
        },
    )
    assert cfg.tiers["fast"].first_token_s == 5  # the environment wins over the file
    assert cfg.tiers["fast"].candidates == ("a:b",)
    smart = cfg.tiers["smart"]
    assert (smart.timeout_s, smart.first_token_s, smart.idle_s) == (
        100,
        DEFAULT_TIERS["smart"].first_token_s,
        12.5,
    )
    assert smart.candidates == DEFAULT_TIERS["smart"].candidates
    cheap = cfg.tiers["cheap"]
    assert cheap.candidates == ("ollama:llama3.2",) and cheap.idle_s == 3
    assert "cheap_idle_seconds" not in cfg.tiers


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"COTERIE_TIER_FAST_IDLE_SECONDS": "soon"},
            "COTERIE_TIER_FAST_IDLE_SECONDS='soon': must be a number of seconds greater than 0",
        ),
        (
            {"COTERIE_TIER_FAST_FIRST_TOKEN_SECONDS": "0"},
            "COTERIE_TIER_FAST_FIRST_TOKEN_SECONDS='0': must be a number of seconds",
        ),
        ({"COTERIE_TIER_FAST_TIMEOUT_SECONDS": "inf"}, "COTERIE_TIER_FAST_TIMEOUT_SECONDS"),
        (
            {"COTERIE_TIER_HUGE_IDLE_SECONDS": "3"},
            "COTERIE_TIER_HUGE_IDLE_SECONDS: 'huge' is not a tier; known: ['fast', 'smart', 'standard']",
        ),
    ],
)
def test_bad_env_timeouts_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_tier_config(None, env)
    assert message in str(info.value)
