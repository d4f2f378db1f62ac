"""Queries of the service tables (and of the jobs that are a service's replicas)."""

from __future__ import annotations

from typing import Sequence

from sqlalchemy import delete, func, select
from sqlmodel import Session

from broker.models import (TERMINAL, Job, JobStatus, Node, Placement, Pool, QuotaRow, Service, ServiceEvent,
                           ServiceLoad, ServiceReplica, ServiceRevision)


def get(s: Session, service_id: str) -> Service | None:
    return s.get(Service, service_id) if len(service_id) <= 32 else None


def by_name(s: Session, project: str, name: str) -> Service | None:
    return s.execute(select(Service).where(Service.project_id == project, Service.name == name)).scalars().first()


def page(s: Session, projects: Sequence[str] | None) -> Sequence[Service]:
    q = select(Service).order_by(Service.project_id, Service.name)
    if projects is not None:
        q = q.where(Service.project_id.in_(list(projects)))
    return s.execute(q).scalars().all()


def all_services(s: Session) -> Sequence[Service]:
    return s.execute(select(Service).order_by(Service.id)).scalars().all()


def revision(s: Session, service_id: str, number: int) -> ServiceRevision | None:
    return s.get(ServiceRevision, (service_id, number))


def revisions(s: Session, service_id: str) -> Sequence[ServiceRevision]:
    return s.execute(select(ServiceRevision).where(ServiceRevision.service_id == service_id)
                     .order_by(ServiceRevision.number.desc())).scalars().all()


def replica_jobs(s: Session, service_id: str, *, live_only: bool = False) -> Sequence[Job]:
    """The service's replica jobs, oldest first; `live_only`: not ended (cancel requested or not)."""
    q = select(Job).where(Job.service_id == service_id)
    if live_only:
        q = q.where(Job.status.not_in([st.value for st in TERMINAL]))
    return s.execute(q.order_by(Job.created_at, Job.id)).scalars().all()


def recent_replica_jobs(s: Session, service_id: str, limit: int = 20) -> Sequence[Job]:
    return s.execute(select(Job).where(Job.service_id == service_id, Job.status.in_([st.value for st in TERMINAL]))
                     .order_by(Job.created_at.desc()).limit(limit)).scalars().all()


def replica_rows(s: Session, service_id: str) -> dict[str, ServiceReplica]:
    rows = s.execute(select(ServiceReplica).where(ServiceReplica.service_id == service_id)).scalars().all()
    return {r.job_id: r for r in rows}


def ready_endpoints(s: Session) -> list[tuple[str, str, str, int]]:
    """(service id, job id, host, port) of every ready replica."""
    return [tuple(r) for r in s.execute(select(ServiceReplica.service_id, ServiceReplica.job_id, ServiceReplica.host,
                                               ServiceReplica.port).where(ServiceReplica.ready.is_(True))).all()]


def ready_endpoints_of(engine) -> list[tuple[str, str, str, int]]:
    """`ready_endpoints` in a session of its own (the proxy's router refresh)."""
    with Session(engine) as s:
        return ready_endpoints(s)


def placements(s: Session, keys: Sequence[tuple[str, int]]) -> dict[str, Placement]:
    """Rank 0's placement of each (job id, attempt)."""
    if not keys:
        return {}
    ids = [k[0] for k in keys]
    want = set(keys)
    rows = s.execute(select(Placement).where(Placement.job_id.in_(ids), Placement.rank == 0)).scalars().all()
    return {p.job_id: p for p in rows if (p.job_id, p.attempt) in want}


def node_addresses(s: Session) -> dict[str, str]:
    return {n.id: (n.address or n.hostname or n.id) for n in s.execute(select(Node)).scalars().all()}


def events(s: Session, service_id: str, *, after: int = 0, limit: int = 500) -> Sequence[ServiceEvent]:
    return s.execute(select(ServiceEvent).where(ServiceEvent.service_id == service_id, ServiceEvent.id > after)
                     .order_by(ServiceEvent.id).limit(limit)).scalars().all()


