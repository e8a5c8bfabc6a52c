"""Secret-looking values are scrubbed: the fast pattern finds exactly what the readable
one (each secret's shape led by a word boundary) finds, on known secrets and on
generated text around them."""

from __future__ import annotations

import random
import re
import string

import pytest

from executor.redaction import REDACTED, excerpt, redact, scrub

# The readable form of the secrets' shapes: what executor.redaction matches, faster.
READABLE = re.compile(
    r"(?:\bsk-[A-Za-z0-9_\-]{8,}"
    r"|\bBearer\s+[A-Za-z0-9._~+/=\-]{8,}"
    r"|\bBasic\s+[A-Za-z0-9+/=]{8,}"
    r"|\bxox[abprs]-[A-Za-z0-9\-]{8,}"
    r"|\bgh[pousr]_[A-Za-z0-9]{16,}"
    r"|\bAKIA[0-9A-Z]{16}\b"
    r"|\b[MN][A-Za-z\d_\-]{23,25}\.[A-Za-z\d_\-]{6}\.[A-Za-z\d_\-]{27,})"
)

SECRETS = [
    "sk-abcdefghijk",
    "Bearer abcdefghij",
    "Bearer\tabc.def~ghij",
    "Basic QWxhZGRpbjpvcGVu",
    "xoxb-12345678-abc",
    "ghp_" + "a" * 20,
    "AKIA" + "A" * 16,
    "M" + "a" * 23 + "." + "b" * 6 + "." + "c" * 27,
    "N" + "a" * 25 + ".bbbbbb." + "c" * 30,
]
NOT_SECRETS = [
    "ask-abcdefghijk",  # no word boundary before the s
    "_sk-abcdefghij",
    "sk-short",
    "AKIA" + "A" * 17,  # too long to be a key id
    "N" + "a" * 26 + ".bbbbbb." + "c" * 30,
    "Bearer short",
]


@pytest.mark.parametrize("secret", SECRETS)
def test_each_kind_of_secret_is_scrubbed(secret: str) -> None:
    assert scrub(f"use {secret} now") == f"use {REDACTED} now"
    assert secret not in excerpt(f"x {secret}", 100)


@pytest.mark.parametrize("text", NOT_SECRETS)
def test_look_alikes_are_left_alone(text: str) -> None:
    assert scrub(f"use {text} now") == f"use {text} now"


def test_the_fast_pattern_matches_the_readable_one() -> None:
    rng = random.Random(1)
    alphabet = string.ascii_letters + string.digits + " .-_/+=skBearerBasicxoxbghpAKIAMNé\t"
    pieces = SECRETS + NOT_SECRETS
    found = 0
    for _ in range(20_000):
        parts = [
            rng.choice(pieces)
            if rng.random() < 0.3
            else "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
            for _ in range(4)
        ]
        text = rng.choice(["", " ", "-", "x", "é", "."]).join(parts)
        expected = READABLE.sub(REDACTED, text)
        assert scrub(text) == expected, text
        found += expected != text
    assert found > 5_000  # the generated text did hold secrets


def test_secret_named_arguments_are_redacted_whatever_their_value() -> None:
    rendered = redact({"url": "https://example.com", "api_key": "plain", "n": 3})
    assert '"api_key": "[redacted]"' in rendered and "plain" not in rendered
