"""Fixtures for the skills tests: a migrated database (SQLite, and PostgreSQL when
``COTERIE_TEST_POSTGRES_URL`` is set), a tool registry, personas and a skill store."""

from __future__ import annotations

import pytest

from adapters.storage.db import Database
from executor.agent import Caller, Privilege
from executor.tools.registry import ToolRegistry, tool
from personas.markdown import load_builtins
from personas.store import PersonaStore
from skills.store import SkillStore
from tests.storage.dbs import db, pg_db, pg_url, sqlite_db, sqlite_template

__all__ = ["db", "pg_db", "pg_url", "sqlite_db", "sqlite_template"]

GUILD = "1"
TIERS = ("fast", "standard", "smart")
ALICE = Caller(user_id="100", display_name="Alice", guild_id=GUILD)
BOB = Caller(user_id="200", display_name="Bob", guild_id=GUILD)
ADMIN = Caller(user_id="900", display_name="Admin", privilege=Privilege.ADMIN, guild_id=GUILD)


def make_tools(
    *, enabled: tuple[str, ...] = ("current_time", "web_fetch", "shell")
) -> ToolRegistry:
    @tool
    def current_time() -> str:
        """The time."""
        return "now"

    @tool
    def web_fetch(url: str) -> str:
        """Fetch."""
        return url

    @tool(min_privilege=Privilege.ADMIN)
    def shell(command: str) -> str:
        """Admins only."""
        return command

    @tool
    def disabled_one() -> str:
        """Not enabled."""
        return ""

    return ToolRegistry([current_time, web_fetch, shell, disabled_one], enabled=enabled)


@pytest.fixture
def registry() -> ToolRegistry:
    return make_tools()


@pytest.fixture
def personas(db: Database, registry: ToolRegistry) -> PersonaStore:
    return PersonaStore(db.sessions, load_builtins(), tools=registry, tiers=TIERS)


@pytest.fixture
def store(db: Database, registry: ToolRegistry, personas: PersonaStore) -> SkillStore:
    return SkillStore(db.sessions, tools=registry, tiers=TIERS, personas=personas)
