"""Settings from the environment, `.env`, and `coterie.toml` (environment wins).

Every setting has a ``COTERIE_`` variable; provider keys keep their own
conventional names (``ANTHROPIC_API_KEY``, ``OPENAI_API_KEY``, ...). Lists may be
written as JSON (``[1, 2]``) or comma-separated (``1,2``). :func:`env_name` gives a
field's variable; ``bot.cli._common`` turns a bad value into one line naming it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

__all__ = ["LogLevel", "Settings", "check_base_url", "env_name"]

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


def _split_list(value: Any) -> Any:
    """``"1,2"`` or ``"[1, 2]"`` -> a list; anything else goes to pydantic as it is."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError:
            return value  # pydantic names the variable and says it is not a list
    return [part.strip() for part in text.split(",") if part.strip()]


_BASE_URL_EXAMPLE = "e.g. http://localhost:11434/v1"


def check_base_url(text: str) -> None:
    """Raise ValueError (said to the operator) unless ``text`` is an http(s) URL with a host.

    Why here: a malformed base URL otherwise reaches the SDK, which reads it as a
    relative path and reports every request as "Connection error."."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
    except ValueError:  # an unclosed [ of an IPv6 address
        raise ValueError(f"is not a URL; {_BASE_URL_EXAMPLE}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"must start with http:// or https://, {_BASE_URL_EXAMPLE}")
    if not parts.hostname or any(c.isspace() for c in text):
        raise ValueError(f"must name a host; {_BASE_URL_EXAMPLE}")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(f"its port must be a number from 1 to 65535; {_BASE_URL_EXAMPLE}")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="COTERIE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    # --- config file ------------------------------------------------------------
    config_file: Path = Field(default=Path("coterie.toml"))

    # --- providers ----------------------------------------------------------------
    anthropic_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("ANTHROPIC_API_KEY", "COTERIE_ANTHROPIC_API_KEY"),
    )
    anthropic_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("ANTHROPIC_BASE_URL", "COTERIE_ANTHROPIC_BASE_URL"),
    )
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "COTERIE_OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "COTERIE_OPENAI_BASE_URL")
    )

    # --- storage --------------------------------------------------------------------
    database_url: str = Field(
        default="sqlite+aiosqlite:///./data/coterie.db",
        validation_alias=AliasChoices("DATABASE_URL", "COTERIE_DATABASE_URL"),
    )
    # Connections the process keeps, and how many more it may open under load (None:
    # 10 + 40 on PostgreSQL, 8 + 24 on SQLite; adapters.storage.db.POOL_DEFAULTS).
    db_pool_size: int | None = Field(default=None, ge=1)
    db_max_overflow: int | None = Field(default=None, ge=0)

    # --- discord ----------------------------------------------------------------------
    discord_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DISCORD_TOKEN", "COTERIE_DISCORD_TOKEN")
    )
    dev_guild_id: int | None = None
    application_id: int | None = None  # for `coterie invite`; read from the token when unset
    owner_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)
    allow_dms: bool = True

    # --- runs -------------------------------------------------------------------------
    default_tier: str = "standard"
    enabled_tools: Annotated[list[str] | None, NoDecode] = None  # None: every built-in tool

    # --- web search (executor/tools/search.py) -----------------------------------------
    searxng_url: str | None = None  # a SearXNG instance, usually on loopback or the LAN
    brave_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("BRAVE_API_KEY", "COTERIE_BRAVE_API_KEY")
    )
    tavily_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("TAVILY_API_KEY", "COTERIE_TAVILY_API_KEY")
    )
    # The order to try them in (None: searxng, brave, tavily, those configured).
    search_providers: Annotated[list[str] | None, NoDecode] = None
    brave_url: str = "https://api.search.brave.com/res/v1/web/search"
    tavily_url: str = "https://api.tavily.com/search"

    # --- lanes, critic, compaction, history --------------------------------------------
    lane_slots: int = Field(default=4, ge=1)  # runs at once; fair-shared between members
    critic_soft_runtime_s: float = Field(default=60.0, gt=0)
    critic_soft_steps: int = Field(default=8, ge=1)
    critic_hard_factor: float = Field(default=3.0, ge=1)
    critic_judge_tier: str | None = None  # e.g. "fast": ask a cheap model "making progress?"
    compaction_tier: str = "fast"
    compaction_share: float = Field(default=0.75, gt=0, lt=1)
    history_max_messages: int = Field(default=30, ge=1)
    history_max_chars: int = Field(default=24_000, ge=1000)

    # --- skills and schedules ------------------------------------------------------------
    scheduler_role: str | None = None  # a role (name or id) that may schedule, beside Manage Server
    schedule_min_interval_s: int = Field(default=300, ge=60)  # the closest two runs may be
    schedules_per_member: int = Field(default=10, ge=1)
    schedule_grace_s: int = Field(default=3600, ge=0)  # how late a missed slot may still catch up
    schedule_warn_after: int = Field(default=2, ge=1)  # consecutive failures before a DM
    schedule_disable_after: int = Field(default=5, ge=1)  # consecutive failures: disabled
    skill_dispatch_depth: int = Field(default=2, ge=1)  # run_skill inside run_skill, at most

    # --- memory (notes personas keep about members) ----------------------------------------
    memory_enabled: bool = True  # off: no persona reads or keeps notes anywhere
    # Notes older than this many days are deleted (checked hourly); None: kept until deleted.
    memory_retention_days: int | None = Field(default=None, ge=1)
    memory_max_notes: int = Field(default=50, ge=1)  # per member, persona and place
    memory_max_chars: int = Field(default=10_000, ge=100)  # their total size
    memory_prompt_tokens: int = Field(default=600, ge=0)  # what notes may take of a prompt

    # --- budgets ----------------------------------------------------------------------
    # Per member, rolling 7 days; 0 lets nobody spend until a limit is set for them.
    budget_default_usd: float = Field(default=5.0, ge=0, allow_inf_nan=False)
    # A DM to the member when their 7-day spend passes each share of their limit.
    budget_warn_percent: Annotated[list[Annotated[int, Field(ge=1, le=100)]], NoDecode] = Field(
        default_factory=lambda: [50, 80]
    )
    operator_user_id: str = "console"

    # --- several processes (PostgreSQL) ------------------------------------------------
    # Unset: the processes share the shards out through the database (the count Discord
    # suggests). Set both to pin this process's shards by hand (the same count everywhere).
    shard_count: int | None = Field(default=None, ge=1)
    shard_ids: Annotated[list[int] | None, NoDecode] = None
    # A process that has not renewed its lease for this long is dead: its shards and
    # runs are taken over. It renews every third of it.
    lease_ttl_s: float = Field(default=15.0, ge=1, le=300)
    # Discord allows one IDENTIFY per 5 s (per bucket): the wait before each shard
    # connects after the first. Lower it only against a test gateway.
    identify_interval_s: float = Field(default=5.0, ge=0)

    # --- operations -------------------------------------------------------------------
    shutdown_grace_s: float = Field(default=20.0, ge=0)  # running runs may finish this long
    resume_offer_hours: float = Field(default=6.0, gt=0)  # Resume/Discard of a run cut short
    log_level: LogLevel = "INFO"  # coterie's own log lines
    log_format: Literal["logfmt", "json"] = "logfmt"  # logfmt: key=value; json: an object a line
    log_libraries: LogLevel = "WARNING"  # discord.py, httpx, Alembic, the SDKs

    @field_validator("owner_ids", "budget_warn_percent", mode="before")
    @classmethod
    def _owner_ids(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("shard_ids", mode="before")
    @classmethod
    def _shard_ids_list(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return _split_list(value)

    @field_validator("shard_ids")
    @classmethod
    def _shard_ids(cls, value: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if value is None:
            return None
        count = info.data.get("shard_count")
        if count is None:
            raise ValueError("needs COTERIE_SHARD_COUNT too (the count every process uses)")
        if not value:
            raise ValueError("names no shard")
        wrong = [i for i in value if not 0 <= i < count]
        if wrong:
            raise ValueError(f"shard {wrong[0]} is not between 0 and {count - 1}")
        if len(set(value)) != len(value):
            raise ValueError("names a shard twice")
        return sorted(value)

    @field_validator("enabled_tools", mode="before")
    @classmethod
    def _enabled_tools(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None  # COTERIE_ENABLED_TOOLS= (empty): every tool, like unset
        return _split_list(value)

    @field_validator("anthropic_base_url", "openai_base_url", mode="before")
    @classmethod
    def _base_url(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not text:
            return None  # OPENAI_BASE_URL= (empty): the provider's own, like unset
        check_base_url(text)
        return text

    @field_validator("search_providers", mode="before")
    @classmethod
    def _search_providers(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return _split_list(value)

    @field_validator("log_level", "log_libraries", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _format(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, dotenv_settings, file_secret_settings)


def env_name(field: str) -> str:
    """The variable that sets ``field``: its conventional name where it has one
    (``DATABASE_URL``), else ``COTERIE_<FIELD>``."""
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices) and alias.choices and isinstance(alias.choices[0], str):
        return alias.choices[0]
    if isinstance(alias, str):
        return alias
    return f"COTERIE_{field.upper()}"
