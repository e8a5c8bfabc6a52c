"""SIGTERM to a real ``coterie run`` with a member's answer in flight, against the fake
Discord and a loopback LLMock: the run finishes within the grace period (or is
cancelled with a note after it), new messages are told to come back, every run
ends with a final audit status and a settled budget, and the process exits 0 with
no traceback. Also: a second ``coterie run`` on the same database refuses to start,
naming the first one's pid; and the logs are quiet (no Alembic, voice or httpx lines).
"""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.fakediscord import FakeDiscord
from tests.lifecycle.conftest import Proc, coterie_env, openai_env, query, webhook_shows

pytest.importorskip("llmock")

READY = r"coterie ready as"
WORDS = [f"w{i}" for i in range(12)]


def _db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "coterie.db"


def _answer(fake: FakeDiscord, channel: int, marker: str) -> dict[str, Any] | None:
    """The persona's (webhook's) latest message containing ``marker``."""
    for msg in reversed(fake.history(channel)):
        if msg.get("webhook_id") and marker in msg.get("content", ""):
            found: dict[str, Any] = msg
            return found
    return None


async def _start(
    procs: list[Proc], tmp_path: Path, fake: FakeDiscord, llmock: Any, **env: str
) -> Proc:
    bot = await Proc.start(
        "run", env=coterie_env(tmp_path, fake=fake, **openai_env(llmock), **env), cwd=tmp_path
    )
    procs.append(bot)
    await bot.wait_for(READY)
    # The provider's SDK was imported (in a thread) and its models built before "ready":
    # a member's first message pays for neither.
    ready = bot.stderr.index("coterie ready as")
    assert 0 <= bot.stderr.find("models ready: openai") < ready
    return bot


def _assert_quiet(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert "alembic" not in stderr.lower()
    assert "voice will NOT be supported" not in stderr
    assert "HTTP Request" not in stderr
    assert "sk-test-key-for-llmock" not in stderr
    for line in stderr.splitlines():
        assert line.startswith("ts="), f"not a logfmt line: {line!r}"


async def test_sigterm_lets_the_answer_finish_and_refuses_new_work(
    fake_discord: FakeDiscord, llmock: Any, tmp_path: Path, procs: list[Proc]
) -> None:
    llmock.reply(" ".join(WORDS))
    llmock.pace(150)  # about 2 s for the whole answer
    bot = await _start(procs, tmp_path, fake_discord, llmock, COTERIE_SHUTDOWN_GRACE_S="20")
    general = fake_discord.guild.channel_id("general")

    await fake_discord.dispatch_message("<@bot> count for me", mentions=["bot"])
    # The answer has started streaming into Discord: stop the process now.
    await webhook_shows(fake_discord, "w0")
    bot.signal(signal.SIGTERM)
    await bot.wait_for(r"stopping \(SIGTERM\): 1 run\(s\) in flight")

    # A new message during the drain is told to come back, and starts no run.
    await fake_discord.dispatch_message("<@bot> are you there?", mentions=["bot"])
    await webhook_shows(fake_discord, "coterie is restarting; try again in a minute")

    assert await bot.exit_code() == 0
    answer = _answer(fake_discord, general, "w0")
    assert answer is not None
    assert answer["content"].split() == WORDS  # every word, no note
    _assert_quiet(bot.stderr)
    assert "drained" in bot.stderr and "1 run(s) finished, 0 cancelled" in bot.stderr

    db = _db(tmp_path)
    runs = query(db, "SELECT status, cost_micros FROM audit_runs")
    assert [r[0] for r in runs] == ["ok"]
    assert runs[0][1] > 0
    assert query(db, "SELECT count(*) FROM budget_reservations") == [(0,)]
    assert query(db, "SELECT sum(amount_micros) FROM budget_ledger") == [(runs[0][1],)]
    assert fake_discord.unknown_calls == []


async def test_sigterm_past_the_grace_period_cancels_with_a_note(
    fake_discord: FakeDiscord, llmock: Any, tmp_path: Path, procs: list[Proc]
) -> None:
    llmock.reply(" ".join(WORDS))
    llmock.stall(after_chunks=4, seconds=120)  # the model goes quiet mid-answer
    bot = await _start(procs, tmp_path, fake_discord, llmock, COTERIE_SHUTDOWN_GRACE_S="0.5")
    general = fake_discord.guild.channel_id("general")

    await fake_discord.dispatch_message("<@bot> count for me", mentions=["bot"])
    await webhook_shows(fake_discord, "w0")
    bot.signal(signal.SIGTERM)
    assert await bot.exit_code() == 0

    answer = _answer(fake_discord, general, "w0")
    assert answer is not None
    content = answer["content"]
    assert content.startswith("w0")
    assert content.rstrip().endswith("-# Stopped: coterie is restarting.")
    assert "Cancelled." not in content
    _assert_quiet(bot.stderr)
    assert "0 run(s) finished, 1 cancelled" in bot.stderr

    db = _db(tmp_path)
    [(status, error, ended)] = query(db, "SELECT status, error, ended_at FROM audit_runs")
    assert status == "cancelled"
    assert "cancelled" in error
    assert ended is not None
    assert query(db, "SELECT count(*) FROM budget_reservations") == [(0,)]
    assert fake_discord.unknown_calls == []


async def test_a_second_instance_refuses_and_names_the_first(
    fake_discord: FakeDiscord, llmock: Any, tmp_path: Path, procs: list[Proc]
) -> None:
    first = await _start(procs, tmp_path, fake_discord, llmock)
    second = await Proc.start(
        "run", env=coterie_env(tmp_path, fake=fake_discord, **openai_env(llmock)), cwd=tmp_path
    )
    procs.append(second)
    assert await second.exit_code() != 0
    [line] = [line for line in second.err if line.strip()]
    assert re.fullmatch(
        rf"coterie: another coterie \(pid {first.pid} on \S+ since \S+\) is running on SQLite "
        rf"database {re.escape(str(_db(tmp_path)))}: .*",
        line,
    ), line
    assert fake_discord.identify_count == 1  # the second never connected

    first.signal(signal.SIGINT)
    assert await first.exit_code() == 0
    # ... and once the first has stopped, the database is free again.
    again = await _start(procs, tmp_path, fake_discord, llmock)
    again.signal(signal.SIGTERM)
    assert await again.exit_code() == 0
    _assert_quiet(first.stderr)
