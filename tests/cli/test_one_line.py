"""Mistakes a real ``coterie`` process meets at start are one line on stderr, naming
what is wrong and the fix, exit 2 (``deploy/coterie.service`` does not restart on it),
never a traceback: settings out of range, a malformed base URL, a PostgreSQL database
or role that does not exist, Discord out of reach. Reading commands create nothing
where there is no database, and a closed pipe (``coterie audit list | head``) ends the
process quietly. Each case runs ``python -m bot`` as the operator would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakediscord import FakeDiscord
from tests.lifecycle.conftest import Proc, coterie_env

PG_ENV = "COTERIE_TEST_POSTGRES_URL"
# A well-formed bot token (the base64 of an id, then two segments) for verbs that need one.
TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.Gabcde.abcdefghijklmnopqrstuvwxyz0123456789ab"


def _coterie(
    tmp_path: Path, *args: str, stdout: Any = subprocess.PIPE, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = coterie_env(tmp_path, OPENAI_API_KEY="sk-test-one-line")
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=environ,
        check=False,
    )


def _one_line(out: subprocess.CompletedProcess[str]) -> str:
    """The process's one ``coterie:`` line; nothing else on stderr looks like an error."""
    assert "Traceback" not in out.stderr, out.stderr
    mine = [line for line in out.stderr.splitlines() if line.startswith("coterie: ")]
    assert len(mine) == 1, out.stderr
    others = [line for line in out.stderr.splitlines() if line and line not in mine]
    assert all(line.startswith("ts=") for line in others), out.stderr  # log lines only
    return mine[0]


def _doctor_fails(tmp_path: Path, name: str, **env: str) -> dict[str, Any]:
    out = _coterie(tmp_path, "doctor", "--offline", "--json", **env)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    report = json.loads(out.stdout)
    assert report["status"] == "fail"
    [check] = [c for c in report["checks"] if c["name"] == name and c["status"] == "FAIL"]
    assert isinstance(check, dict)
    return check


# --- settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "value", "line"),
    [
        (
            "COTERIE_BUDGET_DEFAULT_USD",
            "-5",
            "COTERIE_BUDGET_DEFAULT_USD=-5: must be at least 0",
        ),
        (
            "COTERIE_BUDGET_DEFAULT_USD",
            "nan",
            "COTERIE_BUDGET_DEFAULT_USD=nan: must be a finite number, e.g. 5.0",
        ),
        (
            "COTERIE_BUDGET_DEFAULT_USD",
            "inf",
            "COTERIE_BUDGET_DEFAULT_USD=inf: must be a finite number, e.g. 5.0",
        ),
        (
            "COTERIE_BUDGET_WARN_PERCENT",
            "50,150",
            "COTERIE_BUDGET_WARN_PERCENT: the item 150 must be a percentage from 1 to 100, "
            "e.g. 50,80",
        ),
        (
            "OPENAI_BASE_URL",
            "localhost:11434/v1",
            "OPENAI_BASE_URL=localhost:11434/v1: must start with http:// or https://, "
            "e.g. http://localhost:11434/v1",
        ),
        (
            "OPENAI_BASE_URL",
            "http://proxyuser:hunter2hunter2@[::1/v1",
            "OPENAI_BASE_URL=http://[redacted]@[::1/v1: is not a URL; "
            "e.g. http://localhost:11434/v1",
        ),
    ],
)
def test_a_setting_out_of_range_is_one_line_and_a_doctor_failure(
    var: str, value: str, line: str, tmp_path: Path
) -> None:
    out = _coterie(tmp_path, "run", DISCORD_TOKEN=TOKEN, **{var: value})
    assert out.returncode == 2, out.stderr
    assert _one_line(out) == f"coterie: {line}"
    assert "hunter2" not in out.stderr
    check = _doctor_fails(tmp_path, "settings", **{var: value})
    assert check["detail"] == line and var in check["fix"]
    assert not (tmp_path / "data").exists()  # nothing was created on the way out


# --- PostgreSQL -------------------------------------------------------------------------


def _pg() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"{PG_ENV} is not set")
    return url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.mark.parametrize("missing", ["database", "role"])
def test_a_postgres_database_or_role_that_does_not_exist(missing: str, tmp_path: Path) -> None:
    base = _pg()
    if missing == "database":
        url = base.rsplit("/", 1)[0] + "/no_such_db_one_line"
        said, fix = 'PostgreSQL database "no_such_db_one_line" does not exist', "createdb"
    else:
        scheme, rest = base.split("://", 1)
        url = f"{scheme}://no_such_role_one_line@{rest.split('@', 1)[-1]}"
        said, fix = 'PostgreSQL role "no_such_role_one_line" does not exist', "createuser"

    out = _coterie(tmp_path, "run", DISCORD_TOKEN=TOKEN, DATABASE_URL=url)
    assert out.returncode == 2, out.stderr
    line = _one_line(out)
    assert said in line and fix in line

    out = _coterie(tmp_path, "doctor", "--offline", "--json", DATABASE_URL=url)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    assert checks["database"]["status"] == "FAIL"
    assert said in checks["database"]["detail"] and fix in checks["database"]["detail"]
    # Said once: the instance check does not repeat it.
    assert checks["instance"]["detail"] == "cannot tell: the database did not open"


