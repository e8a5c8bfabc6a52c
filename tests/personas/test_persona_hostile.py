"""Hostile persona files (issue 12): each is refused with a persona error, quickly,
in little memory, and no message quotes the value it refused."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from executor.agent import Caller
from personas.errors import PersonaError, PersonaFileError, UnsafeFile
from personas.markdown import (
    BUILTIN_DIR,
    MAX_FILE_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    load_untrusted_yaml,
    parse_front_matter,
    parse_markdown,
)
from personas.store import PersonaStore

MEMBER = Caller(user_id="300", display_name="mallory", guild_id="1")
BODY = "You help."


def persona(*front: str, body: str = BODY) -> str:
    return "---\nname: probe\n" + "".join(f"{line}\n" for line in front) + f"---\n{body}\n"


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The issue's file: nine levels of nine aliases each, 9**9 strings once expanded."""
    rows = ["  - &l0 [" + ", ".join(['"lol"'] * width) + "]"]
    for level in range(1, levels):
        rows.append(f"  - &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    return persona("temperature:", *rows)


@pytest.fixture
def peak_memory() -> Iterator[Callable[[], int]]:
    tracemalloc.start()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def refused(text: str, **kwargs: Any) -> PersonaFileError:
    with pytest.raises(PersonaFileError) as info:
        parse_markdown(text, source="bomb.md", **kwargs)
    assert str(info.value).startswith("bomb.md: ")
    return info.value


# --- anchors and aliases -------------------------------------------------------------


def test_the_alias_bomb_is_refused_before_anything_is_expanded(
    peak_memory: Callable[[], int],
) -> None:
    text = alias_bomb()
    assert len(text.encode()) < 1024  # small on the wire, like the 399-byte original
    error = refused(text)
    assert isinstance(error, UnsafeFile)
    assert error.kind == "anchor"
    assert "YAML anchors and aliases are not allowed in persona files" in str(error)
    assert "lol" not in str(error)
    assert peak_memory() < 2 * 1024 * 1024


def test_an_alias_alone_is_refused() -> None:
    error = refused(persona("temperature: *nowhere"))
    assert isinstance(error, UnsafeFile)
    assert error.kind == "alias"
    assert "anchors and aliases are not allowed" in str(error)
    assert "nowhere" not in str(error)


def test_an_anchor_without_an_alias_is_refused() -> None:
    error = refused(persona("description: &label Helps."))
    assert isinstance(error, UnsafeFile)
    assert error.kind == "anchor"
    assert "(front matter line 2)" in str(error)
    assert "label" not in str(error)


def test_a_merge_key_through_an_alias_is_refused() -> None:
    text = "---\nbase: &b {tier: fast}\nname: probe\n<<: *b\n---\nbody\n"
    assert isinstance(refused(text), UnsafeFile)


# --- depth, nodes, size --------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "[" * 5000,
        "[" * 5000 + "]" * 5000,
        "{a: " * 5000 + "1" + "}" * 5000,
    ],
    ids=["unclosed", "closed", "mappings"],
)
def test_deep_nesting_is_a_persona_error_not_a_recursion_error(value: str) -> None:
    error = refused(persona(f"temperature: {value}"))
    assert isinstance(error, UnsafeFile)
    assert error.kind == "depth"
    assert f"nested more than {MAX_YAML_DEPTH} levels" in str(error)


def test_deep_block_nesting_is_refused() -> None:
    error = refused(persona("tools:", "- " * 5000 + "x"))  # "- - x" is a list in a list
    assert isinstance(error, UnsafeFile)
    assert error.kind == "depth"


def test_nesting_up_to_the_limit_is_read() -> None:
    # The root mapping is level 1 and the value's outer list level 2.
    levels = MAX_YAML_DEPTH - 1
    error = refused(persona(f"temperature: {'[' * levels}{']' * levels}"))
    assert not isinstance(error, UnsafeFile)
    assert str(error) == "bomb.md: temperature: must be a number between 0 and 2, got a list"
    with pytest.raises(UnsafeFile):
        parse_markdown(persona(f"temperature: {'[' * (levels + 1)}{']' * (levels + 1)}"))


def test_the_stack_is_never_the_limit() -> None:
    # Why: a caller may raise max_depth past what the stack holds; that is still refused.
    with pytest.raises(UnsafeFile) as info:
        load_untrusted_yaml("[" * 5000 + "]" * 5000, max_depth=100_000)
    assert info.value.kind == "depth"


def test_too_many_values_are_refused() -> None:
    tools = ", ".join(f"t{i}" for i in range(MAX_YAML_NODES))
    error = refused(persona(f"tools: [{tools}]"))
    assert isinstance(error, UnsafeFile)
    assert error.kind == "nodes"
    assert f"more than {MAX_YAML_NODES:,} values" in str(error)


def test_an_oversized_file_is_refused_before_it_is_read(
    peak_memory: Callable[[], int],
) -> None:
    error = refused(persona(body="p" * MAX_FILE_BYTES))
    assert isinstance(error, UnsafeFile)
    assert error.kind == "size"
    assert str(error) == f"bomb.md: the persona file is larger than {MAX_FILE_BYTES // 1024} KB"


