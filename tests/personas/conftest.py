from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlmodel import SQLModel

import personas.tables  # noqa: F401  (registers the table on the metadata)
from executor.agent import Privilege
from executor.tools.registry import ToolRegistry, tool
from memory.notes import InMemoryNoteStore
from memory.tools import memory_source
from personas.markdown import load_builtins
from personas.store import PersonaStore


def make_tools() -> ToolRegistry:
    @tool
    def current_time() -> str:
        """The time."""
        return "now"

    @tool
    def calculator(expression: str) -> str:
        """Evaluate."""
        return expression

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

    tools = [current_time, calculator, web_fetch, shell, disabled_one]
    # The memory tools: the built-ins grant them (an override of one keeps them).
    return ToolRegistry(
        tools,
        enabled=["current_time", "calculator", "web_fetch", "shell"],
        sources=[memory_source(InMemoryNoteStore())],
    )


@pytest.fixture
def registry() -> ToolRegistry:
    return make_tools()


@pytest.fixture
async def sessions(tmp_path: Any) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'personas.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)
    try:
        yield async_sessionmaker(engine, expire_on_commit=False)
    finally:
        await engine.dispose()


@pytest.fixture
def store(sessions: async_sessionmaker[AsyncSession], registry: ToolRegistry) -> PersonaStore:
    return PersonaStore(
        sessions, load_builtins(), tools=registry, tiers=("fast", "standard", "smart")
    )
