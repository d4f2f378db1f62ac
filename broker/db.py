"""The engine factory and migrations: SQLite (default, WAL) and PostgreSQL (psycopg 3).

Why a factory and no module-level engine: nothing opens a database at import time; the app,
the CLI and each test build their own engine from a `Settings`.

SQLite: WAL journal, `foreign_keys=ON`, `busy_timeout` so concurrent writers wait instead of
failing, `synchronous=FULL` (a commit is on disk before
it returns; group commit amortizes the fsync). PostgreSQL: `postgresql://` URLs are rewritten to `postgresql+psycopg://`.
A `?options=-csearch_path%3D<schema>` query is passed through to libpq (tests use it to get a
private schema).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import orjson
from sqlalchemy import any_, bindparam, event, func, select, tuple_
from sqlalchemy.dialects.postgresql import ARRAY as PG_ARRAY
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import NullPool
from sqlmodel import create_engine

from broker.settings import Settings


def one_of(session, column, values: Sequence):
    """`column IN values`. On PostgreSQL `column = ANY(:array)`: one parameter, so the statement's
    text is the same for any number of values (psycopg parses a statement text it has not seen,
    or one over 4 KiB, anew each time: a 500-value IN list was both, several times a tick)."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=PG_ARRAY(column.type)))
    return column.in_(list(values))


def pairs_in(session, first, second, pairs: Sequence[tuple]):
    """`(first, second) IN pairs`; on PostgreSQL against `unnest` of two arrays (see `one_of`)."""
    if session.get_bind().dialect.name == "postgresql":
        u = func.unnest(bindparam(None, [p[0] for p in pairs], type_=PG_ARRAY(first.type)),
                        bindparam(None, [p[1] for p in pairs], type_=PG_ARRAY(second.type))).table_valued("a", "b").render_derived()
        return tuple_(first, second).in_(select(u.c.a, u.c.b))
    return tuple_(first, second).in_(list(pairs))


def normalize_url(url: str) -> str:
    """Pick psycopg 3 for PostgreSQL URLs that name no driver."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(settings: Settings, *, pool_size: int | None = None) -> Engine:
    """Build the engine the settings describe (creating the SQLite file's folder)."""
    url = normalize_url(settings.database_url)
    if url.startswith("sqlite"):
        db = make_url(url).database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            json_serializer=_json_dumps,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=NullPool if db in (None, "", ":memory:") else None,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    size = pool_size or settings.db_pool_size
    return create_engine(url, pool_size=size, max_overflow=size, pool_pre_ping=True, json_serializer=_json_dumps,
                         pool_timeout=settings.db_pool_timeout_s,
                         connect_args={"connect_timeout": settings.db_connect_timeout_s})


def _json_dumps(obj) -> str:
    """JSON columns are written with orjson (the submit path writes three per job)."""
    return orjson.dumps(obj).decode()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=FULL")  # a 201 means on disk, even across power loss
    cur.close()


def alembic_config(settings: Settings, connection=None):
    """An Alembic Config pointing at broker/migrations (no alembic.ini on disk)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", normalize_url(settings.database_url).replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def migrate(settings: Settings, engine: Engine | None = None, revision: str = "head") -> None:
    """Bring the schema to `revision` (what `broker up` and the tests call). Idempotent."""
    from alembic import command

    own = engine is None
    eng = engine or make_engine(settings)
    try:
        with migration_connection(eng) as conn:
            command.upgrade(alembic_config(settings, conn), revision)
    finally:
        if own:
            eng.dispose()


def downgrade(settings: Settings, engine: Engine, revision: str) -> None:
    """Take the schema down to `revision` (an operator's rollback; data in dropped columns is lost)."""
    from alembic import command

    with migration_connection(engine) as conn:
        command.downgrade(alembic_config(settings, conn), revision)


@contextmanager
def migration_connection(engine: Engine) -> Iterator[Connection]:
    """A connection in one transaction for Alembic.

    Why foreign keys are off on SQLite while migrating: SQLite cannot alter a column, so Alembic's
    batch mode copies a table, drops the old one and renames the copy; with `foreign_keys=ON`
    dropping `projects` or `jobs` fails as soon as a row references it (every real database).
    The pragma only takes effect outside a transaction, so it is set before `begin`, and the
    migrated database is checked with `PRAGMA foreign_key_check` before the commit."""
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        if sqlite:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                yield conn
                if sqlite:
                    bad = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if bad:
                        raise RuntimeError(f"migration left rows with dangling foreign keys: {bad[:5]}")
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()
