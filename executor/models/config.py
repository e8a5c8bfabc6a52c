"""Tier configuration: which models a tier tries, in what order, how long each gets.

Read from a TOML file (``coterie.toml``; see ``coterie.example.toml``) and the
environment, the environment winning. Every key is optional::

    default_tier = "standard"     # the tier an agent without one uses
    cooldown_seconds = 60         # how long a failed candidate goes to the back

    [tiers.fast]                  # a tier: candidates in order, first is preferred
    candidates = ["anthropic:claude-haiku-4-5", "openai:gpt-5-mini"]
    timeout_seconds = 30          # our deadline for one attempt (whole call/stream)
    first_token_seconds = 10      # a stream's first event must come within this
    idle_seconds = 10             # and each later one within this of the last

    [providers.together]          # an OpenAI-compatible provider of your own
    kind = "openai"               # "openai" or "anthropic" (the wire protocol)
    base_url = "https://api.together.xyz/v1"
    api_key_env = "TOGETHER_API_KEY"   # omit for a server without keys
    base_url_env = "TOGETHER_BASE_URL" # optional override variable
    max_tokens_param = "max_tokens"    # or "max_completion_tokens"

    [prices."together:meta-llama/Llama-3.3-70B"]  # US$ per million tokens
    input = 0.88
    output = 0.88
    cache_read = 0.0
    cache_write = 0.0

A ``[providers.NAME]`` with a built-in name (``anthropic``, ``openai``,
``ollama``, ``openrouter``) replaces the built-in one; a ``[tiers.NAME]``
replaces the default tier of that name, and defines a new tier otherwise.

Environment (wins over the file):

- ``COTERIE_TIER_<NAME>=provider:model,provider:model`` defines or replaces
  the candidates of tier ``<name>`` (lower-cased); its timeouts are kept.
- ``COTERIE_TIER_<NAME>_TIMEOUT_SECONDS``, ``..._FIRST_TOKEN_SECONDS``,
  ``..._IDLE_SECONDS`` set one of an existing tier's timeouts.
- ``COTERIE_DEFAULT_TIER=<name>``.

Every tier has all three timeouts: a tier the file or the environment defines
without them gets :data:`TIER_TIMEOUTS` (a default tier's own when it replaces
one). They are what make failover quick when a provider accepts a request and
then hangs (see :mod:`executor.models.fallback`).

A malformed file raises :class:`~executor.errors.ConfigError` saying where
(``file:line:column``); a bad value raises one naming the key.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, get_args

from executor.errors import ConfigError
from executor.models.pricing import Price, PriceTable
from executor.models.providers import Kind, ProviderSpec

__all__ = [
    "DEFAULT_TIERS",
    "TIER_TIMEOUTS",
    "ModelsConfig",
    "TierConfig",
    "load_tier_config",
]

ENV_TIER_PREFIX = "COTERIE_TIER_"
ENV_DEFAULT_TIER = "COTERIE_DEFAULT_TIER"
# COTERIE_TIER_<NAME><suffix> -> (the TierConfig field, the key in a [tiers.NAME] table)
_TIMEOUT_KEYS: Mapping[str, tuple[str, str]] = {
    "_TIMEOUT_SECONDS": ("timeout_s", "timeout_seconds"),
    "_FIRST_TOKEN_SECONDS": ("first_token_s", "first_token_seconds"),
    "_IDLE_SECONDS": ("idle_s", "idle_seconds"),
}


@dataclass(frozen=True, slots=True)
class TierConfig:
    """A tier: its candidates in order, and how long each attempt may take.

    ``timeout_s``: the deadline of one attempt, the whole call or the whole stream;
    ``first_token_s``: a stream's first event must come within this;
    ``idle_s``: and each later event within this of the one before.
    """

    name: str
    candidates: tuple[str, ...]
    timeout_s: float = 60.0
    first_token_s: float = 20.0
    idle_s: float = 20.0


# Why these: Claude, first in every default tier, usually starts streaming within a
# few seconds; these leave room for a long conversation on a busy provider, and one
# silent for longer has most likely hung. OpenAI's reasoning models are silent while
# they think: their profile gives them the deadline for their first event instead.
DEFAULT_TIERS: Mapping[str, TierConfig] = {
    "fast": TierConfig(
        "fast",
        ("anthropic:claude-haiku-4-5", "openai:gpt-5-mini"),
        timeout_s=30.0,
        first_token_s=10.0,
        idle_s=10.0,
    ),
    "standard": TierConfig(
        "standard",
        ("anthropic:claude-sonnet-4-6", "openai:gpt-5.4"),
        timeout_s=90.0,
        first_token_s=20.0,
        idle_s=20.0,
    ),
    "smart": TierConfig(
        "smart",
        ("anthropic:claude-opus-4-8", "openai:gpt-5.5"),
        timeout_s=180.0,
        first_token_s=30.0,
        idle_s=30.0,
    ),
}
# A tier defined without timeouts gets these (a default tier's name keeps its own).
TIER_TIMEOUTS = TierConfig("", ())


@dataclass(frozen=True, slots=True)
class ModelsConfig:
    tiers: Mapping[str, TierConfig] = field(default_factory=lambda: dict(DEFAULT_TIERS))
    default_tier: str = "standard"
    cooldown_s: float = 60.0
    prices: Mapping[str, Price] = field(default_factory=dict)  # overrides of the table
    providers: Mapping[str, ProviderSpec] = field(default_factory=dict)  # custom/overridden
    source: Path | None = None

    def price_table(self) -> PriceTable:
        return PriceTable(self.prices)


def load_tier_config(path: Path | None, environ: Mapping[str, str]) -> ModelsConfig:
    """Defaults, then the TOML file at ``path`` (if given), then ``environ``."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_toml(path)
    where = str(path) if path is not None else "config"

    # Why "mcp": [mcp.<name>] servers share the file (adapters/mcp/config.py reads them).
    known = {"default_tier", "cooldown_seconds", "tiers", "providers", "prices", "mcp"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}; expected one of {sorted(known)}")

    tiers: dict[str, TierConfig] = dict(DEFAULT_TIERS)
    for name, raw in _table(data, "tiers", where).items():
        tiers[name] = _tier(name, raw, f"{where}: tiers.{name}")

    providers = {
        name: _provider(name, raw, f"{where}: providers.{name}")
        for name, raw in _table(data, "providers", where).items()
    }
    prices = {
        name: _price(raw, f"{where}: prices.{name!r}")
        for name, raw in _table(data, "prices", where).items()
    }
    default_tier = _str(data.get("default_tier", "standard"), f"{where}: default_tier")
    cooldown = _number(data.get("cooldown_seconds", 60.0), f"{where}: cooldown_seconds")

    timeouts: list[tuple[str, str, str, str]] = []  # (variable, tier, suffix, value)
    for var, value in environ.items():
        if var.startswith(ENV_TIER_PREFIX) and len(var) > len(ENV_TIER_PREFIX):
            rest = var[len(ENV_TIER_PREFIX) :]
            suffix = next(
                (s for s in _TIMEOUT_KEYS if rest.endswith(s) and len(rest) > len(s)), None
            )
            if suffix is not None:
                timeouts.append((var, rest[: -len(suffix)].lower(), suffix, value))
                continue
            name = rest.lower()
            candidates = tuple(c.strip() for c in value.split(",") if c.strip())
            _check_candidates(candidates, var)
            base = tiers.get(name, TierConfig(name, candidates))
            tiers[name] = replace(base, candidates=candidates)
    # Why after the candidates: a variable may time a tier another variable defines.
    for var, name, suffix, value in sorted(timeouts):
        if name not in tiers:
            raise ConfigError(f"{var}: {name!r} is not a tier; known: {sorted(tiers)}")
        tier = tiers[name]
        timings = {"timeout_s": tier.timeout_s, "first_token_s": tier.first_token_s}
        timings["idle_s"] = tier.idle_s
        timings[_TIMEOUT_KEYS[suffix][0]] = _env_seconds(value, var)
        tiers[name] = TierConfig(name, tier.candidates, **timings)
    if environ.get(ENV_DEFAULT_TIER):
        default_tier = environ[ENV_DEFAULT_TIER].strip().lower()
        if default_tier not in tiers:
            raise ConfigError(
                f"{ENV_DEFAULT_TIER}={default_tier!r} is not a tier; known: {sorted(tiers)}"
            )
    elif default_tier not in tiers:
        raise ConfigError(
            f"{where}: default_tier {default_tier!r} is not a tier; known: {sorted(tiers)}"
        )

    return ModelsConfig(
        tiers=tiers,
        default_tier=default_tier,
        cooldown_s=cooldown,
        prices=prices,
        providers=providers,
        source=path,
    )


