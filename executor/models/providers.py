"""The provider registry: ``"provider:model"`` -> a :class:`~executor.models.base.Model`.

A provider is data (:class:`ProviderSpec`): which wire protocol it speaks
(its ``kind``: ``"anthropic"`` or ``"openai"``), its default base URL, and the
names of the variables holding its key and base-URL override. Built in:

============  ========  ================================  ==================
provider      kind      default base URL                  key variable
============  ========  ================================  ==================
anthropic     anthropic https://api.anthropic.com          ANTHROPIC_API_KEY
openai        openai    https://api.openai.com/v1          OPENAI_API_KEY
ollama        openai    http://localhost:11434/v1          (none)
openrouter    openai    https://openrouter.ai/api/v1       OPENROUTER_API_KEY
============  ========  ================================  ==================

More come from the config file (``[providers.NAME]``). A kind names the module
that implements it, imported only when the first model of that kind is built
(importing the ``anthropic`` SDK costs seconds and tens of MB; ``coterie
--help`` must not pay that). Each module exposes ``make_client(...)`` and
``make_model(...)``.

The registry never reads the environment: keys and base URLs arrive in a
:class:`ProviderSettings` built by the host (the bot's pydantic-settings, or
:meth:`ProviderSettings.from_environ`).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol, cast

from executor.errors import MissingCredentials, UnknownModel
from executor.models.base import (
    Model,
    ModelProfile,
    ModelRequest,
    ModelResponse,
    StreamEvent,
    profile_of,
)
from executor.models.pricing import PriceTable

__all__ = [
    "BUILTIN_PROVIDERS",
    "DeferredModel",
    "HttpClientFactory",
    "ProviderRegistry",
    "ProviderSettings",
    "ProviderSpec",
    "is_context_too_long",
    "parse_retry_after",
    "split_model_name",
]

Kind = Literal["anthropic", "openai"]

# kind -> module implementing it. Imported lazily, see the module docstring.
_KIND_MODULES: Mapping[str, str] = {
    "anthropic": "executor.models.anthropic",
    "openai": "executor.models.openai",
}

# A factory for the SDK's HTTP client (an ``httpx2.AsyncClient``), per provider.
# Tests pass one that returns a client over a mock transport.
HttpClientFactory = Callable[["ProviderSpec"], Any]


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One provider: its protocol, where it lives, and where its key comes from."""

    name: str
    kind: Kind
    base_url: str | None = None  # None: the SDK's default
    api_key_env: str | None = None  # None: no key needed (local servers)
    base_url_env: str | None = None  # a variable that overrides base_url
    # OpenAI kind only: api.openai.com wants max_completion_tokens; most
    # OpenAI-compatible servers (Ollama, vLLM, LM Studio) know max_tokens.
    max_tokens_param: str = "max_tokens"


BUILTIN_PROVIDERS: tuple[ProviderSpec, ...] = (
    ProviderSpec(
        "anthropic",
        "anthropic",
        base_url="https://api.anthropic.com",
        api_key_env="ANTHROPIC_API_KEY",
        base_url_env="ANTHROPIC_BASE_URL",
    ),
    ProviderSpec(
        "openai",
        "openai",
        base_url="https://api.openai.com/v1",
        api_key_env="OPENAI_API_KEY",
        base_url_env="OPENAI_BASE_URL",
        max_tokens_param="max_completion_tokens",
    ),
    ProviderSpec(
        "ollama",
        "openai",
        base_url="http://localhost:11434/v1",
        base_url_env="OLLAMA_BASE_URL",
    ),
    ProviderSpec(
        "openrouter",
        "openai",
        base_url="https://openrouter.ai/api/v1",
        api_key_env="OPENROUTER_API_KEY",
    ),
)


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """Keys and base URLs, passed in by the host. Unset fields are ``None``.

    :meth:`lookup` finds a variable by name: a field of the same name in lower
    case, else ``extra`` (variables named by custom providers' ``api_key_env``).
    """

    anthropic_api_key: str | None = None
    anthropic_base_url: str | None = None
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    openrouter_api_key: str | None = None
    ollama_base_url: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def lookup(self, variable: str) -> str | None:
        name = variable.lower()
        if name != "extra" and name in _SETTING_FIELDS:
            value = cast(str | None, getattr(self, name))
            if value:
                return value
        return self.extra.get(variable) or None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ProviderSettings:
        """Everything from an environment-like mapping (``extra`` keeps all of it)."""
        known = {f: environ.get(f.upper()) or None for f in _SETTING_FIELDS if f != "extra"}
        return cls(**known, extra=dict(environ))


_SETTING_FIELDS = frozenset(f.name for f in fields(ProviderSettings))


class _KindModule(Protocol):
    def make_client(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        max_retries: int,
        timeout: float,
        http_client: Any | None,
    ) -> Any: ...

    def make_model(
        self, client: Any, *, spec: ProviderSpec, model_id: str, prices: PriceTable
    ) -> Model: ...


def split_model_name(name: str) -> tuple[str, str]:
    """``"ollama:llama3.2:3b"`` -> ``("ollama", "llama3.2:3b")``; the model may hold colons."""
    provider, sep, model_id = name.partition(":")
    if not sep or not provider or not model_id:
        raise ValueError(f"expected provider:model, got {name!r}")
    return provider.strip(), model_id.strip()


