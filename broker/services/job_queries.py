"""Job queries: rows in, rows out. The caller owns the session and the transaction."""

from __future__ import annotations

import base64
import functools
from typing import Sequence

import orjson
from sqlalchemy import and_, insert, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from broker.errors import Invalid
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