def operation_guarantee(s: Session, project: str, pool: str | None) -> dict[str, float | None]:
    """The project's guaranteed amount per resource over the operation pools (or the one pinned
    pool); None for a resource without any quota row there (not managed)."""
    pools = [p.name for p in s.execute(select(Pool)).scalars().all()
             if (p.name == pool if pool else p.workload_class == "operation")]
    out: dict[str, float | None] = {"gpus": None, "cpus": None, "memory_gb": None}
    if not pools:
        return out
    rows = s.execute(select(QuotaRow.resource, func.sum(QuotaRow.guaranteed)).where(
        QuotaRow.owner_kind == "project", QuotaRow.owner_id == project, QuotaRow.pool.in_(pools))
        .group_by(QuotaRow.resource)).all()
    for res, g in rows:
        out[res] = float(g or 0.0)
    return out


def budget_shortfall(s: Session, project: str, gpus: float, now: float, horizon_s: float) -> dict | None:
    """None when the project's and its department's GPU-hour budgets this month cover `gpus` for
    one more `horizon_s`; else the numbers of the first owner that cannot (spent as the
    scheduler counts it)."""
    from broker.models import Department, Ledger, Project
    from broker.services.snapshot import month_start, usage_from_ledger

    p = s.get(Project, project)
    if p is None:
        return None
    d = s.get(Department, p.department_id)
    owners = [(k, o.id, o.budget_gpu_hours) for k, o in (("project", p), ("department", d))
              if o is not None and o.budget_gpu_hours is not None]
    if not owners:
        return None
    period = month_start(now)
    rows = s.execute(select(Ledger).where(Ledger.department_id == p.department_id,
                                          (Ledger.ended_at.is_(None)) | (Ledger.ended_at >= period))).scalars().all()
    spent_p, spent_d, _ = usage_from_ledger(rows, now, 86400.0)
    need = gpus * horizon_s / 3600.0
    for kind, oid, budget in owners:
        spent = (spent_p if kind == "project" else spent_d).get(oid, 0.0)
        if spent + need > budget + 1e-9:
            return {"owner": oid, "kind": kind, "budget_gpu_hours": budget, "spent_gpu_hours": round(spent, 3),
                    "next_period_gpu_hours": round(need, 3)}
    return None


def remove_service(s: Session, service_id: str) -> None:
    """Delete a service and what belongs only to it (its replica jobs stay, as ended jobs)."""
    for table in (ServiceReplica, ServiceEvent, ServiceRevision):
        s.execute(delete(table).where(table.service_id == service_id))
    s.execute(delete(Service).where(Service.id == service_id))


def count_live(s: Session, service_id: str) -> int:
    return s.execute(select(func.count()).select_from(Job).where(
        Job.service_id == service_id, Job.status.not_in([st.value for st in TERMINAL]))).scalar_one()


PENDING = JobStatus.PENDING.value


# ---------------------------------------------------------------------- every broker's load
def publish_loads(s: Session, broker_id: str, loads: dict[str, float], now: float) -> None:
    """This broker's requests in flight per service: rows written (or rewritten), zeros removed.
    Only this broker writes its rows, so update-then-insert cannot race with itself."""
    for sid, n in loads.items():
        if n <= 0:
            s.execute(delete(ServiceLoad).where(ServiceLoad.broker_id == broker_id, ServiceLoad.service_id == sid))
            continue
        row = s.get(ServiceLoad, (broker_id, sid))
        if row is None:
            s.add(ServiceLoad(broker_id=broker_id, service_id=sid, inflight=n, updated_at=now))
        else:
            row.inflight, row.updated_at = n, now
            s.add(row)


def other_loads(s: Session, broker_id: str, since: float) -> dict[str, float]:
    """Requests in flight per service on every other broker that published since `since`."""
    rows = s.execute(select(ServiceLoad.service_id, func.sum(ServiceLoad.inflight))
                     .where(ServiceLoad.broker_id != broker_id, ServiceLoad.updated_at >= since)
                     .group_by(ServiceLoad.service_id)).all()
    return {sid: float(n or 0) for sid, n in rows}


def forget_loads(s: Session, before: float) -> int:
    """Rows of brokers that stopped publishing long ago (killed, partitioned)."""
    return s.execute(delete(ServiceLoad).where(ServiceLoad.updated_at < before)).rowcount or 0
