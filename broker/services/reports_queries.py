"""Queries of the usage reports: ledger intervals, attempts' waits, rollup use, prices.

Each function returns plain named rows for one report window; the arithmetic (splitting at
period boundaries, grouping, percentiles, prices) is in `broker.services.reports`, pure.
`projects` narrows every query to the caller's visible projects (None: no restriction).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from sqlalchemy import and_, or_, select, text
from sqlalchemy.orm import aliased
from sqlmodel import Session

from broker.models import ApiToken, Attempt, Job, Ledger, Node, PoolPrice, Project, TelemetryMark, TokenOwner

HOUR, MINUTE = 3600, 60


@dataclass(frozen=True)
class Interval:
    """One attempt's allocation as the ledger records it: `gpus` held over [start, end)."""

    job_id: str
    attempt: int
    project: str
    department: str
    pool: str
    gpu_model: str
    user: str
    gpus: int
    start: float
    end: float  # ended_at, or accrued_to (0 GPU-seconds before the first accrual) while open
    allocated_gpu_s: float  # the ledger's own figure
    closed: bool
    preempted: bool
    checkpointable: bool


@dataclass(frozen=True)
class Wait:
    """One admission: how long the attempt queued (since submit, or since its previous attempt
    ended) and the ledger dimensions it ran under."""

    job_id: str
    attempt: int
    admitted_at: float
    wait_s: float
    project: str
    department: str
    pool: str
    gpu_model: str
    user: str


@dataclass(frozen=True)
class Use:
    """Rollup use of one job on one node in one bucket, in GPU-seconds and joules."""

    bucket: float
    job_id: str
    node_id: str
    used_gpu_s: float
    energy_j: float


def _user_expr():
    return TokenOwner.user_id


def _scoped(stmt, projects: Optional[Sequence[str]], column):
    if projects is None:
        return stmt
    return stmt.where(column.in_(list(projects) or [""]))


def intervals(s: Session, start: float, end: float, projects: Optional[Sequence[str]]) -> list[Interval]:
    """Ledger rows overlapping [start, end) (open rows up to what they accrued)."""
    stmt = (select(Ledger, Job.owner_token_id, Job.checkpointable, Attempt.status, TokenOwner.user_id, ApiToken.name)
            .join(Job, Job.id == Ledger.job_id)
            .outerjoin(Attempt, and_(Attempt.job_id == Ledger.job_id, Attempt.number == Ledger.attempt))
            .outerjoin(TokenOwner, TokenOwner.token_id == Job.owner_token_id)
            .outerjoin(ApiToken, ApiToken.id == Job.owner_token_id)
            .where(Ledger.started_at < end,
                   or_(Ledger.ended_at >= start, and_(Ledger.ended_at.is_(None), Ledger.accrued_to > start))))
    out = []
    for led, token, ckpt, status, user, token_name in s.execute(_scoped(stmt, projects, Ledger.project_id)).all():
        closed = led.ended_at is not None
        stop = led.ended_at if closed else (led.accrued_to if led.accrued_to is not None else led.started_at)
        out.append(Interval(led.job_id, led.attempt, led.project_id, led.department_id, led.pool, led.gpu_model,
                            who(user, token, token_name), led.gpus, led.started_at, max(led.started_at, stop),
                            led.allocated_gpu_s, closed, status == "PREEMPTED", bool(ckpt)))
    return out


def who(user: Optional[str], token_id: Optional[str], token_name: Optional[str]) -> str:
    """The user a job is reported under: its token's owner, else the token (by name), else ""."""
    if user:
        return user
    if token_id:
        return f"token:{token_name or token_id}"
    return ""


def waits(s: Session, start: float, end: float, projects: Optional[Sequence[str]]) -> list[Wait]:
    """Attempts admitted in [start, end) with their queue time."""
    prev = aliased(Attempt)
    stmt = (select(Attempt.job_id, Attempt.number, Attempt.admitted_at, Job.submit_time, prev.ended_at,
                   Ledger.project_id, Ledger.department_id, Ledger.pool, Ledger.gpu_model,
                   Job.owner_token_id, TokenOwner.user_id, ApiToken.name)
            .join(Job, Job.id == Attempt.job_id)
            .join(Ledger, and_(Ledger.job_id == Attempt.job_id, Ledger.attempt == Attempt.number))
            .outerjoin(prev, and_(prev.job_id == Attempt.job_id, prev.number == Attempt.number - 1))
            .outerjoin(TokenOwner, TokenOwner.token_id == Job.owner_token_id)
            .outerjoin(ApiToken, ApiToken.id == Job.owner_token_id)
            .where(Attempt.admitted_at >= start, Attempt.admitted_at < end))
    out = []
    for (jid, n, adm, submit, prev_end, proj, dept, pool, model, token, user, tname) in \
            s.execute(_scoped(stmt, projects, Ledger.project_id)).all():
        since = submit if n == 1 or prev_end is None else prev_end
        out.append(Wait(jid, n, adm, max(0.0, adm - since), proj, dept, pool, model, who(user, token, tname)))
    return out


