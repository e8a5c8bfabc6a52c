"""What build_app wires that no single unit shows."""

from __future__ import annotations

from pathlib import Path

from bot.app import build_app
from bot.settings import Settings
from executor.agent import RunnableAgent
from executor.models.base import ModelProfile
from executor.testing import ScriptedModel
from tests.discord.test_app_e2e import ScriptedTiers


async def test_whether_a_persona_sees_images_comes_from_its_models_profile(tmp_path: Path) -> None:
    blind = ScriptedModel(profile=ModelProfile(provider="local", sees_images=False))
    seeing = ScriptedModel(profile=ModelProfile(provider="anthropic", sees_images=True))
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'c.db'}",
    )
    app = await build_app(settings, resolver=ScriptedTiers(blind))
    try:
        assert app.chat.sees_images(RunnableAgent(tier="standard")) is False
        assert app.chat.sees_images(RunnableAgent(model=seeing)) is True
    finally:
        await app.close()
