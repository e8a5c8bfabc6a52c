"""split_message: boundaries, limits, and code blocks that survive the cut."""

from __future__ import annotations

import re

import pytest

from adapters.discord.split import split_message


def _balanced(piece: str) -> bool:
    return len(re.findall(r"^\s*```", piece, flags=re.M)) % 2 == 0


def test_short_text_is_one_piece() -> None:
    assert split_message("hello") == ["hello"]


def test_empty_text_is_no_piece() -> None:
    assert split_message("") == []


def test_every_piece_fits_and_nothing_is_lost() -> None:
    text = "\n\n".join(f"Paragraph {i}. " + "word " * 60 for i in range(40))
    pieces = split_message(text)
    assert len(pieces) > 1
    assert all(len(p) <= 2000 for p in pieces)
    assert "".join(p.replace("\n", "").replace(" ", "") for p in pieces) == text.replace(
        "\n", ""
    ).replace(" ", "")


def test_splits_at_paragraph_boundaries() -> None:
    para = "x" * 900
    text = f"{para}\n\n{para}\n\n{para}"
    assert split_message(text) == [f"{para}\n\n{para}", para]


def test_splits_at_lines_when_there_is_no_paragraph() -> None:
    lines = [f"line {i:03d} " + "y" * 40 for i in range(80)]
    pieces = split_message("\n".join(lines))
    for piece in pieces:
        assert len(piece) <= 2000
        for line in piece.split("\n"):
            assert line in lines


def test_a_code_block_cut_in_two_is_closed_and_reopened_with_its_language() -> None:
    code = "\n".join(f"print({i})  # " + "z" * 30 for i in range(120))
    text = "Here is the code:\n\n```python\n" + code + "\n```\n\nDone."
    pieces = split_message(text)
    assert len(pieces) >= 3
    for piece in pieces:
        assert len(piece) <= 2000
        assert _balanced(piece), piece[-80:]
    assert pieces[1].startswith("```python\n")
    assert pieces[0].rstrip().endswith("```")
    # The code lines all survive, in order.
    got = [ln for p in pieces for ln in p.split("\n") if ln.startswith("print(")]
    assert got == code.split("\n")
    assert pieces[-1].rstrip().endswith("Done.")


def test_prefers_cutting_before_a_code_block_to_inside_it() -> None:
    prose = "a" * 1200
    code = "```\n" + "\n".join("b" * 50 for _ in range(20)) + "\n```"
    pieces = split_message(f"{prose}\n{code}")
    assert pieces == [prose, code]


def test_a_line_longer_than_the_limit_is_cut_hard() -> None:
    text = "q" * 4500
    pieces = split_message(text)
    assert all(len(p) <= 2000 for p in pieces)
    assert "".join(pieces) == text


def test_custom_limit_and_guard() -> None:
    assert all(len(p) <= 100 for p in split_message("word " * 200, 100))
    with pytest.raises(ValueError, match="limit"):
        split_message("x", 10)
