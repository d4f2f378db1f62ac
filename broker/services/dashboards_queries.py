"""Queries of the dashboards: each reads a bounded set of rows through an index.

- `pool_series`: the pools' own rollup rows of a range (one per pool and bucket: their totals);
- `latest_gpus`: every GPU's last rolled-up minute (utilization, memory, temperature);
- `gpu_jobs`: which job holds which GPU now (placements of holding jobs);
- `pending_groups` / `pending_jobs`: the queue by department and reason, and its head;
- `project_month`: allocated / used / energy per project since a time, from the pool rollups.

`projects` narrows a query to those project ids (None: every project). Plain rows out; the
shaping is in `broker.services.dashboards`.
"""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence

from sqlalchemy import bindparam, text
from sqlmodel import Session

from broker.models import HOLDING

_HOLDING = sorted(s.value for s in HOLDING)


def _in(column: str, name: str, values: Optional[Sequence[str]], params: dict) -> str:
    """` AND column IN :name` (expanding) when `values` narrows, else ""."""
    if values is None:
        return ""
    params[name] = list(values) or [""]
    return f" AND {column} IN :{name}"


def _run(s: Session, sql: str, params: dict):
    stmt = text(sql)
    expanding = [k for k, v in params.items() if isinstance(v, list)]
    if expanding:
        stmt = stmt.bindparams(*(bindparam(k, expanding=True) for k in expanding))
    return s.execute(stmt, params)


def pool_series(s: Session, res: int, start: float, end: float) -> list[tuple]:
    """(pool, bucket, capacity GPUs, allocated GPU-s, used GPU-s, energy J) per pool and bucket:
    the pools' own rows (their totals), through the (resolution, project, bucket) index."""
    return _run(s, "SELECT pool, bucket, capacity_gpus, allocated_gpu_s, used_gpu_s, energy_j FROM pool_rollups "
                   "WHERE resolution_s = :r AND project_id = '' AND bucket >= :a AND bucket < :b "
                   "ORDER BY bucket, pool", {"r": res, "a": start, "b": end}).all()


def project_use(s: Session, res: int, start: float, end: float, projects: Optional[Sequence[str]]) -> list[tuple]:
    """(project, allocated GPU-s, used GPU-s, energy J) per project over [start, end)."""
    params: dict[str, Any] = {"r": res, "a": start, "b": end}
    scope = _in("project_id", "projects", projects, params)
    return _run(s, "SELECT project_id, SUM(allocated_gpu_s), SUM(used_gpu_s), SUM(energy_j) FROM pool_rollups "
                   f"WHERE resolution_s = :r AND bucket >= :a AND bucket < :b AND project_id <> ''{scope} "
                   "GROUP BY project_id", params).all()


def mark(s: Session, name: str) -> Optional[float]:
    row = s.execute(text("SELECT value FROM telemetry_marks WHERE name = :n"), {"n": name}).first()
    return None if row is None else float(row[0])


def nodes(s: Session, pool: Optional[str]) -> list[dict]:
    """Nodes with their health, admin state and the agent's fatal GPU condition, by pool and id."""
    params: dict[str, Any] = {}
    where = ""
    if pool:
        where, params["pool"] = " WHERE n.pool = :pool", pool
    return [dict(r) for r in s.execute(text(
        "SELECT n.id, n.pool, n.gpu_model, n.gpus, n.state, n.state_reason, n.admin_state, n.admin_reason, "
        "n.last_heartbeat, a.fatal_reason, a.last_report_at FROM nodes n LEFT JOIN agent_state a ON a.node_id = n.id"
        f"{where} ORDER BY n.pool, n.id"), params).mappings().all()]


def latest_minute(s: Session) -> Optional[float]:
    return s.execute(text("SELECT MAX(bucket) FROM gpu_rollups WHERE resolution_s = 60")).scalar()


def latest_gpus(s: Session, bucket: float) -> list[tuple]:
    """(node, GPU, util %, memory MiB, temperature C, power W) of one minute, whole numbers,
    over the jobs that shared a GPU: averages of the readings, the highest temperature."""
    def avg(col: str) -> str:
        return f"CAST(ROUND(CASE WHEN SUM({col}_n) > 0 THEN SUM({col}_sum) / SUM({col}_n) END) AS INTEGER)"
    return s.execute(text(
        f"SELECT node_id, gpu_index, {avg('util')}, {avg('mem')}, CAST(ROUND(MAX(temp_max)) AS INTEGER), {avg('power')} "
        "FROM gpu_rollups WHERE resolution_s = 60 AND bucket = :b GROUP BY node_id, gpu_index"), {"b": bucket}).all()


