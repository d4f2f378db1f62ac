"""Leadership: which of several brokers on one database runs the scheduling loop and the
periodic tasks.

Every broker serves the API (submits, reads, agent reports); exactly one, the leader, runs
`broker.tasks` (scheduling, reconcile, ledger usage, audit sealing, checkpoint cleanup, node
heartbeats, rollups, retention). Two implementations, chosen by the database:

**PostgreSQL: `PgLeadership`.** The leader holds a session-level advisory lock (key L) on a
connection of its own, outside the pool. PostgreSQL releases the lock the moment that session
ends: the process was killed (the kernel closes its socket), the connection was cut, or the
server's TCP keepalives (set on that session: ~10 s) gave up on a silent peer. The others try
the lock every `leader_poll_s`, so a killed leader is replaced within about that long.

Fencing: a leader that lost its session may not know it yet (it is between two heartbeats, or
its tick is mid-way). Every transaction of the scheduling loop therefore starts with `fence()`:
it takes a *shared* transaction-level advisory lock F and checks in `pg_locks` that L is still
granted to this broker's own session; otherwise it raises `NotLeader` and the transaction
rolls back. A new leader, after winning L, takes F *exclusively* once before it acts: it waits
for every fenced transaction of the old leader that is still in flight to end, and every later
one fails its check. So admissions, launches (a fenced transaction precedes each launch call),
preemptions and ledger rows are never written by two leaders on one state, on top of the
compare-and-set on the job's version that every job change already does.

**SQLite: `SqliteLeadership`.** SQLite stays single-broker: the broker takes an exclusive
`flock` on `<database file>.lock` when its tasks start and refuses to start when another
process holds it (`AnotherBroker`). The kernel releases a flock when its process dies, so a
`kill -9` never leaves a stale lock behind. It is always the leader once started; `fence()` does
nothing.

Invariants: at most one broker per database is leader at any instant that matters (a stale one
can run code but cannot commit a fenced transaction); `is_leader` turns False within
`leader_lease_s` of the last successful heartbeat, even when the heartbeat itself hangs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import zlib
from pathlib import Path
from typing import Callable

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import NullPool

from broker.errors import BrokerError
from broker.settings import Settings

log = logging.getLogger("broker.leadership")

NAMESPACE = 0x0B40CE  # first key of both advisory locks: "the broker's leadership"
_FENCE = 1  # second key of F is the schema's key + 1

# Server-side keepalives of the lock's session: a leader that vanished without closing its
# socket (power loss, a cut cable) loses the lock after about idle + interval * count seconds.
_KEEPALIVE = {"tcp_keepalives_idle": 5, "tcp_keepalives_interval": 2, "tcp_keepalives_count": 3}


class NotLeader(BrokerError):
    """This broker is not (or no longer) the leader: the fenced transaction must not commit."""
    status, code = 503, "NOT_LEADER"


class AnotherBroker(BrokerError):
    """Another broker already runs on this SQLite database."""
    status, code = 409, "ANOTHER_BROKER"


class Leadership:
    """What the tasks, the scheduling loop and the health checks need to know."""

    mode = "single"

    def __init__(self) -> None:
        self._on_change: Callable[[bool], None] | None = None
        self.started = False
        self.since: float | None = None  # when this broker became leader (epoch seconds)
        self.epoch = 0  # how many times this broker became leader

    @property
    def is_leader(self) -> bool:
        return self.started

    def start(self, on_change: Callable[[bool], None] | None = None) -> None:
        """Join the election (the periodic tasks call this when they start)."""
        self._on_change = on_change
        self.started = True

    def stop(self) -> None:
        self.started = False

    def fence(self, conn: Connection) -> None:
        """Raise `NotLeader` unless this broker leads, checked inside `conn`'s transaction.

        A leadership never started fences nothing: that is an app without periodic tasks whose
        loop a test drives by hand, the only one that runs the loop then."""

    def describe(self) -> dict:
        return {"mode": self.mode, "leader": self.is_leader, "since": self.since, "epoch": self.epoch}

    def guard(self, session) -> None:
        """Fence every transaction of `session` (a SQLAlchemy/SQLModel Session): the check runs
        as the first statement of each transaction it begins."""
        event.listen(session, "after_begin", lambda _s, _tx, conn: self.fence(conn))


class StaticLeadership(Leadership):
    """Always the leader, no lock: a bare app over an in-memory database, and unit tests."""

    mode = "static"


class SqliteLeadership(Leadership):
    """One broker per SQLite file, enforced with a flock on `<file>.lock`."""

    mode = "sqlite"

    def __init__(self, db_path: Path) -> None:
        super().__init__()
        self.path = Path(str(db_path) + ".lock")
        self._held = False

    def start(self, on_change: Callable[[bool], None] | None = None) -> None:
        with _HELD_LOCK:
            held = _HELD.get(self.path)
            if held is None:
                held = _HELD[self.path] = [self._lock_file(), 0]
            held[1] += 1
        self._held = True
        self.since, self.epoch = time.time(), 1
        super().start(on_change)
        log.info("SQLite database: this broker is the only one (lock %s); run two brokers on PostgreSQL only",
                 self.path)

    def stop(self) -> None:
        super().stop()
        if not getattr(self, "_held", False):
            return
        self._held = False
        with _HELD_LOCK:
            held = _HELD.get(self.path)
            if held is not None:
                held[1] -= 1
                if held[1] <= 0:
                    os.close(held[0])  # releases the flock
                    del _HELD[self.path]

    def _lock_file(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise AnotherBroker(
                f"another broker (pid {holder or '?'}) runs on this SQLite database; SQLite is single-broker: "
                "use PostgreSQL (BROKER_DATABASE_URL) to run two", details={"lock": str(self.path)}) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return fd


# The flock is per process: apps assembled twice in one process (tests with two clients) share
# it; a second process is refused.
_HELD: dict[Path, list] = {}
_HELD_LOCK = threading.Lock()


class PgLeadership(Leadership):
    """Leader election by a PostgreSQL advisory lock held on a dedicated connection."""

    mode = "postgresql"

    def __init__(self, engine: Engine, *, poll_s: float = 0.5, lease_s: float = 5.0,
                 takeover_wait_s: float = 30.0) -> None:
        super().__init__()
        self.engine = engine
        self.poll_s, self.lease_s, self.takeover_wait_s = poll_s, lease_s, takeover_wait_s
        self._own = create_engine(engine.url, poolclass=NullPool,
                                  connect_args={"connect_timeout": 3, "keepalives": 1, "keepalives_idle": 5,
                                                "keepalives_interval": 2, "keepalives_count": 2})
        self._conn: Connection | None = None
        self._pid: int | None = None  # backend pid of the session that holds L
        self._key: int | None = None
        self._last_ok = 0.0  # monotonic time of the last successful heartbeat as leader
        self._leading = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ state
    @property
    def is_leader(self) -> bool:
        return self.started and self._leading and time.monotonic() - self._last_ok < self.lease_s

    def describe(self) -> dict:
        return {**super().describe(), "session_pid": self._pid if self._leading else None}

    def start(self, on_change: Callable[[bool], None] | None = None) -> None:
        super().start(on_change)
        log.info("PostgreSQL database: leader election by advisory lock (poll %.1f s, lease %.1f s)",
                 self.poll_s, self.lease_s)
        self._step()  # decide at once: a lone broker leads before its first tick
        self._thread = threading.Thread(target=self._run, name="leadership", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        super().stop()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._demote("stopping")
        self._own.dispose()

    # ------------------------------------------------------------------ fencing
    def fence(self, conn: Connection) -> None:
        if not self.started:
            return
        if not self.is_leader or self._pid is None or self._key is None:
            raise NotLeader("this broker is not the leader")
        conn.execute(text("SELECT pg_advisory_xact_lock_shared(:a, :f)"), {"a": NAMESPACE, "f": self._key + _FENCE})
        held = conn.execute(text(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = :pid "
            "AND classid = :a AND objid = :b AND objsubid = 2 "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
            {"pid": self._pid, "a": NAMESPACE, "b": self._key & 0xFFFFFFFF}).first()
        if held is None:
            self._leading = False
            raise NotLeader("this broker lost the leadership")

    # ------------------------------------------------------------------ the election loop
    def _run(self) -> None:
        while not self._stop.wait(self.poll_s if not self._leading else min(1.0, self.lease_s / 3)):
            self._step()

    def _step(self) -> None:
        try:
            if self._conn is None:
                self._connect()
            if self._leading:
                self._conn.execute(text("SELECT 1"))
                self._last_ok = time.monotonic()
                return
            won = self._conn.execute(text("SELECT pg_try_advisory_lock(:a, :b)"),
                                     {"a": NAMESPACE, "b": self._key}).scalar()
            if not won:
                return
            # Wait out the old leader's fenced transactions still in flight (see the module doc).
            self._conn.execute(text(f"SET lock_timeout = '{int(self.takeover_wait_s * 1000)}ms'"))
            self._conn.execute(text("SELECT pg_advisory_lock(:a, :f)"), {"a": NAMESPACE, "f": self._key + _FENCE})
            self._conn.execute(text("SELECT pg_advisory_unlock(:a, :f)"), {"a": NAMESPACE, "f": self._key + _FENCE})
            self._conn.execute(text("SET lock_timeout = 0"))
            self._last_ok = time.monotonic()
            self._leading, self.since, self.epoch = True, time.time(), self.epoch + 1
            log.info("this broker is now the leader (session %s)", self._pid)
            self._notify(True)
        except Exception as e:
            self._demote(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")

    def _connect(self) -> None:
        conn = self._own.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            for k, v in _KEEPALIVE.items():
                conn.execute(text(f"SET {k} = {int(v)}"))
            self._pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
            schema = conn.execute(text("SELECT current_schema()")).scalar() or ""
            # One leader per schema (tests and the benchmarks put many brokers in one database).
            self._key = zlib.crc32(schema.encode()) & 0x7FFFFFFE
        except Exception:
            conn.close()
            raise
        self._conn = conn

    def _demote(self, why: str) -> None:
        was = self._leading
        self._leading = False
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()  # never return a session that may hold L to anyone
                conn.close()
            except Exception as e:  # the connection is already broken: nothing left to release
                log.debug("closing the lost leader connection: %s", e)
        if was:
            log.warning("this broker is no longer the leader: %s", why)
            self._notify(False)

    def _notify(self, leading: bool) -> None:
        if self._on_change is not None:
            try:
                self._on_change(leading)
            except Exception:
                log.exception("leadership change callback failed")


def leadership_for(settings: Settings, engine: Engine) -> Leadership:
    """The leadership the database calls for."""
    if engine.dialect.name == "postgresql":
        return PgLeadership(engine, poll_s=settings.leader_poll_s, lease_s=settings.leader_lease_s)
    db = make_url(str(engine.url)).database
    if engine.dialect.name == "sqlite" and db and db != ":memory:":
        return SqliteLeadership(Path(db).resolve())
    return StaticLeadership()


def _read(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 32).decode(errors="replace").strip()
    except OSError:
        return ""
