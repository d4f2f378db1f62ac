"""Alembic environment: the broker's SQLModel metadata, run programmatically by
`broker.db.migrate(settings)` (no alembic.ini needed). A connection passed in
`config.attributes["connection"]` is used as is; otherwise the URL in `sqlalchemy.url`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool
from sqlmodel import SQLModel

import broker.models  # noqa: F401  (registers every table: catalog, jobs, tenancy, telemetry)

target_metadata = SQLModel.metadata
config = context.config


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    conn = config.attributes.get("connection")
    if conn is not None:
        _run(conn)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
