"""Tiers: a name (``fast``, ``standard``, ``smart``) -> a failover model.

Build once at start-up and keep::

    config = load_tier_config(path, os.environ)
    registry = ProviderRegistry(ProviderSettings.from_environ(os.environ),
                                providers=config.providers, prices=config.price_table())
    tiers = TierResolver(config, registry)
    model = tiers.resolve("standard")      # a FallbackModel, the same one every time

A candidate whose provider has no key configured is left out of the tier (so
the default tiers work with only one provider's key); when no candidate is
left, :class:`~executor.errors.MissingCredentials` names the first missing
variable. An unknown provider is always an error. A tier's first usable candidate
is built when the tier is resolved; the others (its backups) are
:class:`~executor.models.providers.DeferredModel` objects, built when failover first
reaches them, so a run that never fails over never imports their SDKs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from executor.errors import MissingCredentials, UnknownModel, UnknownTier
from executor.models.base import Model
from executor.models.config import ModelsConfig, TierConfig
from executor.models.fallback import Cooldowns, FallbackModel
from executor.models.providers import ProviderRegistry
from executor.ports import Clock, RealClock

__all__ = ["TierResolver"]


class TierResolver:
    def __init__(
        self,
        config: ModelsConfig,
        providers: ProviderRegistry,
        *,
        monotonic: Callable[[], float] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.providers = providers
        self.clock: Clock = clock if clock is not None else RealClock()
        # Why one for all tiers: a provider that is down is down for every tier.
        self.cooldowns = Cooldowns(config.cooldown_s, monotonic=monotonic or self.clock.monotonic)
        self._models: dict[str, FallbackModel] = {}

    @property
    def tiers(self) -> list[str]:
        return sorted(self.config.tiers)

    @property
    def default_tier(self) -> str:
        return self.config.default_tier

    def tier(self, tier: str | None = None) -> TierConfig:
        name = tier or self.config.default_tier
        try:
            return self.config.tiers[name]
        except KeyError:
            raise UnknownTier(name, self.tiers) from None

    def candidates(self, tier: str | None = None) -> list[str]:
        """The configured ``provider:model`` names of ``tier``, in order."""
        return list(self.tier(tier).candidates)

    def available(self, tier: str | None = None) -> list[str]:
        """The candidates that can be built (their provider has its key)."""
        out: list[str] = []
        for name in self.candidates(tier):
            try:
                self.providers.check(name)
            except MissingCredentials:
                continue
            out.append(name)
        return out

    def resolve(self, tier: str | None = None) -> Model:
        """The tier's :class:`FallbackModel` (``None``: the default tier). Cached."""
        cfg = self.tier(tier)
        model = self._models.get(cfg.name)
        if model is None:
            model = self._build(cfg)
            self._models[cfg.name] = model
        return model

    def preload(
        self, tiers: Iterable[str | None] | None = None, *, backups: bool = True
    ) -> list[str]:
        """Import the SDKs of ``tiers``' usable candidates (None: every tier's; a None
        in it: the default tier's) without building a model; ``backups=False``: only
        each tier's first usable one (the rest import if failover reaches them). Safe
        in a thread: it only imports. Returns the provider kinds imported."""
        wanted = self.tiers if tiers is None else list(tiers)
        names: list[str] = []
        for tier in wanted:
            try:
                candidates = self.candidates(tier)
            except UnknownTier:
                continue  # resolve() names it when the tier is used
            if not backups:
                # The one resolve() builds now; an unknown provider's name is skipped
                # here and reported by resolve().
                usable = [n for n in candidates if self._usable(n)]
                candidates = usable[:1]
            names += candidates
        return self.providers.preload(names)

    def _usable(self, name: str) -> bool:
        try:
            self.providers.check(name)
        except (MissingCredentials, UnknownModel):
            return False
        return True

    def estimate_micros(self, tier: str | None, input_tokens: int, output_tokens: int) -> int:
        """The most this tier's candidates could cost for these tokens (budget reservation)."""
        return self.providers.prices.estimate_micros(
            self.available(tier) or self.candidates(tier), input_tokens, output_tokens
        )

    def _build(self, cfg: TierConfig) -> FallbackModel:
        models: list[Model] = []
        missing: MissingCredentials | None = None
        for name in cfg.candidates:
            try:
                # The first usable candidate is built now (a tier that cannot answer
                # says so before any run); the others when failover first reaches them.
                build = self.providers.deferred if models else self.providers.model
                models.append(build(name))
            except MissingCredentials as exc:
                missing = missing or exc
        if not models:
            assert missing is not None
            raise missing
        return FallbackModel(
            models,
            timeout_s=cfg.timeout_s,
            first_token_s=cfg.first_token_s,
            idle_s=cfg.idle_s,
            cooldowns=self.cooldowns,
            clock=self.clock,
            name=f"tier:{cfg.name}",
        )
