"""What a model costs, in integer micro-dollars.

Prices are US dollars per million tokens, which is the same number as
micro-dollars per token: ``$3 / MTok`` costs 3 micro-dollars a token. They are
kept as :class:`~decimal.Decimal` so that ``$0.30 / MTok`` stays exact, and a
cost is rounded *up* to a whole micro-dollar (a budget should never be
under-counted).

:class:`~executor.messages.Usage` counts are disjoint, the way Anthropic
reports them: ``input_tokens`` are the uncached input tokens,
``cache_read_tokens`` and ``cache_write_tokens`` the cached ones. The OpenAI
adapter subtracts its ``cached_tokens`` from ``prompt_tokens`` to match.

Models are keyed by their full ``provider:model`` name. An unknown model costs
0 and :meth:`PriceTable.is_priced` says so, so callers can show "cost unknown"
rather than a confident $0.00 (a local Ollama model really is free).
The table below holds list prices as of mid-2026; override or add entries
under ``[prices."provider:model"]`` in the tier config file.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from executor.messages import Usage

__all__ = [
    "DEFAULT_PRICES",
    "Price",
    "PriceTable",
    "cost_micros",
    "estimate_micros",
    "is_priced",
]


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens (= micro-dollars per token); ``per_call`` is US
    dollars per call, for what is priced by the request (a keyed web search)."""

    input: Decimal
    output: Decimal
    cache_read: Decimal = Decimal(0)
    cache_write: Decimal = Decimal(0)
    per_call: Decimal = Decimal(0)

    @classmethod
    def of(
        cls,
        input: float | str | Decimal,
        output: float | str | Decimal,
        cache_read: float | str | Decimal = 0,
        cache_write: float | str | Decimal = 0,
        per_call: float | str | Decimal = 0,
    ) -> Price:
        """Build from numbers; floats go through ``str`` so 0.3 stays 0.3."""

        def d(v: float | str | Decimal) -> Decimal:
            return v if isinstance(v, Decimal) else Decimal(str(v))

        return cls(d(input), d(output), d(cache_read), d(cache_write), d(per_call))


def _anthropic(input: str, output: str) -> Price:
    # Anthropic: 5-minute cache writes cost 1.25x input, cache hits 0.1x.
    i = Decimal(input)
    return Price(i, Decimal(output), cache_read=i / 10, cache_write=i * Decimal("1.25"))


def _openai(input: str, output: str, cached: str) -> Price:
    # OpenAI: caching is automatic, writes are not billed extra.
    return Price(Decimal(input), Decimal(output), cache_read=Decimal(cached))


DEFAULT_PRICES: Mapping[str, Price] = {
    "anthropic:claude-opus-4-8": _anthropic("5", "25"),
    "anthropic:claude-opus-4-7": _anthropic("5", "25"),
    "anthropic:claude-opus-4-6": _anthropic("5", "25"),
    "anthropic:claude-opus-4-5": _anthropic("5", "25"),
    "anthropic:claude-opus-4-5-20251101": _anthropic("5", "25"),
    "anthropic:claude-sonnet-4-6": _anthropic("3", "15"),
    "anthropic:claude-sonnet-4-5": _anthropic("3", "15"),
    "anthropic:claude-sonnet-4-5-20250929": _anthropic("3", "15"),
    "anthropic:claude-haiku-4-5": _anthropic("1", "5"),
    "anthropic:claude-haiku-4-5-20251001": _anthropic("1", "5"),
    "openai:gpt-5.5": _openai("5", "30", "0.5"),
    "openai:gpt-5.4": _openai("2.5", "15", "0.25"),
    "openai:gpt-5": _openai("1.25", "10", "0.125"),
    "openai:gpt-5-mini": _openai("0.25", "2", "0.025"),
    "openai:gpt-5-nano": _openai("0.05", "0.4", "0.005"),
    "openai:gpt-4.1": _openai("2", "8", "0.5"),
    "openai:gpt-4.1-mini": _openai("0.4", "1.6", "0.1"),
    "openai:gpt-4o": _openai("2.5", "10", "1.25"),
    "openai:gpt-4o-mini": _openai("0.15", "0.6", "0.075"),
    # Web search by the query (executor.tools.search): Brave's "AI" plans, $5 per 1,000;
    # Tavily's pay-as-you-go credit, one per basic search.
    "search:brave": Price(Decimal(0), Decimal(0), per_call=Decimal("0.005")),
    "search:tavily": Price(Decimal(0), Decimal(0), per_call=Decimal("0.008")),
}


class PriceTable:
    """Prices by ``provider:model``: the defaults, with ``overrides`` on top."""

    def __init__(
        self,
        overrides: Mapping[str, Price] | None = None,
        *,
        base: Mapping[str, Price] = DEFAULT_PRICES,
    ) -> None:
        self._prices: dict[str, Price] = {**base, **(overrides or {})}

    def price(self, model_name: str) -> Price | None:
        return self._prices.get(model_name)

    def is_priced(self, model_name: str) -> bool:
        return model_name in self._prices

    def cost_micros(self, model_name: str, usage: Usage) -> int:
        """The cost of ``usage`` on ``model_name``, rounded up; 0 if not priced."""
        p = self._prices.get(model_name)
        if p is None:
            return 0
        total = (
            usage.input_tokens * p.input
            + usage.output_tokens * p.output
            + usage.cache_read_tokens * p.cache_read
            + usage.cache_write_tokens * p.cache_write
        )
        return math.ceil(total)

    def call_micros(self, name: str) -> int:
        """The price of one call of ``name`` (``search:brave``), rounded up; 0 if unknown."""
        p = self._prices.get(name)
        return math.ceil(p.per_call * 1_000_000) if p is not None else 0

    def estimate_micros(
        self, model_names: Iterable[str], input_tokens: int, output_tokens: int
    ) -> int:
        """The most any of ``model_names`` would cost: what to reserve before a run."""
        usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
        return max((self.cost_micros(m, usage) for m in model_names), default=0)


_DEFAULT_TABLE = PriceTable()


def cost_micros(model_name: str, usage: Usage, table: PriceTable | None = None) -> int:
    return (table or _DEFAULT_TABLE).cost_micros(model_name, usage)


def is_priced(model_name: str, table: PriceTable | None = None) -> bool:
    return (table or _DEFAULT_TABLE).is_priced(model_name)


def estimate_micros(
    model_names: Iterable[str],
    input_tokens: int,
    output_tokens: int,
    table: PriceTable | None = None,
) -> int:
    return (table or _DEFAULT_TABLE).estimate_micros(model_names, input_tokens, output_tokens)
