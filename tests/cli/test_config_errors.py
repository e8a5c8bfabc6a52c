"""Operator mistakes are one line each, naming the variable and the fix, never a
traceback: bad setting values, database URLs in every common spelling, a PostgreSQL
database or role that does not exist, an enabled tool that does not exist, a token
with no model to answer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.cli import main
from bot.cli._common import load_settings
from bot.settings import Settings, env_name

PG_ENV = "COTERIE_TEST_POSTGRES_URL"


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env or coterie.toml
    for var in list(os.environ):
        if (var.startswith("COTERIE_") and var != PG_ENV) or var == "DATABASE_URL":
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'c.db'}")


def _err(capsys: pytest.CaptureFixture[str]) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("var", "value", "line"),
    [
        (
            "COTERIE_BUDGET_DEFAULT_USD",
            "abc",
            "coterie: COTERIE_BUDGET_DEFAULT_USD=abc: must be a number, e.g. 5.0",
        ),
        ("COTERIE_LANE_SLOTS", "0", "coterie: COTERIE_LANE_SLOTS=0: must be at least 1"),
        ("COTERIE_ALLOW_DMS", "maybe", "coterie: COTERIE_ALLOW_DMS=maybe: must be true or false"),
        (
            "COTERIE_OWNER_IDS",
            "123,abc",
            "coterie: COTERIE_OWNER_IDS: the item abc must be a whole number",
        ),
        (
            "COTERIE_LOG_FORMAT",
            "xml",
            "coterie: COTERIE_LOG_FORMAT=xml: must be one of logfmt or json",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(
    var: str,
    value: str,
    line: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(var, value)
    assert main(["ask", "hi"]) == 2
    assert _err(capsys) == [line]


def test_every_bad_variable_gets_its_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COTERIE_LANE_SLOTS", "0")
    monkeypatch.setenv("COTERIE_ALLOW_DMS", "maybe")
    assert main(["db", "current"]) == 2
    assert len(_err(capsys)) == 2


def test_a_secret_is_never_echoed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value-123456")
    monkeypatch.setenv("COTERIE_LANE_SLOTS", "-1")
    main(["ask", "hi"])
    assert "sk-secret" not in capsys.readouterr().err


def test_lists_take_commas_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COTERIE_OWNER_IDS", "123")
    assert load_settings().owner_ids == [123]
    monkeypatch.setenv("COTERIE_OWNER_IDS", "1, 2")
    assert load_settings().owner_ids == [1, 2]
    monkeypatch.setenv("COTERIE_OWNER_IDS", "[3]")
    assert load_settings().owner_ids == [3]
    monkeypatch.setenv("COTERIE_ENABLED_TOOLS", "calculator,current_time")
    assert load_settings().enabled_tools == ["calculator", "current_time"]
    monkeypatch.setenv("COTERIE_ENABLED_TOOLS", "")
    assert load_settings().enabled_tools is None


def test_every_setting_has_a_variable_name() -> None:
    assert env_name("database_url") == "DATABASE_URL"
    assert env_name("discord_token") == "DISCORD_TOKEN"
    assert env_name("lane_slots") == "COTERIE_LANE_SLOTS"
    assert all(env_name(f) for f in Settings.model_fields)


def test_an_unknown_enabled_tool_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("COTERIE_ENABLED_TOOLS", '["nosuchtool"]')
    assert main(["ask", "hi"]) == 2
    [line] = _err(capsys)
    assert line.startswith("coterie: COTERIE_ENABLED_TOOLS names 'nosuchtool', which is not a tool")
    assert "calculator, current_time" in line and "web_fetch" in line


# --- database URLs --------------------------------------------------------------------


def test_sqlite_spelled_the_usual_way_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'plain.db'}")
    assert main(["db", "upgrade"]) == 0
    assert "upgraded" in capsys.readouterr().out
    assert (tmp_path / "plain.db").is_file()


@pytest.mark.parametrize("url", ["mysql://root@127.0.0.1/test", "mariadb+pymysql://x@h/db"])
def test_mysql_is_one_line_saying_what_works(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    assert main(["db", "current"]) == 2
    [line] = _err(capsys)
    assert "coterie does not support" in line
    assert "sqlite:///" in line and "postgresql://" in line


def test_a_url_that_is_not_one_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "user:hunter2@nowhere")
    assert main(["db", "current"]) == 2
    [line] = _err(capsys)
    assert line.startswith("coterie: DATABASE_URL is not a database URL")


def _pg(monkeypatch: pytest.MonkeyPatch) -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"{PG_ENV} is not set")
    return url.replace("postgresql+asyncpg://", "postgresql://")


def test_postgresql_spelled_the_usual_way_works(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", _pg(monkeypatch))
    assert main(["db", "current"]) == 0
    assert "revision" in capsys.readouterr().out


def test_a_missing_postgres_database_names_the_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    base = _pg(monkeypatch)
    monkeypatch.setenv("DATABASE_URL", base.rsplit("/", 1)[0] + "/no_such_db_here")
    assert main(["db", "current"]) == 2
    [line] = _err(capsys)
    assert 'PostgreSQL database "no_such_db_here" does not exist' in line
    assert "createdb" in line


def test_a_missing_postgres_role_names_the_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    base = _pg(monkeypatch)
    scheme, rest = base.split("://", 1)
    host = rest.split("@", 1)[-1]
    monkeypatch.setenv("DATABASE_URL", f"{scheme}://no_such_role@{host}")
    assert main(["db", "current"]) == 2
    [line] = _err(capsys)
    assert 'PostgreSQL role "no_such_role" does not exist' in line
    assert "createuser" in line
