"""coterie's agent executor: a bounded run loop over models with failover,
permissioned tools, compaction, structured output, a critic, lanes and fan-out.

The kernel imports no battery (no discord, SQL or scheduler). ``Executor()``
with no ports is a complete bounded in-memory agent::

    from executor import Executor, Invocation, Message, RunnableAgent
    from executor.testing import ScriptedModel

    result = await Executor().run(
        RunnableAgent(model=ScriptedModel(["hi"])), Invocation([Message.user("hello")])
    )

Every name a host needs is here; the test doubles live in :mod:`executor.testing`.
Names load on first use, so ``import executor`` stays cheap (the CLI's
``--help`` imports it). No public name is also a submodule's name: a submodule
imported later would otherwise replace it on the package (``fan_out`` is the
function, ``executor.fanout`` its module).
"""

import importlib as _importlib
import typing as _typing

# name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "DEFAULT_TIERS": "executor.models.config",
    "AllModelsFailed": "executor.errors",
    "AllowlistGuard": "executor.tools.netguard",
    "ApprovalDecision": "executor.ports",
    "ApprovalDenied": "executor.errors",
    "ApprovalEvent": "executor.events",
    "ApprovalRequest": "executor.ports",
    "Approver": "executor.ports",
    "Attempt": "executor.models.base",
    "AuditSink": "executor.ports",
    "AuthenticationFailed": "executor.errors",
    "BadRequest": "executor.errors",
    "Bounds": "executor.agent",
    "BudgetDetails": "executor.errors",
    "BudgetExceeded": "executor.errors",
    "BudgetGate": "executor.ports",
    "BudgetStatus": "executor.budget",
    "Caller": "executor.agent",
    "Checkpoint": "executor.ports",
    "Checkpoints": "executor.ports",
    "CitationCheck": "executor.tools.citations",
    "Clock": "executor.ports",
    "CompactionEvent": "executor.events",
    "CompactionHook": "executor.compaction",
    "Compactor": "executor.compaction",
    "ConfigError": "executor.errors",
    "ContextTooLong": "executor.errors",
    "CoterieError": "executor.errors",
    "Critic": "executor.ports",
    "CriticConfig": "executor.critic",
    "CriticVerdictEvent": "executor.events",
    "CriticWatch": "executor.ports",
    "Delivery": "executor.ports",
    "DeliveryReport": "executor.agent",
    "DenyAllApprover": "executor.ports",
    "DispatchGuard": "executor.guard",
    "DispatchRefused": "executor.errors",
    "HostBusy": "executor.errors",
    "Escalation": "executor.ports",
    "Escalator": "executor.ports",
    "Executor": "executor.run",
    "FallbackModel": "executor.models.fallback",
    "FunctionSource": "executor.tools.sources",
    "FanoutResult": "executor.fanout",
    "ImagePart": "executor.messages",
    "InMemoryAuditSink": "executor.ports",
    "InMemoryCheckpoints": "executor.ports",
    "InMemoryBudgetLedger": "executor.budget",
    "Invocation": "executor.agent",
    "Lanes": "executor.lanes",
    "MalformedResponse": "executor.errors",
    "Message": "executor.messages",
    "MissingCredentials": "executor.errors",
    "Model": "executor.models.base",
    "ModelAPIError": "executor.errors",
    "ModelAttemptEvent": "executor.events",
    "ModelProfile": "executor.models.base",
    "ModelRequest": "executor.models.base",
    "ModelRequestEvent": "executor.events",
    "ModelResolver": "executor.run",
    "ModelResponse": "executor.models.base",
    "ModelsConfig": "executor.models.config",
    "NullDelivery": "executor.ports",
    "NullEscalator": "executor.ports",
    "Observer": "executor.ports",
    "Overloaded": "executor.errors",
    "PriceTable": "executor.models.pricing",
    "Privilege": "executor.agent",
    "ProviderConnectionError": "executor.errors",
    "ProviderRegistry": "executor.models.providers",
    "ProviderSettings": "executor.models.providers",
    "ProviderSpec": "executor.models.providers",
    "ProviderTimeout": "executor.errors",
    "RateLimited": "executor.errors",
    "RealClock": "executor.ports",
    "Reservation": "executor.ports",
    "RunControl": "executor.ports",
    "RunDelivered": "executor.events",
    "RunEvent": "executor.events",
    "RunFinished": "executor.events",
    "RunHook": "executor.hooks",
    "RunRefused": "executor.errors",
    "RunResult": "executor.agent",
    "RunStarted": "executor.events",
    "RunState": "executor.hooks",
    "RunStatus": "executor.agent",
    "RunnableAgent": "executor.agent",
    "SSRFGuard": "executor.tools.ssrf",
    "ServerError": "executor.errors",
    "SourcesEvent": "executor.events",
    "StepFinished": "executor.events",
    "StructuredOutputError": "executor.errors",
    "StructuredResult": "executor.structured",
    "TextDeltaEvent": "executor.events",
    "TextPart": "executor.messages",
    "TierConfig": "executor.models.config",
    "TierResolver": "executor.models.tiers",
    "TokenEstimator": "executor.compaction",
    "Tool": "executor.tools.registry",
    "ToolCallFinished": "executor.events",
    "ToolCallPart": "executor.messages",
    "ToolCallStarted": "executor.events",
    "ToolChargeEvent": "executor.events",
    "ToolContext": "executor.tools.registry",
    "ToolFailed": "executor.errors",
    "ToolOutcome": "executor.tools.registry",
    "ToolRegistry": "executor.tools.registry",
    "ToolResultPart": "executor.messages",
    "ToolRetry": "executor.errors",
    "ToolSource": "executor.tools.sources",
    "UnknownModel": "executor.errors",
    "UnknownTier": "executor.errors",
    "UnlimitedBudget": "executor.ports",
    "Usage": "executor.messages",
    "WatchdogCritic": "executor.critic",
    "WebFetcher": "executor.tools.builtin",
    "child_invocation": "executor.guard",
    "default_registry": "executor.tools.builtin",
    "dollars_to_micros": "executor.budget",
    "estimate_tokens": "executor.tokens",
    "excerpt": "executor.redaction",
    "fan_out": "executor.fanout",
    "format_usd": "executor.budget",
    "frees_at": "executor.budget",
    "generate_structured": "executor.structured",
    "generate_structured_result": "executor.structured",
    "load_tier_config": "executor.models.config",
    "outcome_note": "executor.run",
    "profile_of": "executor.models.base",
    "redact": "executor.redaction",
    "schema_tool": "executor.tools.sources",
    "search_providers": "executor.tools.search",
    "tool": "executor.tools.registry",
    "utcnow": "executor.ports",
    "web_search_tool": "executor.tools.search",
}

