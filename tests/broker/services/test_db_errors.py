"""`translate`: which database exceptions mean 503 DATABASE_UNAVAILABLE, 422 or a bug (None)."""

import sqlite3

import psycopg
import pytest
from sqlalchemy import exc as sa_exc

from broker.services.db_errors import translate


def wrapped(cls, orig):
    return cls("SELECT 1", {}, orig)


CASES = [
    ("psycopg connection refused", psycopg.OperationalError("connection refused"), (503, "DATABASE_UNAVAILABLE")),
    ("psycopg interface error", psycopg.InterfaceError("the connection is closed"), (503, "DATABASE_UNAVAILABLE")),
    ("sqlalchemy-wrapped psycopg", wrapped(sa_exc.OperationalError, psycopg.OperationalError("server closed")),
     (503, "DATABASE_UNAVAILABLE")),
    ("pool timeout", sa_exc.TimeoutError("QueuePool limit reached"), (503, "DATABASE_UNAVAILABLE")),
    ("sqlite locked", wrapped(sa_exc.OperationalError, sqlite3.OperationalError("database is locked")),
     (503, "DATABASE_UNAVAILABLE")),
    ("sqlite syntax error is a bug", wrapped(sa_exc.OperationalError, sqlite3.OperationalError("no such column: x")),
     None),
    ("psycopg DataError", psycopg.DataError("invalid byte sequence"), (422, "INVALID_VALUE")),
    ("wrapped DataError", wrapped(sa_exc.DataError, psycopg.DataError("NUL")), (422, "INVALID_VALUE")),
    ("integrity error is not translated", wrapped(sa_exc.IntegrityError, psycopg.IntegrityError("dup")), None),
    ("not a database error", ValueError("x"), None),
]


@pytest.mark.parametrize("name,exc,want", CASES, ids=[c[0] for c in CASES])
def test_translate(name, exc, want):
    got = translate(exc)
    assert (None if got is None else (got.status, got.code)) == want
    if got is not None and got.status == 503:
        assert int(got.headers["Retry-After"]) >= 1
