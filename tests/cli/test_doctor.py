"""``coterie doctor``: one line per check with the fix, exit 0/1/2, ``--json``, and it
changes nothing. Online checks run against the fake Discord and a loopback LLMock."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from adapters.storage.db import Database
from adapters.storage.lock import InstanceLock
from bot.cli import main
from bot.cli.doctor import doctor
from tests.fakediscord import FakeDiscord

PG_ENV = "COTERIE_TEST_POSTGRES_URL"


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if (var.startswith(("COTERIE_", "OPENAI_", "ANTHROPIC_")) and var != PG_ENV) or var in (
            "DATABASE_URL",
            "DISCORD_TOKEN",
        ):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-doctor")


def _lines(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    out = capsys.readouterr().out
    found: dict[str, str] = {}
    for line in out.splitlines():
        status, rest = line.split(None, 1)
        name = rest.split(":", 1)[0]
        found.setdefault(name, f"{status} {rest}")
    return found


def _upgrade() -> None:
    assert main(["db", "upgrade"]) == 0


async def _aupgrade() -> None:
    """``coterie db upgrade`` from inside a test's event loop."""
    db = Database.open(f"sqlite:///{Path.cwd() / 'data' / 'coterie.db'}")
    try:
        await db.upgrade()
    finally:
        await db.close()


def test_a_fresh_checkout_warns_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor", "--offline"]) == 1
    lines = _lines(capsys)
    assert lines["settings"].startswith("OK")
    assert lines["tier standard"].startswith("OK")
    assert lines["database"].startswith("WARN") and "does not exist yet" in lines["database"]
    assert "fix: coterie run" in lines["database"]
    assert lines["discord"].startswith("WARN") and "DISCORD_TOKEN" in lines["discord"]
    assert lines["tool web_fetch"].startswith("OK")
    assert list(tmp_path.iterdir()) == []  # no database, no directory, no lock file


