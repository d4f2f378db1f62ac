"""Operations' view: the utilization overview (JSON), Prometheus /metrics, and the dashboard page.

All three read the same `OverviewService` so the page, Grafana and the API never disagree. Any
authenticated user may read them: they hold aggregates only (no job commands, env or logs),
which is what the ops-viewer role is for; per-project rows are the caller's projects only.
"""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.concurrency import run_in_threadpool

from broker.api.deps import Overview, User
from broker.api.json import JSON

router = APIRouter(tags=["operations"])
STATIC = Path(__file__).resolve().parent.parent / "static"


@router.get("/api/v1/overview")
async def get_overview(principal: User, svc: Overview):
    """Allocated vs used GPUs per pool, node and project; idle allocations; queue health."""
    return JSON(await run_in_threadpool(svc.overview, principal))


@router.get("/metrics", response_class=Response)
async def metrics(principal: User, svc: Overview):
    """Prometheus text format (scrape with a bearer token)."""
    data = await run_in_threadpool(svc.metrics, principal)
    reg = CollectorRegistry()
    reg.register(_Collector(data))
    body = generate_latest(reg) + generate_latest(svc.process.registry)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/dashboard", include_in_schema=False)
async def dashboard():
    return FileResponse(STATIC / "dashboard.html", media_type="text/html")


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str):
    path = (STATIC / name).resolve()
    if path.parent != STATIC or not path.is_file():
        return JSON({"error": {"code": "NOT_FOUND", "message": "no such file"}}, status_code=404)
    return FileResponse(path)


class _Collector:
    def __init__(self, data: dict) -> None:
        self.d = data

    def collect(self):
        d = self.d
        g = GaugeMetricFamily
        pool_metrics = {
            "gpus": g("broker_pool_gpus", "GPUs in the pool", labels=["pool"]),
            "gpus_schedulable": g("broker_pool_gpus_schedulable", "GPUs on READY nodes", labels=["pool"]),
            "gpus_allocated": g("broker_pool_gpus_allocated", "GPUs held by admitted jobs", labels=["pool"]),
            "gpus_used": g("broker_pool_gpus_used", "GPUs seen busy by the agents", labels=["pool"]),
            "power_w": g("broker_pool_power_watts", "power drawn by the pool's GPUs", labels=["pool"]),
        }
        for p in d["pools"]:
            for k, m in pool_metrics.items():
                m.add_metric([p["name"]], float(p.get(k, 0) or 0))
        yield from pool_metrics.values()

        na = g("broker_node_gpus_allocated", "GPUs held on the node", labels=["node", "pool"])
        nu = g("broker_node_gpus_used", "GPUs busy on the node", labels=["node", "pool"])
        ns = g("broker_node_state", "1 for the node's current state", labels=["node", "state"])
        for n in d["nodes"]:
            na.add_metric([n["id"], n["pool"]], n["gpus_allocated"])
            nu.add_metric([n["id"], n["pool"]], n["gpus_used"])
            ns.add_metric([n["id"], n["state"]], 1)
        yield from (na, nu, ns)

        pa = g("broker_project_gpus_allocated", "GPUs held by the project's jobs", labels=["project"])
        pu = g("broker_project_gpus_used", "GPUs the project's jobs keep busy", labels=["project"])
        pb = g("broker_project_gpus_borrowed", "GPUs held above nominal (preemptible)", labels=["project"])
        pp = g("broker_project_jobs_pending", "pending jobs", labels=["project"])
        for p in d["projects"]:
            pa.add_metric([p["project"]], p["gpus_allocated"])
            pu.add_metric([p["project"]], p["gpus_used"])
            pb.add_metric([p["project"]], p["borrowing_gpus"])
            pp.add_metric([p["project"]], p["pending"])
        yield from (pa, pu, pb, pp)

        js = g("broker_jobs", "jobs by status", labels=["status"])
        for st, n in sorted(d["queue"]["by_status"].items()):
            js.add_metric([st], n)
        jr = g("broker_jobs_pending_by_reason", "pending jobs by pending-reason code", labels=["reason"])
        for code, n in sorted(d["queue"]["by_reason"].items()):
            jr.add_metric([code], n)
        yield from (js, jr)
        yield g("broker_idle_allocated_gpus", "GPUs allocated to running jobs that stayed idle over the window",
                value=d["totals"]["idle_allocated_gpus"])
        yield g("broker_oldest_pending_wait_seconds", "wait of the oldest pending job",
                value=float(d["queue"]["oldest_pending_wait_s"] or 0))
        yield g("broker_audit_unsealed_submits", "job submits not yet sealed into the audit chain (outbox lag; "
                "sealed every 2 s)", value=float(d.get("audit_unsealed") or 0))
        lead = d.get("leader") or {}
        yield g("broker_leader", "1 when this broker is the leader (runs the scheduling loop and the periodic tasks)",
                value=1.0 if lead.get("leader") else 0.0)
        cyc = g("broker_scheduler_cycle_milliseconds", "duration of the last scheduling cycle's core (leader only)")
        if d.get("scheduler"):
            cyc.add_metric([], float(d["scheduler"].get("cycle_ms", 0)))
        yield cyc
        yield from _totals(d.get("totals_since_start"))