__all__ = [
    "DEFAULT_TIERS",
    "AllModelsFailed",
    "AllowlistGuard",
    "ApprovalDecision",
    "ApprovalDenied",
    "ApprovalEvent",
    "ApprovalRequest",
    "Approver",
    "Attempt",
    "AuditSink",
    "AuthenticationFailed",
    "BadRequest",
    "Bounds",
    "BudgetDetails",
    "BudgetExceeded",
    "BudgetGate",
    "BudgetStatus",
    "Caller",
    "Checkpoint",
    "Checkpoints",
    "CitationCheck",
    "Clock",
    "CompactionEvent",
    "CompactionHook",
    "Compactor",
    "ConfigError",
    "ContextTooLong",
    "CoterieError",
    "Critic",
    "CriticConfig",
    "CriticVerdictEvent",
    "CriticWatch",
    "Delivery",
    "DeliveryReport",
    "DenyAllApprover",
    "DispatchGuard",
    "DispatchRefused",
    "Escalation",
    "Escalator",
    "Executor",
    "FallbackModel",
    "FanoutResult",
    "FunctionSource",
    "HostBusy",
    "ImagePart",
    "InMemoryAuditSink",
    "InMemoryBudgetLedger",
    "InMemoryCheckpoints",
    "Invocation",
    "Lanes",
    "MalformedResponse",
    "Message",
    "MissingCredentials",
    "Model",
    "ModelAPIError",
    "ModelAttemptEvent",
    "ModelProfile",
    "ModelRequest",
    "ModelRequestEvent",
    "ModelResolver",
    "ModelResponse",
    "ModelsConfig",
    "NullDelivery",
    "NullEscalator",
    "Observer",
    "Overloaded",
    "PriceTable",
    "Privilege",
    "ProviderConnectionError",
    "ProviderRegistry",
    "ProviderSettings",
    "ProviderSpec",
    "ProviderTimeout",
    "RateLimited",
    "RealClock",
    "Reservation",
    "RunControl",
    "RunDelivered",
    "RunEvent",
    "RunFinished",
    "RunHook",
    "RunRefused",
    "RunResult",
    "RunStarted",
    "RunState",
    "RunStatus",
    "RunnableAgent",
    "SSRFGuard",
    "ServerError",
    "SourcesEvent",
    "StepFinished",
    "StructuredOutputError",
    "StructuredResult",
    "TextDeltaEvent",
    "TextPart",
    "TierConfig",
    "TierResolver",
    "TokenEstimator",
    "Tool",
    "ToolCallFinished",
    "ToolCallPart",
    "ToolCallStarted",
    "ToolChargeEvent",
    "ToolContext",
    "ToolFailed",
    "ToolOutcome",
    "ToolRegistry",
    "ToolResultPart",
    "ToolRetry",
    "ToolSource",
    "UnknownModel",
    "UnknownTier",
    "UnlimitedBudget",
    "Usage",
    "WatchdogCritic",
    "WebFetcher",
    "child_invocation",
    "default_registry",
    "dollars_to_micros",
    "estimate_tokens",
    "excerpt",
    "fan_out",
    "format_usd",
    "frees_at",
    "generate_structured",
    "generate_structured_result",
    "load_tier_config",
    "outcome_note",
    "profile_of",
    "redact",
    "schema_tool",
    "search_providers",
    "tool",
    "utcnow",
    "web_search_tool",
]


