"""The real composition root for a test: ``build_app`` on a SQLite file in the test's
directory, every model tier one scripted model (``executor.testing.ScriptedTiers``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bot.app import App, build_app
from bot.settings import Settings
from executor.testing import ScriptedModel, ScriptedTiers


@asynccontextmanager
async def scripted_app(
    tmp_path: Path, *, model: ScriptedModel | None = None, **settings: Any
) -> AsyncIterator[tuple[App, ScriptedModel]]:
    """The app and its model, closed on the way out. ``settings`` override the
    defaults: no ``.env``, ``tmp_path/coterie.toml`` (write it first to use one), the
    database ``tmp_path/coterie.db``, a $1 default budget."""
    model = model or ScriptedModel()
    values: dict[str, Any] = {
        "config_file": tmp_path / "coterie.toml",
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'coterie.db'}",
        "budget_default_usd": 1.0,
    }
    values.update(settings)
    built = await build_app(Settings(_env_file=None, **values), resolver=ScriptedTiers(model))
    try:
        yield built, model
    finally:
        await built.close()