# --- Discord out of reach ------------------------------------------------------------------


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it), not listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


@pytest.mark.parametrize("verb", ["run", "sync"])
def test_discord_out_of_reach_is_one_line(verb: str, refusing_port: int, tmp_path: Path) -> None:
    out = _coterie(
        tmp_path,
        verb,
        DISCORD_TOKEN=TOKEN,
        COTERIE_TEST_DISCORD_API=f"http://127.0.0.1:{refusing_port}/api/v10",
        COTERIE_TEST_DISCORD_GATEWAY=f"ws://127.0.0.1:{refusing_port}/",
    )
    # run: 1, so systemd retries (the network comes back); sync: the same one line.
    assert out.returncode == (1 if verb == "run" else 2), out.stderr
    line = _one_line(out)
    assert line.startswith(f"coterie: cannot reach Discord (127.0.0.1:{refusing_port}): ")
    assert "check this machine's network" in line


async def test_discord_answering_5xx_at_login_is_one_line(
    fake_discord: FakeDiscord, tmp_path: Path, procs: list[Proc]
) -> None:
    fake_discord.fail("GET", "/users/@me", 503)
    bot = await Proc.start(
        "run", env=coterie_env(tmp_path, fake=fake_discord, OPENAI_API_KEY="sk-x"), cwd=tmp_path
    )
    procs.append(bot)
    assert await bot.exit_code() == 1  # a passing outage: systemd restarts it
    assert "Traceback" not in bot.stderr
    [line] = [line for line in bot.err if line.startswith("coterie: ")]
    assert line.startswith(f"coterie: Discord (127.0.0.1:{fake_discord.port}) answered 503")
    assert "discordstatus.com" in line


async def test_a_token_discord_rejects_is_one_line_and_no_restart(
    fake_discord: FakeDiscord, tmp_path: Path, procs: list[Proc]
) -> None:
    env = coterie_env(tmp_path, fake=fake_discord, OPENAI_API_KEY="sk-x")
    env["DISCORD_TOKEN"] = TOKEN  # not the fake's: a 401 at login
    bot = await Proc.start("run", env=env, cwd=tmp_path)
    procs.append(bot)
    assert await bot.exit_code() == 2  # a restart would be rejected the same way
    assert "Traceback" not in bot.stderr
    [line] = [line for line in bot.err if line.startswith("coterie: ")]
    assert line == "coterie: Discord rejected DISCORD_TOKEN; copy the token again from the portal"


async def test_a_5xx_on_the_dev_guild_sync_is_logged_and_the_bot_goes_on(
    fake_discord: FakeDiscord, tmp_path: Path, procs: list[Proc]
) -> None:
    guild = fake_discord.guild.id
    fake_discord.fail("PUT", f"/applications/{{app}}/guilds/{guild}/commands", 503)
    env = coterie_env(
        tmp_path, fake=fake_discord, OPENAI_API_KEY="sk-x", COTERIE_DEV_GUILD_ID=str(guild)
    )
    bot = await Proc.start("run", env=env, cwd=tmp_path)
    procs.append(bot)
    warned = await bot.wait_for(r"could not sync the slash commands to dev guild")
    assert (
        "level=warning" in warned and "503" in warned and f"coterie sync --guild {guild}" in warned
    )
    await bot.wait_for(r"coterie ready as")
    assert fake_discord.find_calls("PUT", f"/applications/{{app}}/guilds/{guild}/commands")
    bot.signal(signal.SIGTERM)
    assert await bot.exit_code() == 0
    assert "Traceback" not in bot.stderr


# --- reading commands, pipes ---------------------------------------------------------------


@pytest.mark.parametrize(
    "verb", [["db", "current"], ["audit", "list"], ["db", "backup", "b/"], ["status"]]
)
def test_reading_a_database_that_is_not_there_creates_nothing(
    verb: list[str], tmp_path: Path
) -> None:
    out = _coterie(tmp_path, *verb)
    assert out.returncode == 2, out.stderr
    db = tmp_path / "data" / "coterie.db"
    assert _one_line(out) == (
        f"coterie: there is no SQLite database at {db}: check DATABASE_URL "
        "(coterie run or coterie db upgrade creates it)"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_closed_pipe_ends_the_listing_quietly(tmp_path: Path) -> None:
    assert _coterie(tmp_path, "db", "upgrade").returncode == 0
    # Why a pipe whose reader is closed before the process starts: its first write
    # meets EPIPE, as `coterie audit list | head` does once head has its lines.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        out = _coterie(tmp_path, "audit", "list", stdout=write_end)
    finally:
        os.close(write_end)
    assert out.stderr == ""
    assert out.returncode == 128 + signal.SIGPIPE