def __getattr__(name: str) -> _typing.Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'executor' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if _typing.TYPE_CHECKING:
    from executor.agent import (
        Bounds,
        Caller,
        DeliveryReport,
        Invocation,
        Privilege,
        RunnableAgent,
        RunResult,
        RunStatus,
    )
    from executor.budget import (
        BudgetStatus,
        InMemoryBudgetLedger,
        dollars_to_micros,
        format_usd,
        frees_at,
    )
    from executor.compaction import (
        CompactionHook,
        Compactor,
        TokenEstimator,
    )
    from executor.critic import (
        CriticConfig,
        WatchdogCritic,
    )
    from executor.errors import (
        AllModelsFailed,
        ApprovalDenied,
        AuthenticationFailed,
        BadRequest,
        BudgetDetails,
        BudgetExceeded,
        ConfigError,
        ContextTooLong,
        CoterieError,
        DispatchRefused,
        HostBusy,
        MalformedResponse,
        MissingCredentials,
        ModelAPIError,
        Overloaded,
        ProviderConnectionError,
        ProviderTimeout,
        RateLimited,
        RunRefused,
        ServerError,
        StructuredOutputError,
        ToolFailed,
        ToolRetry,
        UnknownModel,
        UnknownTier,
    )
    from executor.events import (
        ApprovalEvent,
        CompactionEvent,
        CriticVerdictEvent,
        ModelAttemptEvent,
        ModelRequestEvent,
        RunDelivered,
        RunEvent,
        RunFinished,
        RunStarted,
        SourcesEvent,
        StepFinished,
        TextDeltaEvent,
        ToolCallFinished,
        ToolCallStarted,
        ToolChargeEvent,
    )
    from executor.fanout import (
        FanoutResult,
        fan_out,
    )
    from executor.guard import (
        DispatchGuard,
        child_invocation,
    )
    from executor.hooks import (
        RunHook,
        RunState,
    )
    from executor.lanes import (
        Lanes,
    )
    from executor.messages import (
        ImagePart,
        Message,
        TextPart,
        ToolCallPart,
        ToolResultPart,
        Usage,
    )
    from executor.models.base import (
        Attempt,
        Model,
        ModelProfile,
        ModelRequest,
        ModelResponse,
        profile_of,
    )
    from executor.models.config import (
        DEFAULT_TIERS,
        ModelsConfig,
        TierConfig,
        load_tier_config,
    )
    from executor.models.fallback import (
        FallbackModel,
    )
    from executor.models.pricing import (
        PriceTable,
    )
    from executor.models.providers import (
        ProviderRegistry,
        ProviderSettings,
        ProviderSpec,
    )
    from executor.models.tiers import (
        TierResolver,
    )
    from executor.ports import (
        ApprovalDecision,
        ApprovalRequest,
        Approver,
        AuditSink,
        BudgetGate,
        Checkpoint,
        Checkpoints,
        Clock,
        Critic,
        CriticWatch,
        Delivery,
        DenyAllApprover,
        Escalation,
        Escalator,
        InMemoryAuditSink,
        InMemoryCheckpoints,
        NullDelivery,
        NullEscalator,
        Observer,
        RealClock,
        Reservation,
        RunControl,
        UnlimitedBudget,
        utcnow,
    )
    from executor.redaction import (
        excerpt,
        redact,
    )
    from executor.run import (
        Executor,
        ModelResolver,
        outcome_note,
    )
    from executor.structured import (
        StructuredResult,
        generate_structured,
        generate_structured_result,
    )
    from executor.tokens import (
        estimate_tokens,
    )
    from executor.tools.builtin import (
        WebFetcher,
        default_registry,
    )
    from executor.tools.citations import (
        CitationCheck,
    )
    from executor.tools.netguard import (
        AllowlistGuard,
    )
    from executor.tools.registry import (
        Tool,
        ToolContext,
        ToolOutcome,
        ToolRegistry,
        tool,
    )
    from executor.tools.search import (
        search_providers,
        web_search_tool,
    )
    from executor.tools.sources import (
        FunctionSource,
        ToolSource,
        schema_tool,
    )
    from executor.tools.ssrf import (
        SSRFGuard,
    )
