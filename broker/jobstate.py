"""The one job state machine, applied with compare-and-set.

    PENDING -> ADMITTED -> STARTING -> RUNNING -> SUCCEEDED | FAILED | CANCELLED
    ADMITTED | STARTING | RUNNING -> PREEMPTED | LOST      (workers being stopped / vanished)
    PREEMPTED | LOST -> PENDING (a new attempt, while max_retries allows) | FAILED
    any non-terminal -> CANCELLED;  PENDING -> FAILED (refused for good)

Why compare-and-set: the scheduling loop, the reconciler, the API (cancel) and a second
broker may all act on one job. Every change is `UPDATE jobs SET ..., version = version + 1
WHERE id = :id AND version = :v`; a writer that read an older version loses the race
(`transition` returns False) and must re-read. The JobEvent is written in the same
transaction, so the event log never disagrees with the row.

Invariants: terminal states are final (`InvalidTransition`, a real exception, never an
assert); `version` grows by exactly one per state change; `attempt` grows by one each time a
job goes back to PENDING; the Attempt row of the current attempt follows the job's status.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from broker.db import one_of
from broker.errors import InvalidTransition
from broker.models import HOLDING, TERMINAL, Attempt, Job, JobEvent, JobStatus

S = JobStatus

ALLOWED: Mapping[JobStatus, frozenset[JobStatus]] = {
    S.PENDING: frozenset({S.ADMITTED, S.CANCELLED, S.FAILED}),
    S.ADMITTED: frozenset({S.STARTING, S.RUNNING, S.SUCCEEDED, S.FAILED, S.CANCELLED, S.PREEMPTED, S.LOST}),
    S.STARTING: frozenset({S.RUNNING, S.SUCCEEDED, S.FAILED, S.CANCELLED, S.PREEMPTED, S.LOST}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.PREEMPTED, S.LOST}),
    S.PREEMPTED: frozenset({S.PENDING, S.FAILED, S.CANCELLED}),
    S.LOST: frozenset({S.PENDING, S.FAILED, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}

# Job columns a transition may set besides status/version (server-owned fields only).
_SETTABLE = frozenset({
    "attempt", "admitted_at", "started_at", "finished_at", "exit_code", "message",
    "pending_code", "pending_message", "pending_details", "queue_position", "estimated_start",
    "borrowing", "flavor_pool", "flavor_gpu_model", "cancel_requested_at",
})


def can_transition(frm: JobStatus | str, to: JobStatus | str) -> bool:
    return S(to) in ALLOWED[S(frm)]


def check_transition(frm: JobStatus | str, to: JobStatus | str) -> None:
    """Raise InvalidTransition unless frm -> to is an edge of the machine."""
    f, t = S(frm), S(to)
    if t not in ALLOWED[f]:
        why = "it is terminal" if f in TERMINAL else f"allowed: {sorted(s.value for s in ALLOWED[f])}"
        raise InvalidTransition(
            f"job cannot go from {f.value} to {t.value}: {why}",
            details={"from": f.value, "to": t.value},
        )


def transition(
    session: Session,
    job: Job,
    to: JobStatus | str,
    *,
    expected_version: int,
    now: float | None = None,
    message: str = "",
    event_details: Mapping[str, Any] | None = None,
    **fields: Any,
) -> bool:
    """Move `job` to `to` if its row still has `expected_version`; write the JobEvent.

    Returns False (and changes nothing) when another writer got there first. On success the
    in-memory `job` reflects the new row (without being marked dirty). Timestamps follow the
    target unless given: ADMITTED sets admitted_at, RUNNING started_at, terminal finished_at;
    PENDING (requeue) bumps `attempt` and clears the admission fields. The caller commits.
    """
    frm, to, t, values = _plan(job, to, now, message, fields)
    res = session.execute(_cas_update(frozenset(values)),
                          {"cas_id": job.id, "cas_version": expected_version, "cas_status": to.value,
                           **{f"cas_{k}": v for k, v in values.items()}})
    if res.rowcount != 1:
        return False
    _applied(session, job, frm, to, t, values, message, expected_version, event_details)
    return True


@dataclass(frozen=True)
class Move:
    """One `transition` of a batch (`transition_many`): its arguments."""

    job: Job
    to: JobStatus
    expected_version: int
    message: str = ""
    event_details: Mapping[str, Any] | None = None
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    now: float | None = None  # the time of this move, when not the batch's


def transition_many(session: Session, moves: Sequence[Move], *, now: float | None = None) -> list[bool]:
    """`transition` for each move (in order; True where it applied), with the compare-and-set of
    all of them in a few statements instead of one round trip each: the scheduling loop moves
    hundreds of jobs a tick (admissions, launches), and on PostgreSQL the round trips were most
    of its time (BENCHMARKS.md, "Scale").

    How, on PostgreSQL: the rows are locked and their versions read in one
    `SELECT ... FOR UPDATE` (ordered by id); the moves whose version still matches are applied
    with one executemany UPDATE per set of columns, each still `WHERE id = :id AND version = :v`
    (a row locked by us cannot have moved, so every one matches; if one did not, that is a bug
    and raises, and the caller's transaction is rolled back); the others return False, as
    their `transition` would. Fencing is unchanged: it is the transaction's (`Leadership.guard`
    checks at its start), and the batch runs inside the caller's transaction. SQLite (one
    writer, no round trips to save, no row locks) and batches of one take the per-move path."""
    if len(moves) < 2 or session.get_bind().dialect.name != "postgresql" \
            or len({m.job.id for m in moves}) != len(moves):
        return [transition(session, m.job, m.to, expected_version=m.expected_version, now=_or(m.now, now),
                           message=m.message, event_details=m.event_details, **m.fields) for m in moves]
    plans = [_plan(m.job, m.to, _or(m.now, now), m.message, m.fields) for m in moves]  # refuses a bad edge first
    ids = sorted(m.job.id for m in moves)
    current: dict[str, int] = {}
    for k in range(0, len(ids), 500):
        current.update(session.execute(select(Job.id, Job.version).where(one_of(session, Job.id, ids[k:k + 500]))
                                       .order_by(Job.id).with_for_update()).all())
    ok = [current.get(m.job.id) == m.expected_version for m in moves]
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    for m, (_, to, _, values), good in zip(moves, plans, ok):
        if good:
            groups.setdefault(frozenset(values), []).append(
                {"cas_id": m.job.id, "cas_version": m.expected_version, "cas_status": to.value,
                 **{f"cas_{k}": v for k, v in values.items()}})
    for columns, params in groups.items():
        matched = session.execute(_cas_update_many(columns), params).rowcount
        if matched != len(params):
            raise RuntimeError(f"compare-and-set of {len(params)} locked job rows matched {matched}")
    for m, (frm, to, t, values), good in zip(moves, plans, ok):
        if good:
            _applied(session, m.job, frm, to, t, values, m.message, m.expected_version, m.event_details)
    return ok


def _or(a: float | None, b: float | None) -> float | None:
    return b if a is None else a


def _plan(job: Job, to: JobStatus | str, now: float | None, message: str, fields: Mapping[str, Any]
          ) -> tuple[JobStatus, JobStatus, float, dict[str, Any]]:
    """(from, to, time, columns to set) of a transition; raises on an edge the machine lacks."""
    frm, to = S(job.status), S(to)
    check_transition(frm, to)
    bad = set(fields) - _SETTABLE
    if bad:
        raise ValueError(f"transition cannot set {sorted(bad)}")
    t = time.time() if now is None else now
    values: dict[str, Any] = dict(fields)
    if to is S.ADMITTED:
        values.setdefault("admitted_at", t)
        values.setdefault("pending_code", None)
        values.setdefault("pending_message", "")
        values.setdefault("pending_details", {})
        values.setdefault("queue_position", None)
        values.setdefault("estimated_start", None)
    elif to is S.RUNNING:
        values.setdefault("started_at", t)
    elif to in TERMINAL:
        values.setdefault("finished_at", t)
    elif to is S.PENDING:
        values.setdefault("attempt", job.attempt + 1)
        for k in ("admitted_at", "started_at", "flavor_pool", "flavor_gpu_model"):
            values.setdefault(k, None)
        values.setdefault("borrowing", False)
    if message:
        values.setdefault("message", message)
    return frm, to, t, values


def _applied(session: Session, job: Job, frm: JobStatus, to: JobStatus, t: float, values: Mapping[str, Any],
             message: str, expected_version: int, event_details: Mapping[str, Any] | None) -> None:
    """What follows a compare-and-set that matched: the attempt row, the event, the object."""
    _follow_attempt(session, job, frm, to, t, values, message)
    session.add(JobEvent(
        job_id=job.id, ts=t, kind="transition", from_status=frm.value, to_status=to.value,
        attempt=job.attempt, message=message, details=dict(event_details or {}),
    ))
    for k, v in {"status": to.value, "version": expected_version + 1, **values}.items():
        set_committed_value(job, k, v)


@functools.lru_cache(maxsize=64)
def _cas_update_many(columns: frozenset[str]):
    """`_cas_update` in Core (an executemany; the ORM would make it a bulk update by key)."""
    jobs = Job.__table__
    return (update(jobs).where(jobs.c.id == bindparam("cas_id"), jobs.c.version == bindparam("cas_version"))
            .values(status=bindparam("cas_status"), version=jobs.c.version + 1,
                    **{k: bindparam(f"cas_{k}") for k in sorted(columns)}))


@functools.lru_cache(maxsize=64)
def _cas_update(columns: frozenset[str]):
    """The compare-and-set UPDATE setting these columns, built once per set of columns (the
    loop runs thousands per tick; building the statement cost more than executing it)."""
    return (update(Job)
            .where(Job.id == bindparam("cas_id"), Job.version == bindparam("cas_version"))
            .values(status=bindparam("cas_status"), version=Job.version + 1,
                    **{k: bindparam(f"cas_{k}") for k in sorted(columns)})
            .execution_options(synchronize_session=False))


def requeue_or_fail(
    session: Session, job: Job, *, expected_version: int, now: float | None = None, message: str = ""
) -> JobStatus | None:
    """PREEMPTED/LOST -> PENDING as a new attempt while retries remain, else FAILED.

    Retries are for infrastructure failures: a preempted job always goes back to the queue (the
    scheduler took its resources; that is not the job's failure), and only LOST attempts count
    against `max_retries` - a job preempted three times and then lost once has used one retry.
    Returns the new status, or None on a lost race.
    """
    losses = 0
    if job.status == S.LOST.value:
        session.flush()  # the attempt just marked LOST counts (the loop writes with autoflush off)
        losses = session.execute(select(func.count()).select_from(Attempt).where(
            Attempt.job_id == job.id, Attempt.status == S.LOST.value)).scalar_one()
        losses = max(losses, 1)  # this attempt, even where its row is missing
    if losses - 1 < job.max_retries or job.status == S.PREEMPTED.value:
        to = S.PENDING
        msg = message or f"requeued as attempt {job.attempt + 1} after {job.status}"
    else:
        to = S.FAILED
        msg = message or (f"{job.status} {losses} time(s) and no retries left (max_retries={job.max_retries})")
    ok = transition(session, job, to, expected_version=expected_version, now=now, message=msg)
    return to if ok else None


def record_event(session: Session, job_id: str, kind: str, *, message: str = "",
                 details: Mapping[str, Any] | None = None, attempt: int | None = None,
                 now: float | None = None) -> None:
    """An event that is not a status change (cancel requested, pending reason changed...)."""
    session.add(JobEvent(job_id=job_id, ts=time.time() if now is None else now, kind=kind,
                         attempt=attempt, message=message, details=dict(details or {})))


def _follow_attempt(session: Session, job: Job, frm: JobStatus, to: JobStatus, t: float,
                    values: Mapping[str, Any], message: str) -> None:
    """Keep the current attempt's row in step: created at admission, closed when it ends."""
    if to is S.ADMITTED:
        # A new row, never an existing one: a job's attempt number grows each time it goes
        # back to PENDING, so no row of (job, attempt) exists when it is admitted (an add goes
        # out batched at the flush; a merge would first SELECT the row).
        session.add(Attempt(job_id=job.id, number=job.attempt, status=to.value, admitted_at=t))
        return
    if frm not in HOLDING:
        return  # PENDING -> CANCELLED/FAILED: no attempt ran
    att = session.get(Attempt, (job.id, job.attempt))
    if att is None:
        return
    if frm in (S.PREEMPTED, S.LOST):
        # The attempt ended as preempted/lost; the job moves on (requeue, fail, cancel).
        if att.ended_at is None:
            att.ended_at = t
    else:
        att.status = to.value
        if to is S.RUNNING and att.started_at is None:
            att.started_at = values.get("started_at", t)
        if to in TERMINAL and att.ended_at is None:
            att.ended_at = t
        if "exit_code" in values:
            att.exit_code = values["exit_code"]
        if message:
            att.reason = message
    session.add(att)


def update_fields(session: Session, job: Job, *, expected_version: int, event_kind: str = "",
                  message: str = "", now: float | None = None, **fields: Any) -> bool:
    """Compare-and-set a non-status change (e.g. `cancel_requested_at`), bumping `version`.

    Returns False on a lost race. Writes a JobEvent of `event_kind` when given.
    """
    bad = set(fields) - _SETTABLE
    if bad:
        raise ValueError(f"update_fields cannot set {sorted(bad)}")
    res = session.execute(
        update(Job).where(Job.id == job.id, Job.version == expected_version)
        .values(version=Job.version + 1, **fields).execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:
        return False
    if event_kind:
        record_event(session, job.id, event_kind, message=message, attempt=job.attempt, now=now)
    for k, v in {"version": expected_version + 1, **fields}.items():
        set_committed_value(job, k, v)
    return True


def set_pending_reasons(session: Session, reasons: Sequence[Mapping[str, Any]]) -> None:
    """`set_pending_reason` for many jobs in one executemany statement (the scheduling loop
    writes thousands per tick on a long queue: one round trip instead of one per job). Each
    mapping has job_id, code, message, details, queue_position, estimated_start."""
    if not reasons:
        return
    if session.get_bind().dialect.name == "postgresql":
        # One UPDATE ... FROM unnest(arrays) per 2,000 rows: an executemany is still one
        # statement per row for the server and for psycopg's per-statement Python (writing
        # 1,000 reasons a tick was the largest database item of a tick at depth).
        dumps = session.get_bind().dialect._json_serializer or json.dumps
        for k in range(0, len(reasons), 2000):
            chunk = reasons[k:k + 2000]
            session.execute(_PG_SET_REASONS, {
                "ids": [r["job_id"] for r in chunk], "codes": [r["code"] for r in chunk],
                "messages": [r.get("message", "") for r in chunk],
                "details": [dumps(dict(r.get("details") or {})) for r in chunk],
                "pos": [r.get("queue_position") for r in chunk],
                "eta": [None if r.get("estimated_start") is None else float(r["estimated_start"]) for r in chunk],
                "pending": S.PENDING.value})
        return
    jobs = Job.__table__  # Core, not the ORM: a plain executemany, not a bulk update by key
    session.execute(
        update(jobs).where(jobs.c.id == bindparam("b_id"), jobs.c.status == S.PENDING.value)
        .values(pending_code=bindparam("b_code"), pending_message=bindparam("b_message"),
                pending_details=bindparam("b_details"), queue_position=bindparam("b_pos"),
                estimated_start=bindparam("b_eta")),
        [{"b_id": r["job_id"], "b_code": r["code"], "b_message": r.get("message", ""),
          "b_details": dict(r.get("details") or {}), "b_pos": r.get("queue_position"),
          "b_eta": r.get("estimated_start")} for r in reasons],
    )


_PG_SET_REASONS = text(
    "UPDATE jobs AS j SET pending_code = v.code, pending_message = v.message, pending_details = v.details::json, "
    "queue_position = v.pos, estimated_start = v.eta "
    "FROM unnest(CAST(:ids AS text[]), CAST(:codes AS text[]), CAST(:messages AS text[]), CAST(:details AS text[]), "
    "CAST(:pos AS integer[]), CAST(:eta AS double precision[])) AS v(id, code, message, details, pos, eta) "
    "WHERE j.id = v.id AND j.status = :pending")


def set_pending_reason(session: Session, job_id: str, *, code: str | None, message: str = "",
                       details: Mapping[str, Any] | None = None, queue_position: int | None = None,
                       estimated_start: float | None = None) -> bool:
    """Record why a PENDING job waits. Informational: no version bump (so it never makes a
    concurrent cancel or admission lose its compare-and-set), and only while still PENDING."""
    res = session.execute(
        update(Job).where(Job.id == job_id, Job.status == S.PENDING.value)
        .values(pending_code=code, pending_message=message, pending_details=dict(details or {}),
                queue_position=queue_position, estimated_start=estimated_start)
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1