class ProviderRegistry:
    """Builds models by ``provider:model`` name. One SDK client per provider, kept.

    ``max_retries`` bounds the SDK's own retries: failover is the retry, and it
    must happen within the tier's deadline (0 keeps a 5xx fail-over under a
    second). ``sdk_timeout`` is the SDK's per-read timeout, a backstop only: the
    real deadline is the failover model's.
    """

    def __init__(
        self,
        settings: ProviderSettings | None = None,
        *,
        providers: Mapping[str, ProviderSpec] | None = None,
        prices: PriceTable | None = None,
        http_client_factory: HttpClientFactory | None = None,
        max_retries: int = 0,
        sdk_timeout: float = 600.0,
    ) -> None:
        self._settings = settings or ProviderSettings()
        self._specs: dict[str, ProviderSpec] = {s.name: s for s in BUILTIN_PROVIDERS}
        self._specs.update(providers or {})
        self.prices = prices or PriceTable()
        self._http_client_factory = http_client_factory
        self._max_retries = max_retries
        self._sdk_timeout = sdk_timeout
        self._clients: dict[str, Any] = {}

    @property
    def known(self) -> list[str]:
        return sorted(self._specs)

    def spec(self, provider: str) -> ProviderSpec:
        try:
            return self._specs[provider]
        except KeyError:
            raise UnknownModel(provider, self.known) from None

    def register(self, spec: ProviderSpec) -> None:
        self._specs[spec.name] = spec
        self._clients.pop(spec.name, None)

    def api_key(self, spec: ProviderSpec) -> str | None:
        """The provider's key; raises :class:`MissingCredentials` naming the variable."""
        if spec.api_key_env is None:
            return None
        key = self._settings.lookup(spec.api_key_env)
        if not key:
            raise MissingCredentials(spec.name, spec.api_key_env)
        return key

    def check(self, name: str) -> None:
        """Raise what :meth:`model` would raise for ``name``, without building anything."""
        try:
            provider, _ = split_model_name(name)
        except ValueError:
            raise UnknownModel(name, self.known) from None
        self.api_key(self.spec(provider))

    def model(self, name: str) -> Model:
        """A model for ``"provider:model"``. Imports the provider's SDK on first use."""
        try:
            provider, model_id = split_model_name(name)
        except ValueError:
            raise UnknownModel(name, self.known) from None
        spec = self.spec(provider)
        # Why before the import: a provider without its key is skipped by the tier, and
        # importing its SDK for nothing costs seconds and tens of MB.
        self.api_key(spec)
        module = self._module(spec.kind)
        client = self._client(spec, module)
        return module.make_model(client, spec=spec, model_id=model_id, prices=self.prices)

    def deferred(self, name: str) -> DeferredModel:
        """A model for ``"provider:model"`` built (its SDK imported, its client made)
        the first time it is used. Raises now what :meth:`model` would raise before
        importing: an unknown provider, a missing key."""
        try:
            provider, model_id = split_model_name(name)
        except ValueError:
            raise UnknownModel(name, self.known) from None
        spec = self.spec(provider)
        self.api_key(spec)
        return DeferredModel(f"{spec.name}:{model_id}", lambda: self.model(name))

    def preload(self, names: Iterable[str]) -> list[str]:
        """Import the SDK modules :meth:`model` would import for ``names``, building
        nothing; a name of an unknown provider, or of one without its key, is skipped
        (:meth:`model` reports it). Returns the kinds imported, in order.

        Why: importing an SDK takes seconds; a host calls this in a thread at start
        (importing is thread-safe) so that no member's first message pays for it."""
        kinds: list[str] = []
        for name in names:
            try:
                self.check(name)
                kind = self.spec(split_model_name(name)[0]).kind
            except (MissingCredentials, UnknownModel):
                continue
            if kind not in kinds:
                self._module(kind)
                kinds.append(kind)
        return kinds

    def _module(self, kind: str) -> _KindModule:
        return cast(_KindModule, importlib.import_module(_KIND_MODULES[kind]))

    def _client(self, spec: ProviderSpec, module: _KindModule) -> Any:
        client = self._clients.get(spec.name)
        if client is None:
            base_url = (
                spec.base_url_env and self._settings.lookup(spec.base_url_env)
            ) or spec.base_url
            client = module.make_client(
                api_key=self.api_key(spec),
                base_url=base_url,
                max_retries=self._max_retries,
                timeout=self._sdk_timeout,
                http_client=self._http_client_factory(spec) if self._http_client_factory else None,
            )
            self._clients[spec.name] = client
        return client

    async def aclose(self) -> None:
        """Close every SDK client (at shutdown)."""
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()


# --- helpers shared by the provider files ---------------------------------------

_CONTEXT_TOO_LONG = re.compile(
    r"prompt is too long|context[_ ]length[_ ]exceeded|maximum context length"
    r"|context window|too many (input )?tokens|input is too long|exceeds the context",
    re.IGNORECASE,
)


class DeferredModel:
    """A :class:`~executor.models.base.Model` built on first use: a tier's backup
    candidate, whose provider's SDK (seconds and tens of MB to import) is needed only
    if failover reaches it. Its ``name`` is known at once; its ``profile`` and its
    requests build it, once."""

    __slots__ = ("_build", "_model", "_name")

    def __init__(self, name: str, build: Callable[[], Model]) -> None:
        self._name = name
        self._build = build
        self._model: Model | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def built(self) -> bool:
        return self._model is not None

    def model(self) -> Model:
        """The model itself, built now if it was not yet."""
        if self._model is None:
            self._model = self._build()
        return self._model

    @property
    def profile(self) -> ModelProfile:
        return profile_of(self.model())

    async def generate(self, request: ModelRequest) -> ModelResponse:
        return await self.model().generate(request)

    def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        return self.model().stream(request)


def is_context_too_long(message: str) -> bool:
    """Whether a provider's 400 message says the conversation does not fit."""
    return bool(_CONTEXT_TOO_LONG.search(message))


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds form only)."""
    if not headers:
        return None
    for header, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(header)
        if raw is None:
            continue
        try:
            value = float(raw) / scale
        except ValueError:
            continue
        if value >= 0:
            return value
    return None