def gpu_jobs(s: Session, pool: Optional[str]) -> list[tuple]:
    """(node, GPU indices, job id, name, project, status) of every placement of a holding job."""
    params: dict[str, Any] = {"holding": _HOLDING}
    where = ""
    if pool:
        where, params["pool"] = " AND n.pool = :pool", pool
    return _run(s, "SELECT p.node_id, p.gpu_indices, j.id, j.name, j.project_id, j.status FROM placements p "
                   "JOIN jobs j ON j.id = p.job_id AND j.attempt = p.attempt JOIN nodes n ON n.id = p.node_id "
                   f"WHERE j.status IN :holding{where}", params).all()


def gpu_indices(v) -> list[int]:
    """A placement's GPU indices (a JSON column: a list, or its text where read through text())."""
    if isinstance(v, str):
        v = json.loads(v or "[]")
    return [int(i) for i in v or []]


def pending_groups(s: Session, projects: Optional[Sequence[str]]) -> list[tuple]:
    """(department, reason, class, jobs, GPUs asked, oldest submit, jobs with an ETA, earliest
    ETA, latest ETA) of the pending jobs, per department, reason and class."""
    params: dict[str, Any] = {}
    scope = _in("j.project_id", "projects", projects, params)
    return _run(s, "SELECT p.department_id, COALESCE(j.pending_code, ''), j.workload_class, COUNT(*), "
                   "SUM(j.gpus * j.workers), MIN(j.submit_time), COUNT(j.estimated_start), MIN(j.estimated_start), "
                   "MAX(j.estimated_start) FROM jobs j JOIN projects p ON p.id = j.project_id "
                   f"WHERE j.status = 'PENDING'{scope} "
                   "GROUP BY p.department_id, COALESCE(j.pending_code, ''), j.workload_class", params).all()


def pending_by_reason(s: Session) -> list[tuple]:
    """(reason, jobs, oldest submit) of every pending job in the region (counts name no tenant)."""
    return s.execute(text("SELECT pending_code, COUNT(*), MIN(submit_time) FROM jobs WHERE status = 'PENDING' "
                          "GROUP BY pending_code")).all()


def pending_jobs(s: Session, projects: Optional[Sequence[str]], limit: int) -> list[dict]:
    """The head of the queue (by queue position, then submit time) within `projects`."""
    params: dict[str, Any] = {"limit": limit}
    scope = _in("j.project_id", "projects", projects, params)
    return [dict(r) for r in _run(s, (
        "SELECT j.id, j.name, j.project_id, p.department_id, j.workload_class, j.gpus, j.workers, j.submit_time, "
        "j.pending_code, j.pending_message, j.queue_position, j.estimated_start FROM jobs j "
        f"JOIN projects p ON p.id = j.project_id WHERE j.status = 'PENDING'{scope} "
        "ORDER BY CASE WHEN j.queue_position IS NULL THEN 1 ELSE 0 END, j.queue_position, j.submit_time "
        "LIMIT :limit"), params).mappings().all()]


def projects(s: Session, ids: Optional[Sequence[str]], department: Optional[str]) -> list[dict]:
    params: dict[str, Any] = {}
    where = _in("p.id", "ids", ids, params)
    if department:
        where += " AND p.department_id = :dept"
        params["dept"] = department
    return [dict(r) for r in _run(s, (
        "SELECT p.id, p.name, p.department_id, p.budget_gpu_hours, d.name AS department_name, "
        "d.budget_gpu_hours AS department_budget FROM projects p JOIN departments d ON d.id = p.department_id "
        f"WHERE 1 = 1{where} ORDER BY p.department_id, p.id"), params).mappings().all()]


def gpu_quotas(s: Session) -> list[tuple]:
    """(owner kind, owner, pool, GPU model, guaranteed, nominal, limit) of every GPU quota."""
    return s.execute(text(
        "SELECT owner_kind, owner_id, pool, gpu_model, guaranteed, nominal, \"limit\" FROM quotas "
        "WHERE resource = 'gpus' ORDER BY owner_kind, owner_id, pool, gpu_model")).all()


def holding_gpus(s: Session) -> list[tuple]:
    """(project, pool, GPU model, GPUs, borrowing, started, max runtime) of each holding job."""
    return _run(s, "SELECT project_id, COALESCE(flavor_pool, ''), COALESCE(flavor_gpu_model, ''), gpus * workers, "
                   "borrowing, COALESCE(started_at, admitted_at), max_runtime_s FROM jobs WHERE status IN :holding",
                {"holding": _HOLDING}).all()


def ledger_since(s: Session, since: float, projects: Optional[Sequence[str]]) -> list[tuple]:
    """(project, department, GPUs, started, ended or accrued-to or None) of attempts overlapping
    [since, now]."""
    params: dict[str, Any] = {"a": since}
    scope = _in("project_id", "projects", projects, params)
    return _run(s, "SELECT project_id, department_id, gpus, started_at, ended_at FROM ledger "
                   f"WHERE (ended_at IS NULL OR ended_at > :a) AND gpus > 0{scope}", params).all()
