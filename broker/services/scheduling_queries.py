"""Queries the scheduling loop needs: what holds resources, what waits, quotas and accounting.

Queries only; the transactions belong to `broker.services.scheduling`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, NamedTuple, Sequence

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import defer
from sqlmodel import Session

from broker.db import one_of, pairs_in
from broker.models import (
    HOLDING, Attempt, Department, GpuSample, Job, JobStatus, Ledger, Node, Placement, Pool, Project, QuotaRow,
)

_HOLDING = [s.value for s in HOLDING]


def departments(session: Session) -> Sequence[Department]:
    return session.execute(select(Department).order_by(Department.id)).scalars().all()


def projects(session: Session) -> Sequence[Project]:
    return session.execute(select(Project).order_by(Project.id)).scalars().all()


def pools(session: Session) -> Sequence[Pool]:
    return session.execute(select(Pool).order_by(Pool.name)).scalars().all()


def nodes(session: Session) -> Sequence[Node]:
    return session.execute(select(Node).order_by(Node.id)).scalars().all()


def holding_nodes(session: Session, ids: Iterable[str]) -> set[str]:
    """Those of these nodes that hold a worker of an attempt holding resources."""
    ids = sorted(set(ids))
    if not ids:
        return set()
    return set(session.execute(select(Placement.node_id).join(
        Job, (Job.id == Placement.job_id) & (Job.attempt == Placement.attempt))
        .where(Placement.node_id.in_(ids), Job.status.in_(_HOLDING))).scalars().all())


def node_pools_locked(session: Session, ids: Iterable[str]) -> dict[str, str]:
    """Current pool of these nodes, share-locked until the transaction ends (PostgreSQL; SQLite
    serializes writers anyway): an admin's move of one of them waits for our commit."""
    ids = sorted(set(ids))
    if not ids:
        return {}
    q = select(Node.id, Node.pool).where(Node.id.in_(ids)).with_for_update(read=True)
    return {nid: pool for nid, pool in session.execute(q).all()}


def quota_rows(session: Session) -> Sequence[QuotaRow]:
    return session.execute(select(QuotaRow).order_by(QuotaRow.id)).scalars().all()


def admitted_jobs(session: Session) -> Sequence[Job]:
    """Jobs admitted and not yet launched (ADMITTED), by id."""
    return session.execute(select(Job).where(Job.status == JobStatus.ADMITTED.value).order_by(Job.id)).scalars().all()


def holding_jobs(session: Session) -> Sequence[Job]:
    """Jobs whose current attempt holds (or may still hold) resources."""
    return session.execute(select(Job).where(Job.status.in_(_HOLDING)).order_by(Job.id)).scalars().all()


def preemption_counts(session: Session, job_ids: Sequence[str]) -> dict[str, int]:
    """Preempted attempts per job (only jobs past their first attempt can have any)."""
    out: dict[str, int] = {}
    for k in range(0, len(job_ids), 500):
        chunk = job_ids[k:k + 500]
        out.update(session.execute(
            select(Attempt.job_id, func.count()).where(one_of(session, Attempt.job_id, chunk),
                                                       Attempt.status == JobStatus.PREEMPTED.value)
            .group_by(Attempt.job_id)).all())
    return out


def pending_jobs(session: Session) -> Sequence[Job]:
    """The queue, as the scheduling cycle needs it: without the columns only a launch reads
    (command, env, secret names), which on a deep queue were a third of the JSON decoded per
    tick. Touching one of them on these rows raises instead of loading it row by row."""
    return session.execute(
        select(Job).where(Job.status == JobStatus.PENDING.value).order_by(Job.submit_time, Job.id)
        .options(defer(Job.command, raiseload=True), defer(Job.env, raiseload=True),
                 defer(Job.secrets, raiseload=True))
    ).scalars().all()


def placements_of(session: Session, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], list[Placement]]:
    """Placements per (job_id, attempt), ranks in order."""
    keys = list(keys)
    out: dict[tuple[str, int], list[Placement]] = defaultdict(list)
    for i in range(0, len(keys), 500):
        chunk = keys[i:i + 500]
        rows = session.execute(
            select(Placement).where(pairs_in(session, Placement.job_id, Placement.attempt, chunk))
            .order_by(Placement.job_id, Placement.attempt, Placement.rank)
        ).scalars().all()
        for p in rows:
            out[(p.job_id, p.attempt)].append(p)
    return out


def ledger_since(session: Session, since: float) -> Sequence[Ledger]:
    """Ledger rows that overlap [since, now]: still running, or ended after `since`."""
    return session.execute(
        select(Ledger).where(or_(Ledger.ended_at.is_(None), Ledger.ended_at >= since))
    ).scalars().all()


class LedgerRow(NamedTuple):
    """The columns of a ledger row that budget and fair-share usage read."""

    job_id: str
    attempt: int
    project_id: str
    department_id: str
    gpus: int
    started_at: float
    ended_at: float | None

    @property
    def key(self) -> tuple[str, int]:
        return (self.job_id, self.attempt)


