"""Profiles of the models coterie knows, by provider kind and model id.

Each provider file asks here for its models' profiles (:class:`ModelProfile`):
this module imports no SDK, so the tables can be read and tested without one.
A model nobody listed gets its kind's conservative defaults: a window a little
small only compacts early; a model wrongly said to see images gets pictures it
cannot read.

==================  ==============  =================  ==========================
kind / provider     window          structured output  images
==================  ==============  =================  ==========================
anthropic (any)     200,000         tool               yes
openai (known ids)  the table       json_schema        the table (most do)
openai (unknown)    128,000         json_schema        yes
ollama              8,192           json_schema        known vision models only
openrouter          by its vendor   by its vendor      by its vendor
other compatible    32,000          prompted           no
==================  ==============  =================  ==========================

Ollama's window is its ``num_ctx``, which defaults far below what the model
could take; 8,192 is what a deployment that raised it a little gets.

OpenAI's reasoning models (``gpt-5*`` but its ``-chat`` variants, ``o1``, ``o3``,
``o4``, also through OpenRouter) send nothing over Chat Completions while they
think, which can last a minute: they are ``silent_while_thinking``, and failover
waits for their first token until the attempt deadline.
"""

from __future__ import annotations

from collections.abc import Mapping

from executor.models.base import ModelProfile

__all__ = [
    "ANTHROPIC_WINDOW",
    "LOCAL_VISION_MODELS",
    "OPENAI_MODELS",
    "OPENAI_SILENT_THINKERS",
    "anthropic_profile",
    "openai_compatible_profile",
]

ANTHROPIC_WINDOW = 200_000

# model id prefix -> (context window, sees images). Longest prefix wins.
OPENAI_MODELS: Mapping[str, tuple[int, bool]] = {
    "gpt-3.5": (16_385, False),
    "gpt-4": (8_192, False),
    "gpt-4-turbo": (128_000, True),
    "gpt-4.1": (1_000_000, True),
    "gpt-4o": (128_000, True),
    "gpt-5": (400_000, True),
    "o1": (200_000, True),
    "o1-mini": (128_000, False),
    "o3": (200_000, True),
    "o3-mini": (200_000, False),
    "o4": (200_000, True),
}
_OPENAI_DEFAULT = (128_000, True)

# Model id prefixes of OpenAI's reasoning models ("-chat" variants excepted).
OPENAI_SILENT_THINKERS: tuple[str, ...] = ("gpt-5", "o1", "o3", "o4")

# Local model families that take images (Ollama names; a tag follows a colon).
LOCAL_VISION_MODELS: frozenset[str] = frozenset(
    {
        "bakllava",
        "gemma3",
        "granite3.2-vision",
        "llama3.2-vision",
        "llama4",
        "llava",
        "llava-llama3",
        "llava-phi3",
        "minicpm-v",
        "mistral-small3.1",
        "moondream",
        "qwen2.5vl",
        "qwen3-vl",
    }
)
OLLAMA_WINDOW = 8_192
COMPATIBLE_WINDOW = 32_000


def _longest_prefix(model_id: str, table: Mapping[str, tuple[int, bool]]) -> tuple[int, bool]:
    best = ""
    for prefix in table:
        if model_id.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return table[best] if best else _OPENAI_DEFAULT


def anthropic_profile(model_id: str, *, provider: str = "anthropic") -> ModelProfile:
    """Every Claude model since 3: 200k tokens, forced tool use, sees images."""
    return ModelProfile(
        provider=provider,
        context_window=ANTHROPIC_WINDOW,
        structured_output="tool",
        sees_images=True,
    )


def _openai_profile(model_id: str, provider: str) -> ModelProfile:
    window, images = _longest_prefix(model_id, OPENAI_MODELS)
    return ModelProfile(
        provider=provider,
        context_window=window,
        structured_output="json_schema",
        sees_images=images,
        silent_while_thinking=model_id.startswith(OPENAI_SILENT_THINKERS)
        and "-chat" not in model_id,
    )


def _local_family(model_id: str) -> str:
    # "llava:13b" -> "llava"; "library/llava:7b" -> "llava"
    return model_id.split(":", 1)[0].rsplit("/", 1)[-1].lower()


def openai_compatible_profile(provider: str, model_id: str) -> ModelProfile:
    """The profile of ``model_id`` served by an OpenAI-kind ``provider``."""
    if provider == "openai":
        return _openai_profile(model_id, provider)
    if provider == "openrouter":
        # Why by vendor: OpenRouter serves other vendors' models as "vendor/model".
        vendor, _, rest = model_id.partition("/")
        if vendor == "anthropic" and rest:
            return anthropic_profile(rest, provider=provider)
        if vendor == "openai" and rest:
            return _openai_profile(rest, provider)
        return ModelProfile(provider=provider, context_window=COMPATIBLE_WINDOW)
    if provider == "ollama":
        return ModelProfile(
            provider=provider,
            context_window=OLLAMA_WINDOW,
            # Why json_schema: Ollama constrains its output to a response_format schema.
            structured_output="json_schema",
            sees_images=_local_family(model_id) in LOCAL_VISION_MODELS,
        )
    # A server of the deployment's own (vLLM, LM Studio, a hosted one): nothing is
    # known, so the schema goes in the prompt, which every server passes through.
    return ModelProfile(
        provider=provider,
        context_window=COMPATIBLE_WINDOW,
        sees_images=_local_family(model_id) in LOCAL_VISION_MODELS,
    )
