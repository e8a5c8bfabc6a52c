"""coterie's agent executor: a bounded run loop over models with failover,
permissioned tools, compaction, structured output, a critic, lanes and fan-out.

The kernel imports no battery (no discord, SQL or scheduler). ``Executor()``
with no ports is a complete bounded in-memory agent::

    from executor import Executor, Invocation, Message, RunnableAgent
    from executor.testing import ScriptedModel

    result = await Executor().run(
        RunnableAgent(model=ScriptedModel(["hi"])), Invocation([Message.user("hello")])
    )

Names load on first use, so ``import executor`` stays cheap (the CLI's
``--help`` imports it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "AllModelsFailed": "executor.errors",
    "ApprovalDecision": "executor.ports",
    "ApprovalRequest": "executor.ports",
    "Approver": "executor.ports",
    "AuditSink": "executor.ports",
    "BudgetExceeded": "executor.errors",
    "BudgetGate": "executor.ports",
    "Bounds": "executor.agent",
    "Caller": "executor.agent",
    "Clock": "executor.ports",
    "CompactionHook": "executor.compaction",
    "ConfigError": "executor.errors",
    "CoterieError": "executor.errors",
    "Critic": "executor.ports",
    "CriticConfig": "executor.critic",
    "Delivery": "executor.ports",
    "DispatchGuard": "executor.guard",
    "Escalator": "executor.ports",
    "Executor": "executor.run",
    "FallbackModel": "executor.models.fallback",
    "ImagePart": "executor.messages",
    "InMemoryAuditSink": "executor.ports",
    "InMemoryBudgetLedger": "executor.budget",
    "Invocation": "executor.agent",
    "Lanes": "executor.lanes",
    "Message": "executor.messages",
    "Model": "executor.models.base",
    "ModelAPIError": "executor.errors",
    "ModelRequest": "executor.models.base",
    "ModelResponse": "executor.models.base",
    "Privilege": "executor.agent",
    "RunHook": "executor.hooks",
    "RunResult": "executor.agent",
    "RunStatus": "executor.agent",
    "RunnableAgent": "executor.agent",
    "TextPart": "executor.messages",
    "TierResolver": "executor.models.tiers",
    "Tool": "executor.tools.registry",
    "ToolCallPart": "executor.messages",
    "ToolContext": "executor.tools.registry",
    "ToolRegistry": "executor.tools.registry",
    "ToolResultPart": "executor.messages",
    "Usage": "executor.messages",
    "WatchdogCritic": "executor.critic",
    "fanout": "executor.fanout",
    "generate_structured": "executor.structured",
    "tool": "executor.tools.registry",
}

__all__ = [
    "AllModelsFailed",
    "ApprovalDecision",
    "ApprovalRequest",
    "Approver",
    "AuditSink",
    "Bounds",
    "BudgetExceeded",
    "BudgetGate",
    "Caller",
    "Clock",
    "CompactionHook",
    "ConfigError",
    "CoterieError",
    "Critic",
    "CriticConfig",
    "Delivery",
    "DispatchGuard",
    "Escalator",
    "Executor",
    "FallbackModel",
    "ImagePart",
    "InMemoryAuditSink",
    "InMemoryBudgetLedger",
    "Invocation",
    "Lanes",
    "Message",
    "Model",
    "ModelAPIError",
    "ModelRequest",
    "ModelResponse",
    "Privilege",
    "RunHook",
    "RunResult",
    "RunStatus",
    "RunnableAgent",
    "TextPart",
    "TierResolver",
    "Tool",
    "ToolCallPart",
    "ToolContext",
    "ToolRegistry",
    "ToolResultPart",
    "Usage",
    "WatchdogCritic",
    "fanout",
    "generate_structured",
    "tool",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'executor' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from executor.agent import (
        Bounds,
        Caller,
        Invocation,
        Privilege,
        RunnableAgent,
        RunResult,
        RunStatus,
    )
    from executor.budget import InMemoryBudgetLedger
    from executor.compaction import CompactionHook
    from executor.critic import CriticConfig, WatchdogCritic
    from executor.errors import (
        AllModelsFailed,
        BudgetExceeded,
        ConfigError,
        CoterieError,
        ModelAPIError,
    )
    from executor.fanout import fanout
    from executor.guard import DispatchGuard
    from executor.hooks import RunHook
    from executor.lanes import Lanes
    from executor.messages import ImagePart, Message, TextPart, ToolCallPart, ToolResultPart, Usage
    from executor.models.base import Model, ModelRequest, ModelResponse
    from executor.models.fallback import FallbackModel
    from executor.models.tiers import TierResolver
    from executor.ports import (
        ApprovalDecision,
        ApprovalRequest,
        Approver,
        AuditSink,
        BudgetGate,
        Clock,
        Critic,
        Delivery,
        Escalator,
        InMemoryAuditSink,
    )
    from executor.run import Executor
    from executor.structured import generate_structured
    from executor.tools.registry import Tool, ToolContext, ToolRegistry, tool
