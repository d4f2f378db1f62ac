"""The dashboards' data: one use case per page, each a few indexed queries.

`DashboardService` answers `GET /api/v1/dashboards/...`:
- `overview`  allocated vs used vs capacity per pool over 24 h (minutes), 7 d or 30 d (hours)
              from the pool rollups (`broker.services.dashboards_rollup`), with idle GPU-hours
              and energy (the live figures are `/api/v1/overview`'s);
- `nodes`     every GPU's last rolled-up minute (utilization, memory, temperature), its node's
              health and cordon/drain, and the job holding it;
- `queue`     pending jobs by department, reason and class with their ETAs, and the queue's head;
- `projects`  usage vs quota, borrowing both ways, budget burn-down, efficiency
              (`broker.services.dashboards_projects`);
- `job`       a job's timeline of states and attempts, per-GPU utilization and memory series,
              and whether the caller may read its logs.

Tenancy is the rest of the API's: pool-, node- and region-level figures name no tenant and are
for every user with a grant (`Action.AGGREGATES_READ`, as the overview); rows about projects are
narrowed to the projects the caller may see (platform-admins and global ops-viewers: all;
department-admins: their departments; members: their projects). A job on a GPU is named only
to callers who may see its project; others see the GPU as allocated, nothing more. The job page
needs `job.read` (a foreign job answers 404 like a missing one), its logs `job.logs`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Optional

from sqlmodel import Session

from broker.auth.authn import Principal
from broker.auth.authz import Authz
from broker.auth.policy import Action, Decision, Ref, Resource
from broker.errors import Invalid
from broker.models import Department
from broker.ports import Clock
from broker.services import dashboards_queries as q
from broker.services.admin.tenancy import department_not_found
from broker.services.dashboards_nodes import NodeMap, narrow
from broker.services.dashboards_projects import project_rows
from broker.services.jobs import JobService
from broker.services.telemetry.queries import job_series

MINUTE, HOUR, DAY = 60, 3600, 86400
RANGES = {"24h": (MINUTE, DAY), "7d": (HOUR, 7 * DAY), "30d": (HOUR, 30 * DAY)}
QUEUE_HEAD = 200  # pending jobs listed by name on the queue page
RAW_JOB_SPAN_S = 30 * MINUTE  # a job page reads raw samples up to this span, minutes up to a day, then hours


class DashboardService:
    def __init__(self, engine, authz: Authz, *, jobs: JobService, clock: Clock = time.time) -> None:
        self.engine, self.authz, self.jobs, self.clock = engine, authz, jobs, clock
        self.node_map = NodeMap(engine, clock=clock)  # keeps the last rolled-up minute's readings

    # ------------------------------------------------------------------ overview
    def overview(self, p: Principal, *, range: str = "24h") -> dict[str, Any]:
        self.authz.require(p, Action.AGGREGATES_READ)
        if range not in RANGES:
            raise Invalid(f"range must be one of {', '.join(RANGES)}", code="BAD_RANGE", details={"range": range})
        res, span = RANGES[range]
        now = self.clock()
        end = _floor(now, res) + res
        start = end - span
        with Session(self.engine) as s:
            rows = q.pool_series(s, res, start, end)
        return {"range": range, "resolution_s": res, "start": start, "end": end, "generated_at": now,
                **pool_figures(rows, res)}

    # ------------------------------------------------------------------ nodes
    def nodes(self, p: Principal, *, pool: Optional[str] = None) -> dict[str, Any]:
        self.authz.require(p, Action.AGGREGATES_READ)
        return narrow(self.node_map.snapshot(pool), self._visible_set(p), pool)

    # ------------------------------------------------------------------ queue
    def queue(self, p: Principal, *, department: Optional[str] = None) -> dict[str, Any]:
        self.authz.require(p, Action.AGGREGATES_READ)
        projects = self._projects(p, department)
        now = self.clock()
        with Session(self.engine) as s:
            groups = q.pending_groups(s, projects)
            head = q.pending_jobs(s, projects, QUEUE_HEAD)
            region = q.pending_by_reason(s)
        depts: dict[str, dict[str, Any]] = {}
        for dept, reason, cls, n, gpus, oldest, n_eta, eta_min, eta_max in groups:
            d = depts.setdefault(dept, {"department": dept, "pending": 0, "gpus": 0, "reasons": []})
            d["pending"] += int(n)
            d["gpus"] += int(gpus or 0)
            d["reasons"].append({
                "reason": reason or "NOT_YET_CONSIDERED", "class": cls, "jobs": int(n), "gpus": int(gpus or 0),
                "oldest_wait_s": round(now - float(oldest), 1) if oldest is not None else None,
                "with_eta": int(n_eta), "eta_min_s": _eta(eta_min, now), "eta_max_s": _eta(eta_max, now)})
        for d in depts.values():
            d["reasons"].sort(key=lambda r: (-r["jobs"], r["reason"]))
        oldest = min((t for _, _, t in region if t is not None), default=None)
        return {"generated_at": now, "department": department,
                "region": {"pending": sum(int(n) for _, n, _ in region),
                           "by_reason": {(code or "NOT_YET_CONSIDERED"): int(n) for code, n, _ in region},
                           "oldest_pending_wait_s": None if oldest is None else round(now - float(oldest), 1)},
                "departments": sorted(depts.values(), key=lambda d: d["department"]),
                "jobs": [{"id": j["id"], "name": j["name"], "project": j["project_id"],
                          "department": j["department_id"], "class": j["workload_class"],
                          "gpus": int(j["gpus"]) * int(j["workers"]),
                          "reason": j["pending_code"] or "NOT_YET_CONSIDERED", "message": j["pending_message"] or "",
                          "queue_position": j["queue_position"], "wait_s": round(now - j["submit_time"], 1),
                          "eta_s": _eta(j["estimated_start"], now), "estimated_start": j["estimated_start"]}
                         for j in head]}

    # ------------------------------------------------------------------ projects
    def projects(self, p: Principal, *, department: Optional[str] = None) -> dict[str, Any]:
        self.authz.require(p, Action.AGGREGATES_READ)
        visible = self._projects(p, department)
        now = self.clock()
        with Session(self.engine) as s:
            return {"generated_at": now, "department": department,
                    **project_rows(s, now, visible, department, self._visible_set(p))}

    # ------------------------------------------------------------------ job
    def job(self, p: Principal, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(principal=p, job_id=job_id)  # job.read; foreign -> 404 JOB_NOT_FOUND
        events = self.jobs.events(principal=p, job_id=job_id)["items"]
        now = self.clock()
        starts = [a["admitted_at"] or a["started_at"] for a in job["attempts"] if a["admitted_at"] or a["started_at"]]
        series = None
        if starts:
            a = min(starts)
            b = job["finished_at"] or now
            b = max(b, a + 1.0)
            res = "raw" if b - a <= RAW_JOB_SPAN_S else "1m" if b - a <= DAY else "1h"
            series = gpu_series(job_series(self.engine, job_id, a, b, res))
        ref = self.authz.job_ref(job_id)
        logs_ok = ref is not None and self.authz.decide(p, Action.JOB_LOGS, ref) is Decision.ALLOW
        job.pop("env", None)
        job.pop("command", None)
        return {"generated_at": now, "job": job, "timeline": timeline(events, job, now),
                "events": events[-100:], "series": series,
                "logs": {"allowed": logs_ok, "workers": job["workers"], "attempt": job["attempt"]}}

    # ------------------------------------------------------------------ helpers
    def _projects(self, p: Principal, department: Optional[str]) -> Optional[list[str]]:
        """Project ids the caller may see (None: every project), narrowed to `department`; a
        department the caller may not see answers 404 like a missing one."""
        visible = self.authz.visible_projects(p, resource=Resource.PROJECT)
        if not department:
            return visible
        decision = self.authz.decide(p, Action.DEPARTMENT_READ, Ref(Resource.DEPARTMENT, department=department))
        if decision is not Decision.ALLOW or not self._department_exists(department):
            raise department_not_found(department)
        with Session(self.engine) as s:
            in_dept = [r["id"] for r in q.projects(s, None, department)]
        return in_dept if visible is None else [x for x in visible if x in set(in_dept)]

    def _department_exists(self, department: str) -> bool:
        with Session(self.engine) as s:
            return s.get(Department, department) is not None

    def _visible_set(self, p: Principal):
        """A predicate: may the caller see this project (by id)? (answers memoized per call)"""
        scope = self.authz.scope(p, Resource.PROJECT)
        seen: dict[str, bool] = {}

        def can_see(pid: str) -> bool:
            if pid not in seen:
                seen[pid] = scope.contains(Ref(Resource.PROJECT, department=self.authz.project_department(pid),
                                               project=pid))
            return seen[pid]
        return can_see


# --------------------------------------------------------------------------- shaping (pure)


def pool_figures(rows, res: int) -> dict[str, Any]:
    """Series per pool (GPUs per bucket) and totals over the range from `pool_series` rows."""
    buckets = sorted({float(r[1]) for r in rows})
    at = {b: i for i, b in enumerate(buckets)}
    pools: dict[str, dict[str, Any]] = {}
    for pool, bucket, cap, alloc, used, energy in rows:
        d = pools.get(pool)
        if d is None:
            d = pools[pool] = {"name": pool, "capacity": [None] * len(buckets), "allocated": [None] * len(buckets),
                               "used": [None] * len(buckets), "_t": [0.0, 0.0, 0.0]}
        i = at[float(bucket)]
        alloc, used = float(alloc or 0.0), float(used or 0.0)
        d["capacity"][i] = int(cap or 0)
        d["allocated"][i] = round(alloc / res, 3)
        d["used"][i] = round(used / res, 3)
        d["_t"][0] += alloc
        d["_t"][1] += min(used, alloc) if alloc else used
        d["_t"][2] += float(energy or 0.0)
    region = [0.0, 0.0, 0.0]
    out = []
    for name in sorted(pools):
        d = pools[name]
        t = d.pop("_t")
        region = [x + y for x, y in zip(region, t)]
        d["totals"] = _totals(*t)
        out.append(d)
    return {"t": buckets, "pools": out, "totals": _totals(*region)}


def _totals(alloc_s: float, used_s: float, energy_j: float) -> dict[str, Any]:
    return {"allocated_gpu_hours": round(alloc_s / HOUR, 3), "used_gpu_hours": round(used_s / HOUR, 3),
            "idle_gpu_hours": round(max(0.0, alloc_s - used_s) / HOUR, 3),
            "efficiency": round(used_s / alloc_s, 4) if alloc_s > 0 else None,
            "energy_kwh": round(energy_j / 3.6e6, 3)}


def gpu_series(body: dict) -> dict[str, Any]:
    """A job's telemetry points regrouped per GPU: {node, gpu, t[], util[], mem_mib[]}."""
    raw = body["resolution"] == "raw"
    per: dict[tuple[str, int], dict[str, list]] = {}
    for pt in body["points"]:
        key = (pt["node_id"], int(pt["gpu"]))
        d = per.get(key)
        if d is None:
            d = per[key] = {"t": [], "util": [], "mem_mib": []}
        d["t"].append(pt["ts"])
        d["util"].append(_r(pt["util_gpu"] if raw else pt["util_avg"]))
        mem = (pt["job_memory_mb"] if pt.get("job_memory_mb") is not None else pt["memory_used_mb"]) if raw \
            else pt["mem_avg"]
        d["mem_mib"].append(_r(mem))
    return {"resolution": body["resolution"], "truncated": body["truncated"],
            "gpus": [{"node": n, "gpu": g, **v} for (n, g), v in sorted(per.items())]}


