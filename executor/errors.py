"""The kernel's exceptions.

::

    CoterieError
    ├── ConfigError                 an operator's mistake: fix the config and restart
    │   ├── UnknownTier
    │   ├── UnknownModel
    │   └── MissingCredentials
    ├── ModelAPIError               a provider failed (translated at the provider file)
    │   ├── RateLimited             retriable; carries retry_after
    │   ├── Overloaded              retriable (also Anthropic's mid-stream overloaded_error)
    │   ├── ServerError             retriable (5xx)
    │   ├── ProviderTimeout         retriable (our deadline or the SDK's)
    │   ├── ProviderConnectionError retriable (refused, reset, dropped stream)
    │   ├── MalformedResponse       retriable (a 200 the SDK could not read: bad JSON, broken SSE)
    │   ├── AuthenticationFailed    retriable for failover: the next provider has its own key
    │   ├── BadRequest              never retried: the same request fails everywhere
    │   │   └── ContextTooLong      compaction may retry once
    │   └── AllModelsFailed         every candidate of a tier failed; carries the attempts
    ├── HostBusy                    a host resource (the database) is busy: transient, try again
    ├── RunRefused                  a run that never started: nothing was spent
    │   ├── BudgetExceeded
    │   └── DispatchRefused         depth, width or repetition cap of the guard
    ├── ToolFailed                  raised by a tool: this message reaches the model as its error
    │   └── ToolRetry               the same, asking the model to correct its call
    ├── ApprovalDenied              control flow: a tool needing approval was denied
    └── StructuredOutputError       the model never produced valid structured output
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pydantic

from executor.messages import Usage

__all__ = [
    "AllModelsFailed",
    "ApprovalDenied",
    "AuthenticationFailed",
    "BadRequest",
    "BudgetDetails",
    "BudgetExceeded",
    "ConfigError",
    "ContextTooLong",
    "CoterieError",
    "DispatchRefused",
    "HostBusy",
    "MalformedResponse",
    "MissingCredentials",
    "ModelAPIError",
    "Overloaded",
    "ProviderConnectionError",
    "ProviderTimeout",
    "RateLimited",
    "RunRefused",
    "ServerError",
    "StructuredOutputError",
    "ToolFailed",
    "ToolRetry",
    "UnknownModel",
    "UnknownTier",
]


class CoterieError(Exception):
    """Base of every error coterie raises on purpose."""


# --- operator mistakes -------------------------------------------------------


class ConfigError(CoterieError):
    """A configuration mistake. The message says what to change."""


class UnknownTier(ConfigError):
    def __init__(self, tier: str, known: list[str]) -> None:
        self.tier = tier
        self.known = known
        super().__init__(
            f"unknown tier {tier!r}; known tiers: {', '.join(sorted(known)) or '(none)'}"
        )


class UnknownModel(ConfigError):
    def __init__(self, model: str, known: list[str]) -> None:
        self.model = model
        self.known = known
        super().__init__(
            f"unknown model {model!r}; use provider:model with a provider among: "
            f"{', '.join(sorted(known)) or '(none)'}"
        )


class MissingCredentials(ConfigError):
    def __init__(self, provider: str, variable: str) -> None:
        self.provider = provider
        self.variable = variable
        super().__init__(f"no API key for {provider}: set {variable}")


# --- provider failures ---------------------------------------------------------


class ModelAPIError(CoterieError):
    """A provider request failed. ``retriable`` says whether failover may move on.

    ``usage``: what the provider reported the failed request had cost before it failed
    (a stream that broke after its usage arrived; None: nothing reported). It was
    billed all the same, so the run is charged it.
    """

    retriable: bool = True
    usage: Usage | None = None

    def __init__(
        self, message: str, *, model: str | None = None, status: int | None = None
    ) -> None:
        self.model = model
        self.status = status
        super().__init__(message)

    @property
    def kind(self) -> str:
        """A short stable name for audit rows and user-facing notes."""
        name = type(self).__name__
        return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


class RateLimited(ModelAPIError):
    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        status: int | None = 429,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, model=model, status=status)
        self.retry_after = retry_after


class Overloaded(ModelAPIError):
    pass


class ServerError(ModelAPIError):
    pass


class ProviderTimeout(ModelAPIError):
    pass


class ProviderConnectionError(ModelAPIError):
    pass


class MalformedResponse(ModelAPIError):
    """An HTTP 200 we could not read: invalid or truncated JSON, a broken SSE event,
    a body without the fields the API documents.

    The provider failed, not the request: the next candidate may answer. The
    message says what was wrong, never quotes the body (it may echo the request).
    """

    @classmethod
    def because(cls, model: str, cause: BaseException | str) -> MalformedResponse:
        """The error for ``model``'s unreadable response; ``cause`` is what broke reading it."""
        if isinstance(cause, str):
            why = cause
        elif isinstance(cause, json.JSONDecodeError):
            # Why not str(cause): the position is enough; the document is the body.
            why = f"invalid JSON ({cause.msg} at char {cause.pos})"
        elif isinstance(cause, pydantic.ValidationError):
            fields = sorted({".".join(str(p) for p in e["loc"]) for e in cause.errors()})
            why = f"invalid field(s): {', '.join(fields)}"
        else:
            # Why only the type: a ValueError's text may quote a value from the body.
            why = f"a missing field or one of the wrong type ({type(cause).__name__})"
        return cls(f"{model}: the provider's response could not be read: {why}", model=model)


