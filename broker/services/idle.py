"""Idle-GPU detection and reclaim: "in operation is not the same as in use".

Per pool an admin sets an `IdlePolicy`: an allocation is idle when every reading of every GPU
it holds stayed below `util_below_pct` utilization and `memory_below_mib` GPU memory for
`window_s`. The periodic `check_idle` (leader only, every minute) then:

1. flags it: an `idle_allocations` row, a job event `idle_flagged`, a notification
   `allocation.idle`; the metrics count it (`broker_idle_flags_total`, the open ones in
   `broker_idle_allocations_flagged`) and `GET /api/v1/idle-allocations` lists it;
2. clears the flag when the GPUs get busy again (event `idle_cleared`) or the attempt ends;
3. reclaims it where the pool's policy says `reclaim` and other jobs wait for that pool: the
   job goes RUNNING -> PREEMPTED with compare-and-set (event code `IDLE_RECLAIM`), exactly as
   a victim of the scheduler would; the scheduling loop's observe step then sends the usual
   notice (SIGTERM, the pool's grace, SIGKILL), requeues the job without using a retry
   (checkpointable jobs resume from their checkpoint) and its GPUs go to the queue. Unlike a
   scheduler victim, which keeps its place in the queue, a job reclaimed for idleness re-enters
   it as of the reclaim (`submit_time` moves to then; the event keeps the old one): otherwise
   the oldest job in the queue would be the reclaimed one, and it would get its GPUs back.

Operation work is never reclaimed for idleness, only flagged and reported.

Why "every reading below" rather than the mean: a job that computes in bursts is not idle;
and why a coverage requirement (the readings must span 80 % of the window): an agent that
just came up has not seen enough to call anything idle. The readings are the attributed raw
GPU samples of the attempt (the ones the job view uses); one grouped query per distinct
window, never a query per job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, select, text, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from broker import jobstate
from broker.auth.authn import Principal
from broker.auth.authz import Authz
from broker.auth.policy import Action, Resource
from broker.errors import Invalid, NotFound
from broker.models import IdleAllocation, IdlePolicy, Job, JobStatus, Pool
from broker.services.admin import audit
from broker.services.admin.audit import Caller
from broker.services.leadership import Leadership
from broker.services.notify_outbox import enqueue

COVERAGE = 0.8  # the readings must span this share of the window
RECLAIM_CODE = "IDLE_RECLAIM"


@dataclass
class IdleReport:
    flagged: list[str] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    reclaimed: list[str] = field(default_factory=list)


def check_idle(engine: Engine, now: float, *, leader: Leadership | None = None) -> IdleReport:
    """One pass over the running jobs of pools with a policy (see the module docstring)."""
    rep = IdleReport()
    with _session(engine, leader) as s:
        policies = {p.pool: p for p in s.execute(select(IdlePolicy)).scalars()}
        if not policies and s.execute(select(IdleAllocation.job_id).where(
                IdleAllocation.cleared_at.is_(None)).limit(1)).first() is None:
            return rep  # no pool asks, nothing open: no scan of the running jobs and samples
        running = [j for j in s.execute(select(Job).where(Job.status == JobStatus.RUNNING.value)).scalars()]
        open_flags = {(f.job_id, f.attempt): f for f in s.execute(
            select(IdleAllocation).where(IdleAllocation.cleared_at.is_(None))).scalars()}
        pool_of = {(j.id, j.attempt): j.flavor_pool or j.pool or "" for j in running}
        stats: dict[tuple[str, int], tuple] = {}
        for window in {p.window_s for p in policies.values()}:
            for row in _job_stats(s, now - window):
                key = (row[0], int(row[1]))
                pol = policies.get(pool_of.get(key, ""))
                if pol is not None and pol.window_s == window:
                    stats[key] = tuple(row[2:])
        running_keys = {(j.id, j.attempt) for j in running}
        for key, flag in open_flags.items():  # the attempt ended or moved on: close its flag
            if key not in running_keys:
                flag.cleared_at = now
                s.add(flag)
        for job in running:
            pool = job.flavor_pool or job.pool or ""
            pol = policies.get(pool)
            if pol is None:
                continue
            key = (job.id, job.attempt)
            st = stats.get(key)
            idle = _is_idle(job, st, pol, now)
            flag = open_flags.get(key)
            if idle and flag is None:
                util_max, mem_max = st[0], st[1]
                flag = IdleAllocation(job_id=job.id, attempt=job.attempt, project_id=job.project_id, pool=pool,
                                      workload_class=job.workload_class, gpus=job.gpus * job.workers,
                                      flagged_at=now, util_max_pct=_r(util_max), memory_max_mib=_r(mem_max))
                flag = s.merge(flag)  # one row per attempt: a second idle spell reopens it
                msg = (f"GPUs idle for {pol.window_s / 60:.0f} min: utilization at most {_r(util_max)} % "
                       f"(< {pol.util_below_pct:g} %), memory at most {_r(mem_max)} MiB (< {pol.memory_below_mib:g} MiB)")
                jobstate.record_event(s, job.id, "idle_flagged", message=msg, attempt=job.attempt, now=now,
                                      details={"util_max_pct": _r(util_max), "memory_max_mib": _r(mem_max),
                                               "window_s": pol.window_s, "pool": pool})
                enqueue(s, "allocation.idle", job.project_id, {"job_id": job.id, "name": job.name, "pool": pool,
                                                               "gpus": job.gpus * job.workers, "message": msg}, now=now)
                rep.flagged.append(job.id)
            elif st is not None and not idle and flag is not None and _busy(st, pol):
                flag.cleared_at = now
                s.add(flag)
                jobstate.record_event(s, job.id, "idle_cleared", message="GPUs busy again", attempt=job.attempt,
                                      now=now)
                rep.cleared.append(job.id)
                flag = None
            if flag is not None and flag.reclaimed_at is None and pol.reclaim \
                    and job.workload_class == "innovation" and _others_wait(s, job, pool):
                why = (f"reclaimed: its GPUs stayed idle for {pol.window_s / 60:.0f} min while other jobs wait "
                       f"(pool {pool}); it is requeued")
                queued_since = job.submit_time
                if jobstate.transition(s, job, JobStatus.PREEMPTED, expected_version=job.version, now=now,
                                       message=why, event_details={"code": RECLAIM_CODE, "pool": pool,
                                                                   "submit_time_before": queued_since}):
                    # back of the queue: its GPUs are for those who waited (a scheduler victim
                    # keeps its place; a job reclaimed for idleness re-enters as of now)
                    s.execute(update(Job).where(Job.id == job.id).values(submit_time=now)
                              .execution_options(synchronize_session=False))
                    flag.reclaimed_at = now
                    s.add(flag)
                    rep.reclaimed.append(job.id)
        s.commit()
    return rep


def _job_stats(s: Session, since: float) -> list:
    """(job, attempt, max util, max memory used, first ts, last ts, readings) per attempt."""
    return list(s.execute(text(
        "SELECT job_id, attempt, MAX(util_gpu), MAX(memory_used_mb), MIN(ts), MAX(ts), COUNT(*) FROM gpu_samples "
        "WHERE ts >= :since AND job_id IS NOT NULL AND job_id <> '' AND attempt IS NOT NULL "
        "GROUP BY job_id, attempt"), {"since": since}).all())


def _is_idle(job: Job, st: tuple | None, pol: IdlePolicy, now: float) -> bool:
    if st is None or job.started_at is None or job.started_at > now - pol.window_s:
        return False
    util_max, mem_max, first, last, n = st
    if not n or float(last) - float(first) < COVERAGE * pol.window_s:
        return False
    return (util_max is None or util_max < pol.util_below_pct) and (mem_max is None or mem_max < pol.memory_below_mib)


def _busy(st: tuple, pol: IdlePolicy) -> bool:
    util_max, mem_max = st[0], st[1]
    return (util_max is not None and util_max >= pol.util_below_pct) or \
        (mem_max is not None and mem_max >= pol.memory_below_mib)


def _others_wait(s: Session, job: Job, pool: str) -> bool:
    """Another job waits that this pool could run: pinned to it, or unpinned of its class."""
    row = s.get(Pool, pool)
    cls = row.workload_class if row is not None else job.workload_class
    q = select(Job.id).where(Job.status == JobStatus.PENDING.value, Job.id != job.id,
                             or_(Job.pool == pool, (Job.pool.is_(None)) & (Job.workload_class == cls))).limit(1)
    return s.execute(q).first() is not None


def _session(engine: Engine, leader: Leadership | None) -> Session:
    s = Session(engine)
    if leader is not None:
        leader.guard(s)
    return s


def _r(v) -> float | None:
    return None if v is None else round(float(v), 1)


class IdleService:
    """The API's side: list flagged allocations (narrowed to the caller's projects) and the
    per-pool policies (everyone reads them, pool admins change them)."""

    def __init__(self, engine: Engine, authz: Authz, *, clock=time.time) -> None:
        self.engine, self.authz, self.clock = engine, authz, clock

    def list(self, p: Principal, *, include_cleared: bool = False) -> dict[str, Any]:
        self.authz.require(p, Action.AGGREGATES_READ)
        visible = self.authz.visible_projects(p, resource=Resource.PROJECT)
        q = select(IdleAllocation).order_by(IdleAllocation.flagged_at.desc()).limit(1000)
        if not include_cleared:
            q = q.where(IdleAllocation.cleared_at.is_(None))
        if visible is not None:
            q = q.where(IdleAllocation.project_id.in_(visible or [""]))
        with Session(self.engine) as s:
            rows = list(s.execute(q).scalars())
        return {"items": [r.model_dump() for r in rows]}

    def policies(self, p: Principal) -> dict[str, Any]:
        self.authz.require(p, Action.POOL_READ)
        with Session(self.engine) as s:
            return {"items": [r.model_dump() for r in s.execute(select(IdlePolicy).order_by(IdlePolicy.pool)).scalars()]}

    def put_policy(self, p: Principal, caller: Caller, pool: str, *, util_below_pct: float, memory_below_mib: float,
                   window_s: float, reclaim: bool) -> dict[str, Any]:
        self.authz.require(p, Action.POOL_ADMIN)
        if not (0 < util_below_pct <= 100) or memory_below_mib < 0 or not (60 <= window_s <= 7 * 86400):
            raise Invalid("util_below_pct must be in (0, 100], memory_below_mib >= 0, window_s in [60, 604800]",
                          code="BAD_IDLE_POLICY")
        with Session(self.engine, expire_on_commit=False) as s:
            if s.get(Pool, pool) is None:
                raise NotFound(f"pool {pool!r} not found", code="POOL_NOT_FOUND")
            before = s.get(IdlePolicy, pool)
            old = before.model_dump() if before is not None else None
            row = IdlePolicy(pool=pool, util_below_pct=util_below_pct, memory_below_mib=memory_below_mib,
                             window_s=window_s, reclaim=reclaim, updated_at=self.clock())
            s.merge(row)
            audit.record(s, caller, action="idle_policy.update", target_kind="pool", target_id=pool,
                         before=old, after=row.model_dump(), clock=self.clock)
            s.commit()
        return row.model_dump()

    def delete_policy(self, p: Principal, caller: Caller, pool: str) -> None:
        self.authz.require(p, Action.POOL_ADMIN)
        with Session(self.engine) as s:
            row = s.get(IdlePolicy, pool)
            if row is None:
                raise NotFound(f"pool {pool!r} has no idle policy", code="IDLE_POLICY_NOT_FOUND")
            old = row.model_dump()
            s.delete(row)
            audit.record(s, caller, action="idle_policy.delete", target_kind="pool", target_id=pool,
                         before=old, after=None, clock=self.clock)
            s.commit()