def timeline(events: list[dict], job: dict, now: float) -> dict[str, Any]:
    """Segments of the job's states (from its transition events) and of its attempts."""
    states = []
    marks = [(e["ts"], e["to_status"], e["attempt"]) for e in events
             if e["kind"] in ("transition", "submitted") and e["to_status"]]
    if not marks or marks[0][1] != "PENDING":
        marks.insert(0, (job["submit_time"], "PENDING", 1))
    marks.sort(key=lambda m: m[0])
    if marks[-1][1] != job["status"]:  # events pruned or never written: the row's status still shows
        marks.append((job["started_at"] or job["admitted_at"] or job["finished_at"] or now, job["status"], job["attempt"]))
    for i, (ts, status, attempt) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else (None if status in _FINAL else now)
        states.append({"status": status, "attempt": attempt, "start": ts, "end": end})
    attempts = [{"number": a["number"], "status": a["status"], "start": a["admitted_at"] or a["started_at"],
                 "running_from": a["started_at"], "end": a["ended_at"], "reason": a["reason"],
                 "exit_code": a["exit_code"]} for a in job["attempts"]]
    return {"states": states, "attempts": attempts}


_FINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})


def _eta(t: Optional[float], now: float) -> Optional[float]:
    return None if t is None else round(max(0.0, float(t) - now), 1)


def _floor(t: float, res: int) -> float:
    return float(t - (t % res))


def _r(v) -> Optional[float]:
    return None if v is None else round(float(v), 1)