_LEDGER_USAGE = (Ledger.job_id, Ledger.attempt, Ledger.project_id, Ledger.department_id, Ledger.gpus,
                 Ledger.started_at, Ledger.ended_at)


def ledger_rows_since(session: Session, since: float) -> list[LedgerRow]:
    """`ledger_since` as plain `LedgerRow`s (no ORM objects: the loop reads thousands)."""
    return [LedgerRow._make(r) for r in session.execute(
        select(*_LEDGER_USAGE).where(or_(Ledger.ended_at.is_(None), Ledger.ended_at >= since)))]


def open_ledger_rows(session: Session) -> list[LedgerRow]:
    """Ledger rows of attempts that still hold their GPUs."""
    return [LedgerRow._make(r) for r in session.execute(select(*_LEDGER_USAGE).where(Ledger.ended_at.is_(None)))]


def ledger_rows_of(session: Session, keys: Iterable[tuple[str, int]]) -> list[LedgerRow]:
    """The ledger rows of these (job id, attempt) keys that exist."""
    keys = set(keys)
    ids = sorted({k[0] for k in keys})
    out = []
    for i in range(0, len(ids), 500):
        out += [r for r in map(LedgerRow._make, session.execute(
            select(*_LEDGER_USAGE).where(one_of(session, Ledger.job_id, ids[i:i + 500])))) if r.key in keys]
    return out


def closed_ledger_count(session: Session, since: float, until: float) -> tuple[int, int]:
    """(rows, GPUs) of the ledger rows that ended within [since, until]."""
    n, gpus = session.execute(select(func.count(), func.coalesce(func.sum(Ledger.gpus), 0)).where(
        Ledger.ended_at.is_not(None), Ledger.ended_at >= since, Ledger.ended_at <= until)).one()
    return int(n), int(gpus)


def preload(session: Session, keys: Sequence[tuple[str, int]], models: Sequence[type] = (Attempt, Placement, Ledger)
            ) -> None:
    """Load the jobs and these rows (current attempts, placements, ledger rows: what the observe
    pass may touch; a launch needs the attempts only) of these (job id, attempt) keys into the
    session's identity map, a few SELECTs per 500 keys: the pass that follows finds them with
    `session.get` instead of one SELECT per row and job."""
    keys = list(keys)
    nums = {Attempt: Attempt.number, Placement: Placement.attempt, Ledger: Ledger.attempt}
    # The identity map holds its objects weakly: the rows are kept alive with the session.
    held = session.info.setdefault("preloaded", [])
    for i in range(0, len(keys), 500):
        chunk = keys[i:i + 500]
        ids = [k[0] for k in chunk]
        held += session.execute(select(Job).where(one_of(session, Job.id, ids))).scalars().all()
        for model in models:
            held += session.execute(select(model).where(pairs_in(session, model.job_id, nums[model], chunk))).scalars().all()


def open_ledger(session: Session, job_id: str, attempt: int) -> Ledger | None:
    return session.get(Ledger, (job_id, attempt))


def mark_attempts_seen(session: Session, keys: Sequence[tuple[str, int]], at: float) -> None:
    """Record that these (job id, attempt) attempts' workers were running at `at` (never moves
    backwards): one UPDATE per 500 attempts, not one per attempt."""
    keys = list(keys)
    for i in range(0, len(keys), 500):
        session.execute(update(Attempt).where(pairs_in(session, Attempt.job_id, Attempt.number, keys[i:i + 500]),
                                              or_(Attempt.last_seen_at.is_(None), Attempt.last_seen_at < at))
                        .values(last_seen_at=at))


def last_sample_of(session: Session, job_id: str, since: float) -> float | None:
    """The newest GPU sample an agent attributed to the job since `since` (index job_id, ts)."""
    return session.execute(select(func.max(GpuSample.ts)).where(GpuSample.job_id == job_id,
                                                                 GpuSample.ts >= since)).scalar_one_or_none()


def recent_runtimes(session: Session, since: float, per_project: int) -> dict[str, list[tuple[float, float]]]:
    """(runtime_s, max_runtime_s) of finished, successful attempts since `since`, newest first,
    at most `per_project` per project: what a project's runtime ratio is learned from."""
    rows = session.execute(
        select(Ledger.project_id, Ledger.started_at, Ledger.ended_at, Job.max_runtime_s)
        .join(Job, (Job.id == Ledger.job_id) & (Job.attempt == Ledger.attempt))
        .where(Ledger.ended_at.is_not(None), Ledger.ended_at >= since, Job.status == JobStatus.SUCCEEDED.value)
        .order_by(Ledger.ended_at.desc())
    ).all()
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for project, started, ended, requested in rows:
        if len(out[project]) < per_project:
            out[project].append((ended - started, requested))
    return dict(out)