def test_all_ok_offline_is_exit_0_and_json_for_scripts(
    fake_discord: FakeDiscord, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _upgrade()
    capsys.readouterr()
    monkeypatch.setenv("DISCORD_TOKEN", fake_discord.token)
    assert main(["doctor", "--offline", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "ok"
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses["database"] == "OK" and statuses["schema"] == "OK"
    assert statuses["provider"] == "SKIP" and statuses["discord"] == "SKIP"
    assert fake_discord.calls == []  # offline: Discord was not asked


def test_a_bad_setting_is_a_failure_with_its_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COTERIE_LANE_SLOTS", "0")
    assert main(["doctor", "--offline"]) == 2
    out = capsys.readouterr().out
    assert out.startswith("FAIL  settings: COTERIE_LANE_SLOTS=0: must be at least 1; fix:")
    assert "Traceback" not in out


def test_no_key_for_the_default_tier_fails_naming_the_variables(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    assert main(["doctor", "--offline"]) == 2
    line = _lines(capsys)["tier standard"]
    assert line.startswith("FAIL") and "(the default tier)" in line
    assert "ANTHROPIC_API_KEY or OPENAI_API_KEY" in line and "ollama:" in line


def test_a_tool_whose_library_is_missing_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "trafilatura", None)  # `import trafilatura` now fails
    assert main(["doctor", "--offline"]) == 2
    line = _lines(capsys)["tool web_fetch"]
    assert line.startswith("FAIL") and "import of trafilatura" in line
    assert "trafilatura and lxml_html_clean" in line


def test_an_unknown_tool_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COTERIE_ENABLED_TOOLS", "calculator,nosuchtool")
    assert main(["doctor", "--offline"]) == 2
    assert "names 'nosuchtool'" in _lines(capsys)["tools"]


def test_a_corrupt_database_fails_with_the_restore_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _upgrade()
    path = tmp_path / "data" / "coterie.db"
    data = bytearray(path.read_bytes())
    data[4096 : 4096 + 2048] = b"\xff" * 2048  # trample a page
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["doctor", "--offline"]) == 2
    line = _lines(capsys)["database"]
    assert line.startswith("FAIL") and "restore the last backup" in line


def test_a_schema_behind_is_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade", "--revision", "0001"]) == 0
    capsys.readouterr()
    assert main(["doctor", "--offline"]) == 1
    line = _lines(capsys)["schema"]
    assert line.startswith("WARN") and "behind" in line and "coterie run upgrades it" in line


async def test_the_instance_check(tmp_path: Path) -> None:
    await _aupgrade()
    url = f"sqlite:///{tmp_path / 'data' / 'coterie.db'}"
    report = await doctor(offline=True)
    [check] = [c for c in report.checks if c.name == "instance"]
    assert check.status == "OK"
    health = await doctor(offline=True, running=True)
    [check] = [c for c in health.checks if c.name == "instance"]
    assert check.status == "FAIL"  # a health check with no bot running
    async with await InstanceLock.acquire(url):
        report = await doctor(offline=True)
        [check] = [c for c in report.checks if c.name == "instance"]
        assert check.status == "WARN" and f"pid {os.getpid()}" in check.detail
        health = await doctor(offline=True, running=True)
        [check] = [c for c in health.checks if c.name == "instance"]
        assert check.status == "OK"


# --- online: the providers and Discord -------------------------------------------------


def _online_env(monkeypatch: pytest.MonkeyPatch, fake: FakeDiscord, llmock: Any) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", fake.token)
    monkeypatch.setenv("OPENAI_BASE_URL", llmock.base_url("openai"))
    for tier in ("FAST", "STANDARD", "SMART"):
        monkeypatch.setenv(f"COTERIE_TIER_{tier}", "openai:gpt-5-mini")


async def test_online_everything_answers(
    fake_discord: FakeDiscord, llmock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _aupgrade()
    _online_env(monkeypatch, fake_discord, llmock)
    llmock.reply("OK", times=None)
    report = await doctor()
    by_name = {c.name: c for c in report.checks}
    assert by_name["provider openai:gpt-5-mini"].status == "OK"
    assert "answered in" in by_name["provider openai:gpt-5-mini"].detail
    assert by_name["tier standard"].status == "OK"
    assert by_name["discord"].status == "OK"
    assert by_name["intents"].status == "OK"
    assert by_name[f"server Test Guild ({fake_discord.guild.id})"].status == "OK"
    assert report.code == 0, [c.line() for c in report.checks if c.status != "OK"]
    assert fake_discord.unknown_calls == []
    assert fake_discord.gateway_frames == []  # REST only: no gateway connection


async def test_online_problems_are_named(
    fake_discord: FakeDiscord, llmock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _aupgrade()
    _online_env(monkeypatch, fake_discord, llmock)
    llmock.outage(status=401, provider="openai")
    fake_discord.application_flags = 0  # the Message Content intent is off
    role = fake_discord.guild.roles["coterie"]
    role["permissions"] = str(int(role["permissions"]) & ~(1 << 29))  # no Manage Webhooks
    report = await doctor()
    by_name = {c.name: c for c in report.checks}
    provider = by_name["provider openai:gpt-5-mini"]
    assert provider.status == "FAIL" and provider.fix and "OPENAI_API_KEY" in provider.fix
    assert by_name["tier standard"].status == "FAIL"
    assert by_name["intents"].status == "FAIL" and "Message Content" in (
        by_name["intents"].fix or ""
    )
    guild = by_name[f"server Test Guild ({fake_discord.guild.id})"]
    assert guild.status == "WARN" and "Manage Webhooks (personas speak as the bot" in guild.detail
    assert report.code == 2


async def test_a_rejected_token_fails(
    fake_discord: FakeDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _aupgrade()
    monkeypatch.setenv("DISCORD_TOKEN", fake_discord.token[:-4] + "nope")
    report = await doctor(offline=False)
    [check] = [c for c in report.checks if c.name == "discord"]
    assert check.status == "FAIL" and "rejected" in check.detail


async def test_postgres_database_is_checked(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_url.replace("postgresql+asyncpg://", "postgresql://"))
    report = await doctor(offline=True)
    by_name = {c.name: c for c in report.checks}
    assert by_name["database"].status == "OK" and "PostgreSQL" in by_name["database"].detail
    assert by_name["schema"].status == "OK"
    assert by_name["instance"].status == "OK"


# --- the scheduler ---------------------------------------------------------------------


async def _schedule(tmp_path: Path, cron: str) -> int:
    """One skill with one schedule, through the stores (as /skill schedule saves it)."""
    from executor.agent import Caller, Privilege
    from skills.model import SkillSpec
    from skills.schedules import ScheduleStore
    from skills.store import SkillStore

    db = Database.open(f"sqlite:///{tmp_path / 'data' / 'coterie.db'}")
    try:
        await db.upgrade()
        owner = Caller(user_id="42", privilege=Privilege.ADMIN, guild_id="1")
        skills = SkillStore(db.sessions)
        await skills.save("1", "digest", SkillSpec(prompt="What changed?"), by=owner)
        skill = await skills.get("1", "digest")
        assert skill is not None
        info = await ScheduleStore(db.sessions).create(
            skill_id=skill.id, guild_id="1", channel_id="2", created_by="42", cron=cron
        )
        return info.id
    finally:
        await db.close()


async def test_the_schedules_the_scheduler_would_run(tmp_path: Path) -> None:
    await _schedule(tmp_path, "0 9 * * *")
    report = await doctor(offline=True)
    [check] = [c for c in report.checks if c.name == "scheduler"]
    assert check.status == "OK" and "1 enabled schedule(s)" in check.detail


async def test_a_schedule_that_cannot_be_scheduled_fails(tmp_path: Path) -> None:
    import sqlite3

    schedule_id = await _schedule(tmp_path, "0 9 * * *")
    conn = sqlite3.connect(tmp_path / "data" / "coterie.db")
    conn.execute("UPDATE schedules SET timezone = 'Mars/Olympus_Mons' WHERE id = ?", (schedule_id,))
    conn.commit()
    conn.close()
    report = await doctor(offline=True)
    [check] = [c for c in report.checks if c.name == f"schedule #{schedule_id}"]
    assert check.status == "FAIL" and "cannot be scheduled" in check.detail


async def test_a_running_coteries_jobs_match_the_table(tmp_path: Path) -> None:
    schedule_id = await _schedule(tmp_path, "0 9 * * *")
    url = f"sqlite:///{tmp_path / 'data' / 'coterie.db'}"
    async with await InstanceLock.acquire(url):  # as if `coterie run` held it
        # The table has no next run for it: the running scheduler never built its job.
        report = await doctor(offline=True)
        [check] = [c for c in report.checks if c.name == f"schedule #{schedule_id}"]
        assert check.status == "WARN" and "restart coterie" in (check.fix or "")
        # What the scheduler writes when it builds the job: the doctor agrees.
        from datetime import UTC, datetime

        from skills.scheduler import SkillScheduler
        from skills.schedules import ScheduleStore

        db = Database.open(url)
        try:
            store = ScheduleStore(db.sessions)
            [info] = await store.enabled()

            async def fire(*args: Any) -> Any:
                raise AssertionError("nothing fires here")

            _, trigger, _ = SkillScheduler(store, fire)._triggers(info)
            await store.set_next_runs(
                {schedule_id: trigger.get_next_fire_time(None, datetime.now(UTC))}
            )
        finally:
            await db.close()
        report = await doctor(offline=True)
        assert [c.status for c in report.checks if c.name == "scheduler"] == ["OK"]
        assert not [c for c in report.checks if c.name.startswith("schedule #")]