# --- parsing ------------------------------------------------------------------------

_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read tier config {path}: {exc.strerror or exc}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = _TOML_POSITION.search(msg)
        if m:
            line, col = m.groups()
            msg = _TOML_POSITION.sub("", msg).strip()
        else:  # "(at end of document)": point at the end
            lines = text.split("\n")
            line, col = str(len(lines)), str(len(lines[-1]) + 1)
            msg = msg.replace("(at end of document)", "at end of file").strip()
        raise ConfigError(f"{path}:{line}:{col}: invalid TOML: {msg}") from exc


def _table(data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key} must be a table ([{key}.NAME])")
    return value


def _str(value: object, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
    return value.strip()


def _number(value: object, key: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{key} must be a non-negative number, got {value!r}")
    if positive and value == 0:
        raise ConfigError(f"{key} must be greater than 0")
    return float(value)


def _check_candidates(candidates: tuple[str, ...], key: str) -> None:
    if not candidates:
        raise ConfigError(f"{key}: a tier needs at least one candidate (provider:model)")
    for c in candidates:
        provider, sep, model = c.partition(":")
        if not sep or not provider.strip() or not model.strip():
            raise ConfigError(
                f"{key}: candidate {c!r} must be provider:model, e.g. anthropic:claude-haiku-4-5"
            )


def _tier(name: str, raw: object, key: str) -> TierConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{key} must be a table")
    timings = {file_key: field_name for field_name, file_key in _TIMEOUT_KEYS.values()}
    unknown = set(raw) - {"candidates", *timings}
    if unknown:
        raise ConfigError(
            f"{key}: unknown keys {sorted(unknown)}; expected candidates, {', '.join(timings)}"
        )
    cands = raw.get("candidates")
    if not isinstance(cands, list) or not all(isinstance(c, str) for c in cands):
        raise ConfigError(f'{key}.candidates must be a list of "provider:model" strings')
    candidates = tuple(c.strip() for c in cands)
    _check_candidates(candidates, f"{key}.candidates")
    base = DEFAULT_TIERS.get(name, TIER_TIMEOUTS)
    values = {
        field_name: _number(raw[file_key], f"{key}.{file_key}", positive=True)
        if file_key in raw
        else getattr(base, field_name)
        for file_key, field_name in timings.items()
    }
    return TierConfig(name, candidates, **values)


def _env_seconds(value: str, var: str) -> float:
    try:
        seconds = float(value.strip())
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{var}={value[:40]!r}: must be a number of seconds greater than 0")
    return seconds


def _provider(name: str, raw: object, key: str) -> ProviderSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{key} must be a table")
    unknown = set(raw) - {"kind", "base_url", "api_key_env", "base_url_env", "max_tokens_param"}
    if unknown:
        raise ConfigError(f"{key}: unknown keys {sorted(unknown)}")
    kinds = get_args(Kind)
    kind = raw.get("kind", "openai")
    if kind not in kinds:
        raise ConfigError(f"{key}.kind must be one of {list(kinds)}, got {kind!r}")
    opt = {
        k: _str(raw[k], f"{key}.{k}")
        for k in ("base_url", "api_key_env", "base_url_env")
        if k in raw
    }
    return ProviderSpec(
        name,
        kind,
        base_url=opt.get("base_url"),
        api_key_env=opt.get("api_key_env"),
        base_url_env=opt.get("base_url_env"),
        max_tokens_param=_str(raw.get("max_tokens_param", "max_tokens"), f"{key}.max_tokens_param"),
    )


def _price(raw: object, key: str) -> Price:
    if not isinstance(raw, dict):
        raise ConfigError(f"{key} must be a table with input and output")
    unknown = set(raw) - {"input", "output", "cache_read", "cache_write", "per_call"}
    per_call_only = set(raw) == {"per_call"}  # a search provider: US$ per query
    if unknown or (not per_call_only and ("input" not in raw or "output" not in raw)):
        raise ConfigError(
            f"{key}: needs input and output (optional cache_read, cache_write) in US$ per "
            "million tokens, or per_call in US$ per call"
        )
    if per_call_only:
        return Price.of(0, 0, per_call=_number(raw["per_call"], f"{key}.per_call"))
    vals = {k: _number(v, f"{key}.{k}") for k, v in raw.items()}
    return Price.of(**vals)