def test_the_size_cap_counts_bytes_not_characters() -> None:
    text = persona(body="€" * (MAX_FILE_BYTES // 3 + 1))  # fewer characters than the cap
    assert len(text) < MAX_FILE_BYTES
    error = refused(text)
    assert isinstance(error, UnsafeFile)
    assert error.kind == "size"


def test_a_file_just_under_the_cap_is_read() -> None:
    # A long front-matter comment: the file is within the cap; the prompt rule still applies.
    padding = "#" + "x" * (MAX_FILE_BYTES - 200)
    p = parse_markdown(persona(padding, "temperature: 0.5"))
    assert p.temperature == 0.5


# --- messages never quote an unvalidated value ---------------------------------------

SECRET = "sekrit-value-" * 50


@pytest.mark.parametrize(
    ("front", "message"),
    [
        (f"temperature: [{SECRET!r}]", "temperature: must be a number between 0 and 2, got a list"),
        (f"temperature: {SECRET}", "temperature: must be a number between 0 and 2, got text"),
        (
            f"temperature: {{k: {SECRET}}}",
            "temperature: must be a number between 0 and 2, got a mapping",
        ),
        ("temperature: yes", "temperature: must be a number between 0 and 2, got true/false"),
        ("temperature: .inf", "temperature: must be between 0 and 2"),
        (f"description: [{SECRET}]", "description: must be text, got a list"),
        ("tier: 2024-01-01", "tier: must be text, got a date"),
        (f"tools: {{{SECRET}: 1}}", "tools: must be a list of tool names, got a mapping"),
        (f"tools: [[{SECRET}]]", "tools: each tool must be a name, got a list"),
        (f"tools: [{SECRET}]", "tools: a tool name is at most 64 characters"),
        (f"avatar_url: https://example.org/{SECRET}", "avatar_url: at most 512 characters"),
        (f"{SECRET}: 1", "unknown key(s) sekrit-value-sekrit-value-sekrit-value-…;"),
    ],
)
def test_a_wrong_field_is_named_without_its_value(front: str, message: str) -> None:
    error = refused(persona(front))
    assert message in str(error)
    assert SECRET not in str(error)
    assert len(str(error)) < 300


def test_a_long_name_is_not_quoted() -> None:
    error = refused(f"---\nname: {SECRET}\n---\nbody\n")
    assert str(error) == f"bomb.md: name: at most 32 characters (got {len(SECRET):,})"


@pytest.mark.parametrize(
    "front",
    [
        "tier: 2001-13-01",  # datetime refuses month 13
        f"temperature: {'9' * 5000}",  # past int()'s digit limit
        "temperature: !!bool maybe",
        "tier: !!timestamp never",
        f"temperature: !!float {SECRET}",
    ],
)
def test_a_value_yaml_cannot_convert_is_a_persona_error(front: str) -> None:
    error = refused(persona(front))
    assert "invalid YAML: a value cannot be read" in str(error)
    assert SECRET not in str(error)
    assert "9999" not in str(error)


def test_a_yaml_problem_is_quoted_only_in_part() -> None:
    error = refused(persona(f"tier: !{'t' * 5000} x"))
    assert "invalid YAML (front matter line 2)" in str(error)
    assert len(str(error)) < 300


def test_keys_must_be_text() -> None:
    assert "every front matter key must be text" in str(refused(persona("1: one")))
    assert "invalid YAML" in str(refused(persona("? [a, b]\n: pair")))


def test_every_refusal_is_a_persona_error() -> None:
    for text in (alias_bomb(), persona("temperature: " + "[" * 5000), "x" * (MAX_FILE_BYTES + 1)):
        with pytest.raises(PersonaError):
            parse_markdown(text)


# --- what skills reuse ---------------------------------------------------------------


def test_valid_files_read_as_safe_load_reads_them() -> None:
    files = [p.read_text(encoding="utf-8") for p in sorted(BUILTIN_DIR.glob("*.md"))]
    files.append(persona("description: 'Quoted: yes'", "tools: a, b", "temperature: 1"))
    assert len(files) >= 4
    for text in files:
        head = text.split("---\n")[1]
        meta, body = parse_front_matter(text, source="f.md")
        assert meta == yaml.safe_load(head)
        assert body.strip() == text.split("---\n", 2)[2].strip()


def test_load_untrusted_yaml_reads_plain_yaml_and_names_the_kind_of_file() -> None:
    assert load_untrusted_yaml("a: [1, {b: c}]\nd: 2024-01-01\n") == yaml.safe_load(
        "a: [1, {b: c}]\nd: 2024-01-01\n"
    )
    assert load_untrusted_yaml("") is None
    with pytest.raises(
        UnsafeFile, match=r"skill\.md: YAML anchors and aliases are not allowed in skill files"
    ):
        load_untrusted_yaml("a: &x 1\nb: *x\n", source="skill.md", what="skill")
    with pytest.raises(UnsafeFile, match="larger than 1 KB"):
        parse_front_matter("---\na: 1\n---\n" + "x" * 2000, what="skill", max_bytes=1024)
    meta, body = parse_front_matter("---\n---\nbody", what="skill")
    assert (meta, body) == ({}, "body")


# --- through the store, as /persona import calls it ----------------------------------


async def test_the_store_refuses_the_bomb_and_stores_nothing(store: PersonaStore) -> None:
    before = await store.list("1")
    for text in (alias_bomb(), persona("temperature: " + "[" * 5000)):
        with pytest.raises(UnsafeFile):
            await store.import_markdown("1", text, by=MEMBER, source="bomb.md")
    assert await store.list("1") == before
    imported = await store.import_markdown("1", persona("temperature: 0.4"), by=MEMBER)
    assert (imported.name, imported.temperature) == ("probe", 0.4)
