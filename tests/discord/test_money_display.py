"""Money is shown at the precision it has, through the real app, the real /budget and
/audit cogs, the real discord.py client and the fake Discord (issue 20: ``/budget grant
0.001`` answered "Granted $0.00" and granted $0.001; $1.50 still reads $1.50)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.app import App, build_app
from bot.settings import Settings
from executor.testing import ScriptedModel, ScriptedTiers
from tests.discord.test_admin_cogs import answer, member_option, opts, slash, text_of
from tests.fakediscord import FakeDiscord
from tests.fakediscord.plugin import BotFactory, coterie_bot


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'coterie.db'}",
        budget_default_usd=1.5,
    )
    built = await build_app(settings, resolver=ScriptedTiers(ScriptedModel()))
    try:
        yield built
    finally:
        await built.close()


@pytest.fixture
def bot_factory(app: App) -> BotFactory:
    def make(fake: FakeDiscord) -> Any:
        return coterie_bot(fake, app=app, extensions=("commands.audit", "commands.budget"))

    return make


async def test_a_fraction_of_a_cent_reads_as_itself_everywhere(
    fake_discord: FakeDiscord, discord_bot: Any, app: App
) -> None:
    fake = fake_discord
    bob, resolved = member_option(fake, "member", "bob")
    bob_id = str(fake.user("bob")["id"])

    # Discord's client lets 0.015 through the option's 0.01 minimum.
    _, got = await slash(
        fake,
        "budget",
        "grant",
        [bob, *opts({"amount": 0.015, "reason": "a test"})],
        resolved=resolved,
    )
    assert "Granted $0.015 to" in text_of(got.json["data"])
    assert (await app.budget.status(bob_id)).granted_micros == 15_000

    _, got = await slash(fake, "budget", "set", [bob, *opts({"limit": "0.001"})], resolved=resolved)
    shown = text_of(got.json["data"])
    assert "their own limit of $0.001" in shown
    assert "Limit: **$0.016** ($0.001 own limit + $0.015 granted)" in shown, shown

    _, got = await slash(fake, "budget", "show", [bob], resolved=resolved)
    assert "-# grant $0.015 by" in text_of(got.json["data"])

    inter, first = await slash(fake, "audit", "actions")
    listed = text_of(await answer(fake, inter, first))
    assert "limit $0.001" in listed and "grant $0.015: a test" in listed

    # Whole cents keep their two places.
    _, got = await slash(fake, "budget", "set", [bob, *opts({"limit": "1.50"})], resolved=resolved)
    assert "their own limit of $1.50" in text_of(got.json["data"])
    _, got = await slash(
        fake, "budget", "set", [bob, *opts({"limit": "default"})], resolved=resolved
    )
    assert "Limit: **$1.515** ($1.50 " in text_of(got.json["data"])
