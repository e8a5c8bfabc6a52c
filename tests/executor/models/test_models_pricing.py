from __future__ import annotations

from executor.messages import Usage
from executor.models.pricing import Price, PriceTable, cost_micros, estimate_micros, is_priced


def test_cost_in_integer_micros_rounded_up() -> None:
    u = Usage(
        input_tokens=1_000_000,
        output_tokens=1_000_000,
        cache_read_tokens=1_000_000,
        cache_write_tokens=1_000_000,
    )
    # sonnet 4.6: $3 in, $15 out, $0.30 read, $3.75 write
    assert (
        cost_micros("anthropic:claude-sonnet-4-6", u)
        == 3_000_000 + 15_000_000 + 300_000 + 3_750_000
    )
    assert (
        cost_micros("anthropic:claude-haiku-4-5", Usage(cache_read_tokens=1)) == 1
    )  # 0.1 micros, rounded up
    assert isinstance(cost_micros("openai:gpt-5", Usage(input_tokens=3)), int)


def test_unknown_models_cost_nothing_and_say_so() -> None:
    assert not is_priced("ollama:llama3.2")
    assert cost_micros("ollama:llama3.2", Usage(input_tokens=10**6)) == 0
    assert is_priced("openai:gpt-5-mini")


def test_estimate_is_the_max_over_candidates() -> None:
    names = ["anthropic:claude-haiku-4-5", "anthropic:claude-opus-4-8", "ollama:x"]
    # opus: $5 in, $25 out
    assert estimate_micros(names, 1000, 100) == 5000 + 2500
    assert estimate_micros([], 1000, 100) == 0


def test_overrides_win() -> None:
    table = PriceTable(
        {"anthropic:claude-haiku-4-5": Price.of(2, 10), "ollama:x": Price.of("0.1", 0)}
    )
    assert table.cost_micros("anthropic:claude-haiku-4-5", Usage(input_tokens=10)) == 20
    assert table.is_priced("ollama:x")