# name (without _total), help, label, key in `business_totals`; samples only from the leader
TOTALS = (
    ("broker_jobs_submitted", "jobs submitted", "class", "submitted"),
    ("broker_admissions", "attempts admitted (one per admission, requeues included)", "class", "admitted"),
    ("broker_preemptions", "attempts preempted", "class", "preempted"),
    ("broker_gpu_seconds_allocated", "GPU-seconds held by admitted attempts (running ones up to now)", "pool",
     "gpu_seconds_allocated"),
    ("broker_gpu_seconds_used", "GPU-seconds the agents saw busy (attributed utilization)", "pool",
     "gpu_seconds_used"),
    ("broker_gpu_energy_joules", "energy drawn by the GPUs of attempts", "pool", "energy_joules"),
    ("broker_idle_flags", "allocations flagged idle by their pool's idle policy", "pool", "idle_flags"),
    ("broker_idle_reclaims", "idle innovation attempts preempted to give their GPUs to the queue", "pool",
     "idle_reclaims"),
)


def _totals(totals: dict | None):
    """The business counters; families without samples on a follower (names stay visible)."""
    for name, doc, label, key in TOTALS:
        fam = CounterMetricFamily(name, doc + " (from the database; exported by the leader only)", labels=[label])
        for k, v in sorted((totals or {}).get(key, {}).items()):
            fam.add_metric([k or ""], float(v))
        yield fam
    flagged = GaugeMetricFamily("broker_idle_allocations_flagged", "allocations flagged idle now (leader only)",
                                labels=["pool"])
    for k, v in sorted((totals or {}).get("idle_open", {}).items()):
        flagged.add_metric([k or ""], float(v))
    yield flagged


class HttpMetrics:
    """Pure ASGI middleware: count and time every HTTP request into `ProcessMetrics`.

    The route label is the matched route's template (`/api/v1/jobs/{job_id}`), never the raw
    path (bounded cardinality); the submit fast path answers before routing, so a request
    with no route is labelled by its path only when that path is one of the app's static
    routes, else "unmatched"."""

    def __init__(self, app, *, metrics, static_paths: frozenset[str] = frozenset({"/api/v1/jobs"})) -> None:
        self.app, self.metrics, self.static_paths = app, metrics, static_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, code = time.perf_counter(), 500

        async def send_wrapped(message):
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapped)
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route is None:
                path = scope.get("path", "")
                route = path if path in self.static_paths else "unmatched"
            self.metrics.observe_request(scope["method"], route, code, time.perf_counter() - t0)
