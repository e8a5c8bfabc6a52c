"""``coterie ask`` and ``coterie chat`` settle their run on SIGTERM: the run is closed
as cancelled in the audit, its reservation settled, and the process exits 143 with one
line and no traceback (before, SIGTERM killed them like SIGKILL and left the run
``running`` with its budget held)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.lifecycle.conftest import Proc, coterie_env, openai_env, query

pytest.importorskip("llmock")

WORDS = " ".join(f"w{i}" for i in range(10))


def _db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "coterie.db"


def _assert_closed(tmp_path: Path, trigger: str) -> None:
    runs = query(_db(tmp_path), "SELECT trigger, status, ended_at FROM audit_runs")
    assert [(t, s) for t, s, _ in runs] == [(trigger, "cancelled")]
    assert runs[0][2] is not None
    assert query(_db(tmp_path), "SELECT count(*) FROM budget_reservations") == [(0,)]


async def test_sigterm_during_ask_closes_the_run(
    llmock: Any, tmp_path: Path, procs: list[Proc]
) -> None:
    llmock.reply(WORDS)
    llmock.stall(after_chunks=3, seconds=120)
    ask = await Proc.start(
        "ask",
        "count to ten",
        env=coterie_env(tmp_path, fake=None, **openai_env(llmock)),
        cwd=tmp_path,
    )
    procs.append(ask)
    await ask.wait_for(r"w0", stream="out")
    ask.signal(signal.SIGTERM)
    assert await ask.exit_code() == 128 + signal.SIGTERM
    assert "Traceback" not in ask.stderr
    assert "coterie: stopped by SIGTERM; the run was closed as cancelled" in ask.stderr
    _assert_closed(tmp_path, "cli")


async def test_sigterm_during_chat_closes_the_run(
    llmock: Any, tmp_path: Path, procs: list[Proc]
) -> None:
    llmock.reply(WORDS)
    llmock.stall(after_chunks=3, seconds=120)
    chat = await Proc.start(
        "chat", env=coterie_env(tmp_path, fake=None, **openai_env(llmock)), cwd=tmp_path, stdin=True
    )
    procs.append(chat)
    await chat.wait_for(r"/quit to leave", stream="out")
    await chat.write("count to ten\n")
    await chat.wait_for(r"w0", stream="out")
    chat.signal(signal.SIGTERM)
    assert await chat.exit_code() == 128 + signal.SIGTERM
    assert "Traceback" not in chat.stderr
    _assert_closed(tmp_path, "console")


async def test_sigterm_at_the_chat_prompt_exits_at_once(
    llmock: Any, tmp_path: Path, procs: list[Proc]
) -> None:
    chat = await Proc.start(
        "chat", env=coterie_env(tmp_path, fake=None, **openai_env(llmock)), cwd=tmp_path, stdin=True
    )
    procs.append(chat)
    await chat.wait_for(r"/quit to leave", stream="out")
    chat.signal(signal.SIGTERM)  # waiting for a line of input: must not wait for Enter
    assert await chat.exit_code(timeout=20) == 128 + signal.SIGTERM
    assert "Traceback" not in chat.stderr
    assert query(_db(tmp_path), "SELECT count(*) FROM audit_runs") == [(0,)]
