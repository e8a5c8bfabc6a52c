"""Checks made before coterie takes work (``run``, ``ask``, ``chat``) and by ``doctor``.

* every name in ``COTERIE_ENABLED_TOOLS`` is a tool (a typo would leave the model
  with no tools, silently);
* the default tier has a candidate whose provider is configured (otherwise every
  member would read "no API key for anthropic" in Discord); another tier without
  one is a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from executor.errors import ConfigError

if TYPE_CHECKING:
    from bot.app import App

__all__ = ["TierCheck", "check_app", "check_tools", "tier_checks"]

log = logging.getLogger("coterie")


def check_tools(enabled: list[str] | None, known: list[str]) -> None:
    """Raise ConfigError naming any enabled tool that does not exist."""
    if enabled is None:
        return
    unknown = [name for name in enabled if name not in known]
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        raise ConfigError(
            f"COTERIE_ENABLED_TOOLS names {names}, which "
            f"{'is not a tool' if len(unknown) == 1 else 'are not tools'}; "
            f"the tools are: {', '.join(sorted(known))} (unset it to enable them all)"
        )


@dataclass(slots=True)
class TierCheck:
    tier: str
    candidates: list[str]
    usable: list[str]
    missing: dict[str, str] = field(default_factory=dict)  # candidate -> variable to set
    unknown: list[str] = field(default_factory=list)  # candidates of no known provider

    @property
    def ok(self) -> bool:
        return bool(self.usable)

    def hint(self) -> str:
        wanted = sorted(set(self.missing.values()))
        if wanted:
            return (
                f"set {' or '.join(wanted)}, or point the tier at a local server "
                f"(COTERIE_TIER_{self.tier.upper()}=ollama:llama3.2)"
            )
        return f"give the tier a candidate (COTERIE_TIER_{self.tier.upper()}=provider:model)"


def tier_checks(resolver: Any) -> list[TierCheck] | None:
    """Each tier's usable candidates, without building a model (no SDK import).
    None when the resolver is not coterie's tier resolver (a test's, a demo's)."""
    from executor.errors import MissingCredentials, UnknownModel
    from executor.models.tiers import TierResolver

    if not isinstance(resolver, TierResolver):
        return None
    out: list[TierCheck] = []
    for tier in resolver.tiers:
        candidates = resolver.candidates(tier)
        check = TierCheck(tier=tier, candidates=candidates, usable=[])
        for name in candidates:
            try:
                resolver.providers.check(name)
            except MissingCredentials as exc:
                check.missing[name] = exc.variable
                continue
            except UnknownModel:
                check.unknown.append(name)
                continue
            check.usable.append(name)
        out.append(check)
    return out


def check_app(app: App) -> None:
    """Before taking work: the tools exist, and the default tier can answer."""
    check_tools(app.settings.enabled_tools, list(app.tools.names))
    checks = tier_checks(app.resolver)
    if checks is None:
        return
    default = getattr(app.resolver, "default_tier", app.settings.default_tier)
    for check in checks:
        if check.ok:
            continue
        if check.tier == default:
            tried = ", ".join(check.candidates) or "none"
            raise ConfigError(
                f"no model can answer: the default tier {check.tier!r} has no usable "
                f"candidate ({tried}); {check.hint()}"
            )
        log.warning("tier %s has no usable candidate: %s", check.tier, check.hint())
