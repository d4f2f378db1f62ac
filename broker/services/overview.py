"""Utilization overview: allocated versus really used GPUs, per pool, node and project.

"In operation is not the same as in use": a GPU is *allocated* when a job's placement holds
it (DB), and *used* when the node agent saw it busy (telemetry: mean utilization over the
window at or above `busy_util_pct`). An *idle allocation* is a running job whose allocated
GPUs stayed below that threshold for the whole window (with at least one sample), the
number operations most want to see.

One read, a handful of aggregate queries, no per-row Python over the samples table.
`OverviewService` is what the routes call: the same data for the JSON overview, Prometheus
and the dashboard, narrowed to the rows of projects the caller may see.

The figures may be up to `max_age_s` (default 2 s) old: the aggregates (over every job and
the last five minutes of GPU samples) are computed once into a shared snapshot, and requests
meanwhile read that snapshot and only narrow it to the caller. Why: under load every user's
dashboard and every Prometheus scrape used to repeat the same scans (p95 of 580-680 ms with
35,000 queued jobs); now one computation serves them all, and concurrent requests that find
the snapshot stale wait for the one recomputation instead of starting their own. When the
database is unreachable the stale snapshot is not served past its age: the request fails
like any other (503).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from broker.auth.authn import Principal
from broker.auth.authz import Authz
from broker.models import HOLDING, Job, JobStatus, Node, Placement, Pool
from broker.ports import Clock
from broker.services.admin.audit import unsealed_submits
from broker.services.metrics import ProcessMetrics, TotalsCache

if TYPE_CHECKING:
    from broker.services.leadership import Leadership
    from broker.services.scheduling import SchedulingLoop

BUSY_UTIL_PCT = 5.0


class OverviewService:
    """Operations' view for one caller: region-, pool- and node-level aggregates for everyone
    (they name no tenant), per-project rows and idle allocations only for visible projects."""

    def __init__(self, engine: Engine, authz: Authz, *, loop: "SchedulingLoop | None" = None,
                 clock: Clock = time.time, max_age_s: float = 2.0, monotonic: Clock = time.monotonic,
                 leader: "Leadership | None" = None, process: ProcessMetrics | None = None,
                 totals: TotalsCache | None = None) -> None:
        """`loop`: the scheduling loop whose last tick the overview reports (None: no executor);
        `max_age_s`: how old the shared snapshot may be (0: computed on every request);
        `leader`: this broker's leadership (exported as `broker_leader`); `process`: this
        process's counters and histograms; `totals`: the business totals (leader only)."""
        self.engine, self.authz, self.loop, self.clock = engine, authz, loop, clock
        self.max_age_s, self._mono = max_age_s, monotonic
        self.leader = leader
        self.process = process or ProcessMetrics(engine)
        # the totals scan whole tables: refreshed 5 x less often than the snapshot (2 s -> 10 s)
        self.totals = totals or TotalsCache(engine, clock=clock, max_age_s=5 * max_age_s)
        self._snap: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def snapshot(self) -> dict[str, Any]:
        """The unnarrowed overview plus the audit outbox lag, at most `max_age_s` old."""
        snap = self._snap
        if snap is not None and self._mono() - snap[0] < self.max_age_s:
            return snap[1]
        with self._lock:  # one recomputation; the others wait for it and share it
            snap = self._snap
            if snap is not None and self._mono() - snap[0] < self.max_age_s:
                return snap[1]
            started = self._mono()
            data = overview(self.engine, self.clock())
            data["audit_unsealed"] = unsealed_submits(self.engine)
            self._snap = (started, data)
            return data

    def overview(self, principal: Principal) -> dict[str, Any]:
        last = {}
        loop = self.loop
        if loop is not None and loop.last_report is not None:
            r = loop.last_report
            last = {"cycle_ms": round(r.cycle_ms, 2), "admitted": len(r.admitted), "preempted": len(r.preempted),
                    "pending": r.pending, "at": loop.last_tick_at}
        data = {k: v for k, v in self.snapshot().items() if k != "audit_unsealed"}
        data["scheduler"] = last
        return self.authz.narrow_overview(principal, data)

    def metrics(self, principal: Principal) -> dict[str, Any]:
        """The overview plus the audit outbox's lag (what /metrics exports), and on the leader
        the business totals (`broker.services.metrics`: only the leader exports them, so a
        sum over brokers counts each once)."""
        lead = self.leadership()
        self.process.resolve_waits()
        return {**self.overview(principal), "audit_unsealed": self.snapshot()["audit_unsealed"],
                "leader": lead, "totals_since_start": self.totals.get() if lead.get("leader") else None}

    def leadership(self) -> dict[str, Any]:
        """This broker's part: leader or follower (what /readyz and `broker_leader` report).
        A broker without periodic tasks (an API-only app) is never the leader."""
        if self.leader is None:
            return {"mode": "none", "leader": False}
        return self.leader.describe()