class AuthenticationFailed(ModelAPIError):
    # Why retriable: a bad key is one provider's problem; the next candidate has its own.
    retriable = True


class BadRequest(ModelAPIError):
    retriable = False


class ContextTooLong(BadRequest):
    pass


class AllModelsFailed(ModelAPIError):
    def __init__(self, attempts: list[Any], *, tier: str | None = None) -> None:
        self.attempts = attempts
        self.tier = tier
        tried = (
            ", ".join(f"{a.model} ({a.error})" for a in attempts) or "no candidate was available"
        )
        super().__init__(f"every model failed: {tried}")
        # Why: failover falls through a bad request immediately; keep that visible.
        self.retriable = False


# --- the host is busy -----------------------------------------------------------


class HostBusy(CoterieError):
    """A host's resource could not serve this now (the database's write lock held past
    its timeout, no connection free): transient, not a mistake to fix. Members are told
    to try again in a moment, with a reference; the detail goes to the log."""


# --- runs that never started ---------------------------------------------------


class RunRefused(CoterieError):
    """The run was refused before any model call; nothing was spent."""


@dataclass
class BudgetDetails:
    spent_micros: int
    reserved_micros: int
    estimate_micros: int
    limit_micros: int
    frees_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class BudgetExceeded(RunRefused):
    def __init__(self, details: BudgetDetails) -> None:
        # Why here: executor.budget imports this module; one money formatter for all.
        from executor.budget import format_usd

        self.details = details
        d = details
        when = f"; enough frees up at {d.frees_at:%Y-%m-%d %H:%M} UTC" if d.frees_at else ""
        super().__init__(
            f"budget exceeded: spent {format_usd(d.spent_micros)} + reserved "
            f"{format_usd(d.reserved_micros)} + this run ~{format_usd(d.estimate_micros)} "
            f"would pass the 7-day limit {format_usd(d.limit_micros, 2)}{when}"
        )


class DispatchRefused(RunRefused):
    pass


# --- control flow inside a run ----------------------------------------------------


class ToolFailed(CoterieError):
    """Raised by a tool: its message goes back to the model as the tool's error.

    The opt-in way to show a model a failure (pydantic-ai's ``ModelRetry``): any
    other exception a tool raises is logged, and the model is told only that the
    tool failed, since its text may hold paths, addresses or secrets.
    """


class ToolRetry(ToolFailed):
    """A :class:`ToolFailed` that asks the model to correct its call and try again."""


class ApprovalDenied(CoterieError):
    pass


class StructuredOutputError(CoterieError):
    def __init__(self, message: str, *, attempts: int, last_error: str | None = None) -> None:
        self.attempts = attempts
        self.last_error = last_error
        super().__init__(message)