def usage(s: Session, start: float, end: float, projects: Optional[Sequence[str]]) -> list[Use]:
    """Attributed GPU use and energy per (bucket, job, node) from the rollups: hourly rows
    before the hour rollups' watermark, minute rows after it.

    A rollup row is one GPU's samples in one bucket attributed to one job; each sample stands
    for bucket / (all samples of that GPU in the bucket) seconds, so a GPU shared by two jobs (or
    idle part of the bucket) splits the bucket by samples: used = sum(util) / 100 x that,
    energy = sum(power) x that."""
    mark = s.get(TelemetryMark, "rollup_1h")
    hwm = start if mark is None else max(start, min(end, mark.value))
    out: list[Use] = []
    for res, a, b in ((HOUR, start, hwm), (MINUTE, hwm, end)):
        if b <= a:
            continue
        scope = ""
        params: dict = {"r": res, "a": a, "b": b}
        if projects is not None:
            names = [f":p{i}" for i in range(len(projects))] or ["''"]
            scope = f" AND j.project_id IN ({', '.join(names)})"
            params.update({f"p{i}": p for i, p in enumerate(projects)})
        sql = (
            "SELECT r.bucket, r.job_id, r.node_id, SUM(r.util_sum / t.n), SUM(r.power_sum / t.n) "
            "FROM gpu_rollups r JOIN (SELECT node_id, gpu_index, bucket, CAST(SUM(samples) AS FLOAT) AS n "
            "FROM gpu_rollups WHERE resolution_s = :r AND bucket >= :a AND bucket < :b "
            "GROUP BY node_id, gpu_index, bucket) t "
            "ON t.node_id = r.node_id AND t.gpu_index = r.gpu_index AND t.bucket = r.bucket "
            "JOIN jobs j ON j.id = r.job_id "
            f"WHERE r.resolution_s = :r AND r.bucket >= :a AND r.bucket < :b AND r.job_id <> '' AND t.n > 0{scope} "
            "GROUP BY r.bucket, r.job_id, r.node_id")
        for bucket, jid, node, util_x, power_x in s.execute(text(sql), params).all():
            out.append(Use(float(bucket), jid, node, float(util_x or 0.0) / 100.0 * res, float(power_x or 0.0) * res))
    return out


def job_dimensions(s: Session, job_ids: Iterable[str]) -> dict[str, tuple[str, str, str]]:
    """job id -> (project, department, user) for the jobs rollup rows name."""
    ids = sorted(set(job_ids))
    out: dict[str, tuple[str, str, str]] = {}
    for i in range(0, len(ids), 500):
        rows = s.execute(
            select(Job.id, Job.project_id, Project.department_id, Job.owner_token_id, TokenOwner.user_id, ApiToken.name)
            .join(Project, Project.id == Job.project_id)
            .outerjoin(TokenOwner, TokenOwner.token_id == Job.owner_token_id)
            .outerjoin(ApiToken, ApiToken.id == Job.owner_token_id)
            .where(Job.id.in_(ids[i:i + 500]))).all()
        for jid, proj, dept, token, user, tname in rows:
            out[jid] = (proj, dept, who(user, token, tname))
    return out


def node_flavors(s: Session) -> dict[str, tuple[str, str]]:
    """node id -> (pool, GPU model)."""
    return {nid: (pool, model or "") for nid, pool, model in s.execute(select(Node.id, Node.pool, Node.gpu_model)).all()}


def prices(s: Session) -> dict[str, PoolPrice]:
    return {p.pool: p for p in s.execute(select(PoolPrice)).scalars().all()}


def visible_project_ids(s: Session, departments: Iterable[str], projects: Iterable[str]) -> list[str]:
    """Projects in any of `departments` or named in `projects` (the caller's scope as ids)."""
    deps, projs = set(departments), set(projects)
    return sorted(pid for pid, did in s.execute(select(Project.id, Project.department_id)).all()
                  if pid in projs or did in deps)


def department_projects(s: Session, department: str) -> list[str]:
    return sorted(s.execute(select(Project.id).where(Project.department_id == department)).scalars().all())
