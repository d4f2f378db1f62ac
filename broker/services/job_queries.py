"""Job queries: rows in, rows out. The caller owns the session and the transaction."""

from __future__ import annotations

import base64
import contextlib
import functools
import threading
from typing import Any, Sequence

import orjson
from sqlalchemy import and_, bindparam, insert, or_, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from broker.errors import BrokerError, Invalid, RateLimited
from broker.models import Attempt, IdempotencyKey, Job, JobEvent, Placement

JOBS = Job.__table__
EVENTS = JobEvent.__table__


def get(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def attempts(session: Session, job_id: str) -> Sequence[Attempt]:
    return session.execute(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number)).scalars().all()


def placements(session: Session, job_id: str) -> Sequence[Placement]:
    q = select(Placement).where(Placement.job_id == job_id).order_by(Placement.attempt, Placement.rank)
    return session.execute(q).scalars().all()


def events(session: Session, job_id: str, *, after: int = 0, limit: int = 500) -> Sequence[JobEvent]:
    q = (select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after)
         .order_by(JobEvent.id).limit(limit))
    return session.execute(q).scalars().all()


def encode_cursor(created_at: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at!r}|{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, job_id = raw.split("|", 1)
        return float(ts), job_id
    except Exception:  # any malformed cursor is the client's error
        raise Invalid("cursor is malformed; pass next_cursor from a previous page unchanged",
                      code="BAD_CURSOR") from None


def page(session: Session, *, projects: Sequence[str] = (), statuses: Sequence[str] = (),
         cursor: str | None = None, limit: int = 100) -> tuple[list[Job], str | None]:
    """Newest first, keyset-paginated on (created_at, id): stable under concurrent inserts."""
    q = select(Job)
    if projects:
        q = q.where(Job.project_id.in_(list(projects)))
    if statuses:
        q = q.where(Job.status.in_(list(statuses)))
    if cursor:
        ts, jid = decode_cursor(cursor)
        q = q.where(or_(Job.created_at < ts, and_(Job.created_at == ts, Job.id < jid)))
    q = q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    rows = list(session.execute(q).scalars().all())
    nxt = None
    if len(rows) > limit:
        rows = rows[:limit]
        nxt = encode_cursor(rows[-1].created_at, rows[-1].id)
    return rows, nxt


def insert_jobs(conn: Connection, job_rows: list[dict], event_rows: list[dict]) -> None:
    """The group-commit writer's hot path; rows must carry the same keys (values may be None).

    PostgreSQL: ONE statement for the whole batch, jobs and their events together, the rows
    passed as two JSON arrays (`json_populate_recordset`): on an autocommit connection that is
    one round trip and one WAL flush per batch, which matters most when the machine is busy and
    every round trip waits for the scheduler. Foreign keys are checked at the end of the
    statement, so events may reference jobs inserted by the same statement.
    Others: Core executemany per table (SQLite has no round trips).
    """
    if not job_rows:
        return
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(*pg_batch(job_rows, event_rows))
        return
    conn.execute(insert(JOBS), job_rows)
    if event_rows:
        conn.execute(insert(EVENTS), event_rows)


async def insert_jobs_async(aconn, job_rows: list[dict], event_rows: list[dict]) -> None:
    """`insert_jobs` for PostgreSQL on a psycopg AsyncConnection in autocommit mode (the
    group-commit writer runs it on the event loop: no thread hand-off per batch). Driver
    errors come back as SQLAlchemy's (IntegrityError...), like the sync path."""
    import psycopg

    if not job_rows:
        return
    sql, params = pg_batch(job_rows, event_rows)
    try:
        await aconn.execute(sql, params)
    except psycopg.Error as e:
        raise DBAPIError.instance(sql, None, e, psycopg.Error) from e


# ------------------------------------------------------------------ pending caps
# Every new job is counted against its project's pending cap in the transaction that stores it.
# PostgreSQL: a transaction-scoped advisory lock per project, taken in project order (two
# brokers never deadlock), serializes count + insert for that project across every broker on
# the database; the count runs in a statement after the lock (READ COMMITTED: a new snapshot),
# so it sees every job committed before the lock was granted. The count and the insert are one
# statement (`_pg_capped_sql`), and lock, insert and COMMIT go out in one pipeline: one round
# trip per batch, as before the caps. SQLite has one broker: a process lock does the same.
PENDING_LOCK_CLASS = 7301  # first key of the advisory locks (the second: hashtext(project))
PENDING_RETRY_AFTER_S = 30
_SQLITE_STORE = threading.Lock()

_PG_LOCK = "SELECT pg_advisory_xact_lock(%s, hashtext(p)) FROM unnest(%s::text[]) AS p"
_ROOM = text("SELECT p.id, COALESCE(p.max_pending, :cap), "
             "(SELECT count(*) FROM jobs j WHERE j.project_id = p.id AND j.status = 'PENDING') "
             "FROM projects p WHERE p.id IN :ids").bindparams(bindparam("ids", expanding=True))


def store_lock(conn_or_engine) -> Any:
    """Hold around a SQLite transaction that calls `store_jobs` (PostgreSQL: nothing to hold)."""
    return _SQLITE_STORE if conn_or_engine.dialect.name == "sqlite" else contextlib.nullcontext()


def store_jobs(conn: Connection, job_rows: list[dict], event_rows: list[dict], *,
               default_cap: int) -> dict[int, BrokerError]:
    """Insert the rows that fit under their projects' pending caps; returns {position: error}
    for the refused ones. Runs inside the caller's transaction (which must commit it), on
    SQLite under `store_lock`."""
    if not job_rows:
        return {}
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(_PG_LOCK, (PENDING_LOCK_CLASS, sorted({r["project_id"] for r in job_rows})))
        sql, params = pg_capped_batch(job_rows, event_rows, default_cap)
        return _refusals(job_rows, conn.exec_driver_sql(sql, params).all())
    room = conn.execute(_ROOM, {"cap": default_cap, "ids": sorted({r["project_id"] for r in job_rows})}).all()
    keep, refused = _fit(job_rows, room)
    if refused:
        job_rows = [job_rows[i] for i in keep]
        wanted = {r["id"] for r in job_rows}
        event_rows = [e for e in event_rows if e["job_id"] in wanted]
    insert_jobs(conn, job_rows, event_rows)
    return refused


async def store_jobs_async(aconn, job_rows: list[dict], event_rows: list[dict], *,
                           default_cap: int) -> dict[int, BrokerError]:
    """`store_jobs` for PostgreSQL on a psycopg AsyncConnection in autocommit mode: BEGIN, the
    locks, the capped insert and COMMIT in one pipeline (one round trip)."""
    import psycopg

    if not job_rows:
        return {}
    sql, params = pg_capped_batch(job_rows, event_rows, default_cap)
    try:
        async with aconn.pipeline():
            async with aconn.transaction():
                await aconn.execute(_PG_LOCK, (PENDING_LOCK_CLASS, sorted({r["project_id"] for r in job_rows})))
                cur = await aconn.execute(sql, params)
            got = await cur.fetchall()
    except psycopg.Error as e:
        raise DBAPIError.instance(sql, None, e, psycopg.Error) from e
    return _refusals(job_rows, got)


def pg_capped_batch(job_rows: list[dict], event_rows: list[dict], default_cap: int) -> tuple[str, tuple]:
    sql = _pg_capped_sql(tuple(job_rows[0]), tuple(event_rows[0]) if event_rows else ())
    params: tuple = (orjson.dumps(job_rows).decode(), default_cap)
    if event_rows:
        params += (orjson.dumps(event_rows).decode(),)
    return sql, params


@functools.lru_cache(maxsize=8)
def _pg_capped_sql(job_cols: tuple[str, ...], event_cols: tuple[str, ...]) -> str:
    """One statement: the batch's rows numbered per project in submission order, each
    project's room (cap minus pending, the count stopping at the cap), the rows that fit
    inserted with their events. Returns ('j', id) per inserted job and ('p', project, cap,
    pending) per project of the batch."""
    jc = ", ".join(job_cols)
    sql = ("WITH src AS (SELECT r.*, row_number() OVER (PARTITION BY r.project_id ORDER BY r.ordinality) AS k "
           "FROM json_populate_recordset(NULL::jobs, %s::json) WITH ORDINALITY AS r), "
           "room AS (SELECT p.id, c.cap, (SELECT count(*) FROM (SELECT 1 FROM jobs j WHERE j.project_id = p.id "
           "AND j.status = 'PENDING' LIMIT c.cap) t) AS n FROM projects p, "
           "LATERAL (SELECT COALESCE(p.max_pending, %s) AS cap) c WHERE p.id IN (SELECT project_id FROM src)), "
           f"ins AS (INSERT INTO jobs ({jc}) SELECT {', '.join('src.' + c for c in job_cols)} FROM src "
           "LEFT JOIN room ON room.id = src.project_id WHERE room.id IS NULL OR src.k <= room.cap - room.n "
           "RETURNING id)")
    if event_cols:
        ec = ", ".join(event_cols)
        sql += (f", ev AS (INSERT INTO job_events ({ec}) SELECT {', '.join('e.' + c for c in event_cols)} "
                "FROM json_populate_recordset(NULL::job_events, %s::json) e WHERE e.job_id IN (SELECT id FROM ins))")
    return sql + " SELECT 'j', id, 0, 0 FROM ins UNION ALL SELECT 'p', id, cap, n FROM room"


def _refusals(job_rows: list[dict], got) -> dict[int, BrokerError]:
    stored = {r[1] for r in got if r[0] == "j"}
    if len(stored) == len(job_rows):
        return {}
    room = {r[1]: (int(r[2]), int(r[3])) for r in got if r[0] == "p"}
    return {i: pending_cap_error(r["project_id"], room[r["project_id"]][1], room[r["project_id"]][0])
            for i, r in enumerate(job_rows) if r["id"] not in stored and r["project_id"] in room}


def _fit(job_rows: list[dict], room_rows) -> tuple[list[int], dict[int, BrokerError]]:
    """Positions that fit (in submission order) and errors for the rest. A project missing
    from `room_rows` (deleted meanwhile) is not capped here: its insert fails on the foreign key."""
    left = {pid: (cap - n, n, cap) for pid, cap, n in room_rows}
    keep, refused = [], {}
    for i, r in enumerate(job_rows):
        pid = r["project_id"]
        if pid not in left:
            keep.append(i)
            continue
        free, n, cap = left[pid]
        if free > 0:
            keep.append(i)
            left[pid] = (free - 1, n, cap)
        else:
            refused[i] = pending_cap_error(pid, n + (cap - n - free), cap)
    return keep, refused


def pending_cap_error(project: str, pending: int, cap: int) -> RateLimited:
    return RateLimited(f"project {project} already has {pending} pending jobs (cap {cap}); "
                       "wait for some to start or finish", code="PENDING_CAP",
                       details={"pending": pending, "max_pending": cap},
                       headers={"Retry-After": str(PENDING_RETRY_AFTER_S)})


def pg_batch(job_rows: list[dict], event_rows: list[dict]) -> tuple[str, tuple[str, ...]]:
    sql = _pg_batch_sql(tuple(job_rows[0]), tuple(event_rows[0]) if event_rows else ())
    params = (orjson.dumps(job_rows).decode(),) + ((orjson.dumps(event_rows).decode(),) if event_rows else ())
    return sql, params


@functools.lru_cache(maxsize=8)
def _pg_batch_sql(job_cols: tuple[str, ...], event_cols: tuple[str, ...]) -> str:
    jc = ", ".join(job_cols)
    jobs = f"INSERT INTO jobs ({jc}) SELECT {jc} FROM json_populate_recordset(NULL::jobs, %s::json)"
    if not event_cols:
        return jobs
    ec = ", ".join(event_cols)
    return (f"WITH j AS ({jobs}) INSERT INTO job_events ({ec}) "
            f"SELECT {ec} FROM json_populate_recordset(NULL::job_events, %s::json)")


def idempotency_key(session: Session, token_id: str, key: str) -> IdempotencyKey | None:
    q = select(IdempotencyKey).where(IdempotencyKey.token_id == token_id, IdempotencyKey.key == key)
    return session.execute(q).scalars().first()
