"""``coterie invite``, ``coterie run`` and ``coterie sync`` at the command line."""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from bot.cli import main
from bot.cli.discord import application_id_from_token
from tests.fakediscord import FakeDiscord

APP_ID = 1234567890123456789
TOKEN = base64.b64encode(str(APP_ID).encode()).decode().rstrip("=") + ".Gabcde.secretsecretsecret"

# Discord's documented permission bits, spelled out so a change to the invite is a decision.
EXPECTED_PERMISSIONS = (
    (1 << 10)  # View Channels
    | (1 << 11)  # Send Messages
    | (1 << 14)  # Embed Links
    | (1 << 15)  # Attach Files
    | (1 << 16)  # Read Message History
    | (1 << 29)  # Manage Webhooks (persona identities)
    | (1 << 31)  # Use Application Commands
    | (1 << 35)  # Create Public Threads
    | (1 << 38)  # Send Messages in Threads
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env or coterie.toml
    for var in ("DISCORD_TOKEN", "COTERIE_DISCORD_TOKEN", "COTERIE_APPLICATION_ID"):
        monkeypatch.delenv(var, raising=False)


def test_application_id_from_token() -> None:
    assert application_id_from_token(TOKEN) == APP_ID
    assert application_id_from_token("not a token") is None
    assert application_id_from_token("") is None


def test_invite_prints_the_url_with_exactly_the_needed_permissions(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    assert main(["invite"]) == 0
    url = urlparse(capsys.readouterr().out.strip())
    assert (url.scheme, url.netloc, url.path) == ("https", "discord.com", "/oauth2/authorize")
    query = parse_qs(url.query)
    assert query["client_id"] == [str(APP_ID)]
    assert query["scope"] == ["bot applications.commands"]
    assert int(query["permissions"][0]) == EXPECTED_PERMISSIONS


def test_invite_prefers_the_configured_application_id(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COTERIE_APPLICATION_ID", "42")
    assert main(["invite"]) == 0
    assert "client_id=42" in capsys.readouterr().out


def test_invite_without_any_id_says_what_to_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["invite"]) != 0
    err = capsys.readouterr().err
    assert "COTERIE_APPLICATION_ID" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("verb", ["run", "sync"])
def test_verbs_without_a_token_fail_with_one_clear_line(
    verb: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([verb]) != 0
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        "coterie: set DISCORD_TOKEN to the bot token from the Discord developer portal (Bot > Token)"
    )
    assert captured.out == ""


async def test_sync_publishes_global_commands_over_rest_only(
    fake_discord: FakeDiscord, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.cli.discord import _sync

    monkeypatch.setenv("DISCORD_TOKEN", fake_discord.token)
    monkeypatch.setenv("COTERIE_DEV_GUILD_ID", str(fake_discord.guild.id))

    args = argparse.Namespace(guild=None)
    assert await _sync(args) == 0
    assert fake_discord.find_calls("PUT", "/applications/{app}/commands")
    # the dev guild is not synced by the explicit verb, and no gateway was opened
    assert fake_discord.find_calls("PUT", "/applications/{app}/guilds/{g}/commands") == []
    assert fake_discord.gateway_frames == []
    assert "global commands" in capsys.readouterr().out

    args.guild = fake_discord.guild.id
    assert await _sync(args) == 0
    assert fake_discord.find_calls(
        "PUT", f"/applications/{{app}}/guilds/{fake_discord.guild.id}/commands"
    )
    assert fake_discord.unknown_calls == []


# `coterie run` itself (signals, the drain, the lock): tests/lifecycle/.