def overview(engine: Engine, now: float, *, window_s: float = 300.0, busy_util_pct: float = BUSY_UTIL_PCT,
             last_cycle: dict | None = None) -> dict[str, Any]:
    since = now - window_s
    with Session(engine) as s:
        pools = {p.name: p for p in s.execute(select(Pool)).scalars()}
        nodes = list(s.execute(select(Node).order_by(Node.id)).scalars())
        holding = list(s.execute(select(Job).where(Job.status.in_([x.value for x in HOLDING]))).scalars())
        alloc_rows = s.execute(
            select(Placement.node_id, Placement.job_id, Placement.gpu_indices)
            .join(Job, (Job.id == Placement.job_id) & (Job.attempt == Placement.attempt))
            .where(Job.status.in_([x.value for x in HOLDING]))
        ).all()
        counts = s.execute(select(Job.status, Job.workload_class, func.count()).group_by(Job.status, Job.workload_class)).all()
        reasons = s.execute(
            select(Job.pending_code, func.count(), func.min(Job.submit_time))
            .where(Job.status == JobStatus.PENDING.value).group_by(Job.pending_code)
        ).all()
        pending_by_project = dict(s.execute(
            select(Job.project_id, func.count()).where(Job.status == JobStatus.PENDING.value).group_by(Job.project_id)
        ).all())
        gpu_use = _gpu_use(s, since)
        job_use = _job_use(s, since)

    jobs_by_id = {j.id: j for j in holding}
    alloc_node: dict[str, int] = defaultdict(int)
    alloc_gpu: set[tuple[str, int]] = set()
    for node_id, job_id, idx in alloc_rows:
        j = jobs_by_id.get(job_id)
        alloc_node[node_id] += j.gpus if j else len(idx or [])
        for i in idx or []:
            alloc_gpu.add((node_id, int(i)))

    node_out, pool_acc = [], defaultdict(lambda: defaultdict(float))
    for n in nodes:
        use = [u for (nid, _), u in gpu_use.items() if nid == n.id]
        used = sum(1 for u in use if (u["util"] or 0) >= busy_util_pct)
        util = _mean([u["util"] for u in use])
        power = sum(u["power"] or 0 for u in use)
        state, reason = n.effective_state()
        node_out.append({
            "id": n.id, "pool": n.pool, "gpu_model": n.gpu_model, "state": state, "state_reason": reason,
            "gpus": n.gpus, "gpus_allocated": alloc_node.get(n.id, 0), "gpus_used": used,
            "util_gpu_avg": util, "power_w": round(power, 1) if use else None, "last_heartbeat": n.last_heartbeat,
            "reporting": bool(use),
        })
        acc = pool_acc[n.pool]
        acc["nodes"] += 1
        acc["gpus"] += n.gpus
        acc["gpus_schedulable"] += n.gpus if state == "ready" else 0
        acc["gpus_allocated"] += alloc_node.get(n.id, 0)
        acc["gpus_used"] += used
        acc["power_w"] += power
    pool_out = []
    for name in sorted(set(pools) | set(pool_acc)):
        a = pool_acc.get(name, {})
        p = pools.get(name)
        pool_out.append({
            "name": name, "workload_class": p.workload_class if p else None,
            "lend_to_innovation": bool(p and p.lend_to_innovation),
            **{k: (round(v, 1) if k == "power_w" else int(v)) for k, v in a.items()},
        })

    proj: dict[str, dict[str, Any]] = defaultdict(lambda: {"running": 0, "gpus_allocated": 0, "gpus_used": 0,
                                                            "borrowing_gpus": 0, "pending": 0})
    idle = []
    for j in holding:
        p = proj[j.project_id]
        g = j.gpus * j.workers
        p["gpus_allocated"] += g
        if j.borrowing:
            p["borrowing_gpus"] += g
        if j.status == JobStatus.RUNNING.value:
            p["running"] += 1
            u = job_use.get(j.id)
            if u is not None:
                p["gpus_used"] += min(g, u["busy_gpus"])
                if g > 0 and u["util"] is not None and u["util"] < busy_util_pct and (j.started_at or now) <= since:
                    idle.append({"job_id": j.id, "name": j.name, "project": j.project_id, "gpus": g,
                                 "util_gpu_avg": round(u["util"], 1), "running_s": round(now - (j.started_at or now))})
    for pid, n in pending_by_project.items():
        proj[pid]["pending"] = n

    status_counts: dict[str, int] = defaultdict(int)
    by_class: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for st, cls, n in counts:
        status_counts[st] += n
        by_class[cls][st] += n
    queue = {
        "pending": status_counts.get("PENDING", 0), "running": status_counts.get("RUNNING", 0),
        "starting": status_counts.get("STARTING", 0) + status_counts.get("ADMITTED", 0),
        "by_status": dict(status_counts), "by_class": {k: dict(v) for k, v in by_class.items()},
        "by_reason": {(code or "NOT_YET_CONSIDERED"): n for code, n, _ in reasons},
        "oldest_pending_wait_s": round(now - min(t for _, _, t in reasons), 1) if reasons else None,
    }
    totals = {
        "gpus": sum(n["gpus"] for n in node_out),
        "gpus_allocated": sum(n["gpus_allocated"] for n in node_out),
        "gpus_used": sum(n["gpus_used"] for n in node_out),
        "idle_allocated_gpus": sum(i["gpus"] for i in idle),
    }
    return {
        "generated_at": now, "window_s": window_s, "busy_util_pct": busy_util_pct, "totals": totals,
        "pools": pool_out, "nodes": node_out,
        "projects": [{"project": k, **v} for k, v in sorted(proj.items())],
        "idle_allocations": sorted(idle, key=lambda i: -i["gpus"]), "queue": queue,
        "scheduler": last_cycle or {},
    }


