from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from personas.errors import PersonaFileError
from personas.markdown import BUILTIN_DIR, load_builtins, parse_markdown, render_markdown
from personas.model import SYSTEM_PROMPT_MAX

GOOD = """---
name: Helper
description: Helps.
tier: fast
tools: [calculator, current_time]
temperature: 0.5
avatar_url: https://example.org/a.png
---
You help.

With two paragraphs.
"""


def test_builtins_load_and_are_useful() -> None:
    builtins = load_builtins()
    assert {"assistant", "researcher", "reviewer"} <= set(builtins)
    assert builtins["assistant"].tools[:2] == ("current_time", "calculator")
    assert "web_fetch" in builtins["researcher"].tools
    for p in builtins.values():
        # Every built-in remembers, and its prompt says how (issue 16).
        assert {"remember", "recall", "forget_note"} <= set(p.tools)
        assert "`remember`" in p.system_prompt and "/memory" in p.system_prompt
        assert "cannot remember" not in p.system_prompt
        assert p.builtin
        assert p.source.endswith(f"{p.name}.md")
        assert 200 < len(p.system_prompt) <= SYSTEM_PROMPT_MAX
        assert 0 < len(p.description) <= 100


def test_parse_normalises_and_round_trips() -> None:
    p = parse_markdown(GOOD, source="x.md")
    assert p.name == "helper"
    assert p.tier == "fast"
    assert p.tools == ("calculator", "current_time")
    assert p.temperature == 0.5
    assert p.system_prompt == "You help.\n\nWith two paragraphs."
    assert parse_markdown(render_markdown(p)) == replace(p, source="<persona>")


def test_builtins_round_trip_through_export() -> None:
    for p in load_builtins().values():
        again = parse_markdown(render_markdown(p), source=p.source)
        assert (again.name, again.system_prompt, again.tools, again.temperature) == (
            p.name,
            p.system_prompt,
            p.tools,
            p.temperature,
        )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("no front matter", "must start with a '---' line"),
        ("---\nname: x\n", "not closed"),
        ("---\nname: [unclosed\n---\nbody", "invalid YAML (front matter line"),
        ("---\n- a\n- b\n---\nbody", "must be a mapping"),
        ("---\nname: abc\ncolour: red\n---\nbody", "unknown key(s) colour"),
        ("---\ndescription: d\n---\nbody", "needs a 'name'"),
        ("---\nname: 42\n---\nbody", "name: must be text"),
        ("---\nname: Bad Name!\n---\nbody", "name: 'Bad Name!' is not a valid name"),
        ("---\nname: ok\n---\n   \n", "system_prompt: the system prompt may not be empty"),
        ("---\nname: ok\ntemperature: 7\n---\nbody", "temperature: must be between 0 and 2"),
        ("---\nname: ok\ntemperature: hot\n---\nbody", "temperature: must be a number"),
        ("---\nname: ok\ntools: {a: 1}\n---\nbody", "tools: must be a list"),
        ("---\nname: ok\navatar_url: ftp://x\n---\nbody", "avatar_url: 'ftp://x' is not an http"),
        (f"---\nname: ok\ndescription: {'d' * 101}\n---\nbody", "description: at most 100"),
        (f"---\nname: ok\n---\n{'p' * 4001}", "system_prompt: at most 4000 characters"),
    ],
)
def test_malformed_file_names_the_file_and_the_problem(text: str, problem: str) -> None:
    with pytest.raises(PersonaFileError) as info:
        parse_markdown(text, source="upload.md")
    assert str(info.value).startswith("upload.md: ")
    assert problem in str(info.value)


def test_malformed_builtin_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "good.md").write_text(GOOD, encoding="utf-8")
    (tmp_path / "broken.md").write_text("---\nname: b\ntier: [\n---\nx", encoding="utf-8")
    with pytest.raises(PersonaFileError, match=r"broken\.md: invalid YAML"):
        load_builtins(tmp_path)


def test_duplicate_builtin_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text(GOOD, encoding="utf-8")
    (tmp_path / "b.md").write_text(GOOD, encoding="utf-8")
    with pytest.raises(PersonaFileError, match=r"b\.md: the name 'helper' is also used by"):
        load_builtins(tmp_path)


def test_builtin_dir_is_packaged() -> None:
    assert BUILTIN_DIR.is_dir()
