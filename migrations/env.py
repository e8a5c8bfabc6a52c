"""Alembic's environment: async, every table module, batch mode for SQLite.

Two ways in:

* ``coterie db upgrade`` (``adapters.storage.db.Database.upgrade``) hands us an open
  connection in ``config.attributes["connection"]``: we migrate on it and the caller
  commits.
* The ``alembic`` command line (``alembic -c migrations/alembic.ini ...``) takes the URL
  from ``-x url=...``, else ``DATABASE_URL``, else the default SQLite file, and opens
  the engine through ``adapters.storage.db.Database`` so the SQLite pragmas apply.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import adapters.storage.tables
import memory.tables
import personas.tables
import skills.tables
from adapters.storage.db import DEFAULT_URL, IMMEDIATE, Database

# every table registers itself
_ = (adapters.storage.tables, memory.tables, personas.tables, skills.tables)

# Full-text search structures the migrations make outside the models (0006): FTS5's
# table and its shadow tables on SQLite, the generated tsvector column on PostgreSQL.
FTS_TABLES = "memory_notes_fts"
SEARCH_COLUMN = ("memory_notes", "search")


def _include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    if type_ == "table" and name is not None and name.startswith(FTS_TABLES):
        return False
    if (
        type_ == "column"
        and reflected
        and (getattr(obj.table, "name", None), name) == SEARCH_COLUMN
    ):
        return False
    return not (type_ == "index" and name == "ix_memory_notes_search")


config = context.config
target_metadata = SQLModel.metadata


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        include_object=_include_object,
        **kwargs,
    )


def _url() -> str:
    return context.get_x_argument(as_dictionary=True).get("url") or os.environ.get(
        "DATABASE_URL", os.environ.get("COTERIE_DATABASE_URL", DEFAULT_URL)
    )


def do_run_migrations(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    db = Database.open(_url())
    try:
        async with db.engine.connect() as connection:
            connection = await connection.execution_options(**IMMEDIATE)
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await db.close()


def run_migrations_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


given = config.attributes.get("connection")
if given is not None:
    do_run_migrations(given)
elif context.is_offline_mode():
    run_migrations_offline()
else:
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    asyncio.run(run_async_migrations())
