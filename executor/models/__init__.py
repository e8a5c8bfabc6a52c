"""Models: the protocol, providers by name, tiers with failover, prices.

Importing this package imports no provider SDK: ``executor.models.anthropic``
and ``executor.models.openai`` load when the first model of their kind is
built through the :class:`ProviderRegistry`.
"""

from executor.models.base import (
    Attempt,
    Failover,
    KeepAlive,
    Model,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    StreamReset,
    TextDelta,
    ToolCallEvent,
    ToolDefinition,
)
from executor.models.config import DEFAULT_TIERS, ModelsConfig, TierConfig, load_tier_config
from executor.models.fallback import Cooldowns, FallbackModel
from executor.models.pricing import (
    DEFAULT_PRICES,
    Price,
    PriceTable,
    cost_micros,
    estimate_micros,
    is_priced,
)
from executor.models.providers import (
    BUILTIN_PROVIDERS,
    ProviderRegistry,
    ProviderSettings,
    ProviderSpec,
)
from executor.models.tiers import TierResolver

__all__ = [
    "BUILTIN_PROVIDERS",
    "DEFAULT_PRICES",
    "DEFAULT_TIERS",
    "Attempt",
    "Cooldowns",
    "Failover",
    "FallbackModel",
    "KeepAlive",
    "Model",
    "ModelRequest",
    "ModelResponse",
    "ModelsConfig",
    "Price",
    "PriceTable",
    "ProviderRegistry",
    "ProviderSettings",
    "ProviderSpec",
    "ResponseDone",
    "StreamEvent",
    "StreamReset",
    "TextDelta",
    "TierConfig",
    "TierResolver",
    "ToolCallEvent",
    "ToolDefinition",
    "cost_micros",
    "estimate_micros",
    "is_priced",
    "load_tier_config",
]
