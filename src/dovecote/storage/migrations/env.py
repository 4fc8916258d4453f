"""Alembic environment for Dovecote's storage.

Dovecote runs its migrations itself on start (`dovecote.storage.sql.SQLStorage.open`), with
no alembic.ini: it builds an `alembic.config.Config` in code and hands over an open
connection in ``config.attributes["connection"]`` (Alembic cookbook, "Sharing a Connection
across one or more programmatic migration commands").

For writing a new revision by hand with the alembic command line, point an alembic.ini's
``script_location`` at this directory and set ``sqlalchemy.url`` to a sync URL
(``sqlite:///...``); ``alembic revision -m "..."`` then uses ``script.py.mako``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool
from sqlalchemy.engine import Connection

from dovecote.storage.schema import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things: batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """Emit SQL to stdout (`alembic upgrade head --sql`)."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with engine.connect() as connection:
        _run(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
