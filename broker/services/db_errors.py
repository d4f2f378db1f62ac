"""Database failures as broker errors: the one place that knows what a driver exception means.

Why: when the database cannot be reached (connections refused or dropped, a pool that cannot
hand out a connection, a server shutting down) the request failed for a reason the client can
simply retry later. It must get `503 DATABASE_UNAVAILABLE` with `Retry-After`, never a 500 or a
reset connection. Nothing is acknowledged that was not committed (every write path commits
before it answers); in the rare case that the connection died just after COMMIT, the job is
stored although the answer was 503, which is why the message points to the Idempotency-Key.
A value the database refuses to store (`DataError`) is the client's: 422.

The API's error handlers (`broker.api.errors`) and the submit fast path call `translate`; what
it does not recognise stays an internal error (logged, a bare 500).
"""

from __future__ import annotations

import psycopg
from sqlalchemy import exc as sa_exc

from broker.errors import BrokerError, Invalid, Unavailable

RETRY_AFTER_S = 5

# Every exception type `translate` may turn into a BrokerError (for exception handlers).
DB_EXCEPTIONS: tuple[type[BaseException], ...] = (sa_exc.DBAPIError, sa_exc.DisconnectionError,
                                                  sa_exc.TimeoutError, psycopg.Error)

# SQLite reports both "the file is busy or unreadable" and plain SQL mistakes as
# OperationalError: only the first kind means unavailable.
_SQLITE_UNAVAILABLE = ("locked", "unable to open", "disk i/o", "busy")


def database_unavailable() -> Unavailable:
    return Unavailable("the database is unavailable; retry later (a submit retried with the same "
                       "Idempotency-Key is stored at most once)",
                       code="DATABASE_UNAVAILABLE", details={"retry_after_s": RETRY_AFTER_S},
                       headers={"Retry-After": str(RETRY_AFTER_S)})


def translate(exc: BaseException) -> BrokerError | None:
    """The BrokerError a database exception stands for, or None (a bug: leave it a 500)."""
    if isinstance(exc, (sa_exc.DisconnectionError, sa_exc.TimeoutError)):
        return database_unavailable()
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return database_unavailable()
        orig = exc.orig
        if orig is None:
            return None
        if isinstance(orig, psycopg.Error):
            return translate(orig)
        if type(orig).__module__.startswith("sqlite3") and isinstance(exc, sa_exc.OperationalError):
            text = str(orig).lower()
            return database_unavailable() if any(t in text for t in _SQLITE_UNAVAILABLE) else None
        if isinstance(exc, sa_exc.DataError):
            return _refused_value()
        return None
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return database_unavailable()
    if isinstance(exc, psycopg.DataError):
        return _refused_value()
    return None


def _refused_value() -> Invalid:
    return Invalid("the database refused a value of this request (e.g. a NUL character in text)",
                   code="INVALID_VALUE")
