"""Job queries: rows in, rows out. The caller owns the session and the transaction."""

from __future__ import annotations

import base64

import orjson
from typing import Sequence

from sqlalchemy import JSON, and_, insert, or_, select
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
    """The group-commit writer's hot path. PostgreSQL: `COPY ... FROM STDIN` per table (one
    round trip, adaptation in C; measured about 3x less CPU per job than executemany in
    pipeline mode). Others: Core executemany. Rows must carry every column (`None` allowed)."""
    if conn.dialect.name == "postgresql":
        _copy(conn, JOBS, job_rows)
        _copy(conn, EVENTS, event_rows)
        return
    if job_rows:
        conn.execute(insert(JOBS), job_rows)
    if event_rows:
        conn.execute(insert(EVENTS), event_rows)


def _copy(conn: Connection, table, rows: list[dict]) -> None:
    if not rows:
        return
    cols = [c.name for c in table.columns if c.name in rows[0]]
    json_cols = {c.name for c in table.columns if isinstance(c.type, JSON)}
    raw = conn.connection.driver_connection  # psycopg.Connection, inside the SQLAlchemy transaction
    sql = f'COPY {table.name} ({", ".join(cols)}) FROM STDIN'
    try:
        with raw.cursor() as cur, cur.copy(sql) as cp:
            for r in rows:
                cp.write_row([orjson.dumps(r[c]).decode() if c in json_cols else r[c] for c in cols])
    except conn.dialect.loaded_dbapi.Error as e:  # surface it as SQLAlchemy does (IntegrityError...)
        raise DBAPIError.instance(sql, None, e, conn.dialect.loaded_dbapi.Error) from e


def idempotency_key(session: Session, token_id: str, key: str) -> IdempotencyKey | None:
    q = select(IdempotencyKey).where(IdempotencyKey.token_id == token_id, IdempotencyKey.key == key)
    return session.execute(q).scalars().first()