def _gpu_use(s: Session, since: float) -> dict[tuple[str, int], dict[str, float | None]]:
    rows = s.execute(text(
        "SELECT node_id, gpu_index, AVG(util_gpu), AVG(power_w) FROM gpu_samples WHERE ts >= :since "
        "GROUP BY node_id, gpu_index"), {"since": since}).all()
    return {(r[0], int(r[1])): {"util": _f(r[2]), "power": _f(r[3])} for r in rows}


def _job_use(s: Session, since: float) -> dict[str, dict[str, float | None]]:
    """Per job: mean utilization over its GPUs and how many of its GPUs were busy."""
    rows = s.execute(text(
        "SELECT job_id, node_id, gpu_index, AVG(util_gpu) FROM gpu_samples "
        "WHERE ts >= :since AND job_id IS NOT NULL AND job_id <> '' GROUP BY job_id, node_id, gpu_index"),
        {"since": since}).all()
    acc: dict[str, list[float]] = defaultdict(list)
    for job_id, _, _, u in rows:
        if u is not None:
            acc[job_id].append(float(u))
    return {j: {"util": _mean(us), "busy_gpus": sum(1 for u in us if u >= BUSY_UTIL_PCT)} for j, us in acc.items()}


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(sum(xs) / len(xs), 1) if xs else None


def _f(v) -> float | None:
    return None if v is None else float(v)
