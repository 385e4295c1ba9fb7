"""Alembic, the same way for every service: ``python -m <service> migrate`` calls :func:`upgrade`,
and each service's ``migrations/env.py`` is one call to :func:`run_env`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Literal

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from chassis.db import UtcDateTime, make_engine, messaging_metadata
from chassis.tls import postgres_connect


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Migrations hold plain column types, not the project's Python classes."""
    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def config(migrations_dir: Path, database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(migrations_dir: Path, database_url: str, revision: str = "head") -> None:
    make_engine(database_url)  # creates the SQLite file's folder
    command.upgrade(config(migrations_dir, database_url), revision)


def revision(migrations_dir: Path, database_url: str, message: str) -> None:
    """Autogenerate a migration from the models (a developer's command)."""
    command.revision(config(migrations_dir, database_url), message=message, autogenerate=True)


def run_env(metadata: MetaData, *more: MetaData) -> None:
    """The body of a service's ``env.py``: migrate its own tables and the messaging tables."""
    target = [metadata, messaging_metadata, *more]
    url = context.config.get_main_option("sqlalchemy.url")

    def run(connection: Connection) -> None:
        context.configure(
            connection=connection, target_metadata=target, render_as_batch=True, render_item=_render_item
        )
        with context.begin_transaction():
            context.run_migrations()

    async def online() -> None:
        if url is None:
            raise RuntimeError("alembic's config has no sqlalchemy.url")
        plain_url, connect_args = postgres_connect(url)  # TLS parameters (chassis.tls)
        engine = create_async_engine(plain_url, poolclass=pool.NullPool, connect_args=connect_args)
        async with engine.connect() as connection:
            await connection.run_sync(run)
        await engine.dispose()

    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target, literal_binds=True, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    else:
        asyncio.run(online())
