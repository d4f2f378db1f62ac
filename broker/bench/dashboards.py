"""`broker bench dashboards`: every dashboard API at fleet scale, beside a plain query of the same rows.

What it does, in one run:
1. prepares the database (as the other benchmarks: a private PostgreSQL schema, or SQLite) and
   fills it (`broker.bench.dashboards_seed`): by default 1,000 nodes x 8 GPUs, hourly GPU rollups
   for 30 days and minute rollups for the last 24 hours (17.3 million rows), 40 more projects
   with quotas and budgets, ~1,200 running jobs, 5,000 pending, 20,000 finished attempts;
2. folds the pool rollups as the periodic task's first run would (`run_pool_rollups`), then
   once more as its next run a minute later would (the last 10 minutes and 2 hours): both timed;
3. starts the API (uvicorn, 1 worker) in a subprocess and reads every dashboard API
   `requests` times back to back on one keep-alive connection, as a platform-admin and as a
   member of one project: overview 24 h / 7 d / 30 d, nodes, queue, projects, a running job;
4. beside each, the plain query: the same rows read with the same SQL in this process
   (`broker.services.dashboards_queries`), without HTTP, authorization or shaping; the nodes
   page's read when a new minute has been rolled up (its 8,000 readings are read once a minute,
   then kept); and what the 30-day overview would cost without the pool rollups (the GPU
   rollups summed per pool and hour directly).

Goal: every API's p95 <= 250 ms (`goal_ms`). JSON keys: database, fleet {...}, seed_s, fold_s, fold_again_s,
goal_ms, meets_goal, api {"<page> [<role>]": {requests, errors, p50_ms, p95_ms, max_ms, bytes}},
plain {<page>: {p50_ms, p95_ms, max_ms}}, without_pool_rollups_ms, load_avg, error_samples.
"""

from __future__ import annotations

import http.client
import os
import time
from typing import Callable

from sqlalchemy import text
from sqlmodel import Session

from broker.bench.common import percentile, prepare_database, redact, start_server, stop_server
from broker.bench.dashboards_seed import DAY, HOUR, MINUTE, fill
from broker.db import make_engine
from broker.services import dashboards_queries as q
from broker.services import job_queries
from broker.services.dashboards_nodes import NodeMap
from broker.services.dashboards_rollup import run_pool_rollups
from broker.services.snapshot import month_start
from broker.services.telemetry.queries import job_series
from broker.settings import Settings

_NO_RATE_LIMIT = {"BROKER_RATE_LIMIT_PER_S": "1e9", "BROKER_RATE_LIMIT_BURST": "1000000000"}
PAGES = ("overview 24h", "overview 7d", "overview 30d", "nodes", "queue", "projects", "job")


def bench(*, database: str | None, nodes: int = 1000, gpus: int = 8, days: int = 30, minute_hours: int = 24,
          projects: int = 40, pending: int = 5000, history: int = 20_000, requests: int = 30,
          goal_ms: float = 250.0) -> dict:
    url, cleanup = prepare_database(database)
    try:
        t0 = time.perf_counter()
        info = fill(url, nodes=nodes, gpus=gpus, days=days, minute_hours=minute_hours, projects=projects,
                    pending=pending, history=history)
        seed_s = time.perf_counter() - t0
        eng = make_engine(Settings(database_url=url))
        try:
            t0 = time.perf_counter()
            run_pool_rollups(eng, time.time())
            fold_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            run_pool_rollups(eng, time.time() + 60)  # a periodic run: the last 10 minutes and 2 hours again
            fold_again_s = time.perf_counter() - t0
            _vacuum(eng)
            api, samples = _measure_api(url, info, requests)
            plain = {name: _timed(lambda f=f: f(eng, info), requests) for name, f in PLAIN.items()}
            plain["nodes, a new minute"] = _timed(lambda: NodeMap(eng).snapshot(), max(3, requests // 5))
            without = _timed(lambda: _without_pool_rollups(eng), 3)
        finally:
            eng.dispose()
        worst = max(v["p95_ms"] for v in api.values())
        load = [round(x, 2) for x in os.getloadavg()]
        return {"database": redact(url),
                "fleet": {"nodes": nodes, "gpus": nodes * gpus, "days": days, "minute_hours": minute_hours,
                          "rollup_rows": info["rollup_rows"], "running_jobs": info["running_jobs"],
                          "pending_jobs": pending, "finished_attempts": history, "projects": projects},
                "seed_s": round(seed_s, 1), "rollups_s": info["rollups_s"], "fold_s": round(fold_s, 1),
                "fold_again_s": round(fold_again_s, 2),
                "goal_ms": goal_ms, "worst_p95_ms": worst, "meets_goal": worst <= goal_ms and not samples,
                "api": api, "plain": plain, "without_pool_rollups_ms": without, "load_avg": load,
                "error_samples": samples}
    finally:
        cleanup()


def _paths(info: dict) -> dict[str, str]:
    return {"overview 24h": "/api/v1/dashboards/overview?range=24h", "overview 7d": "/api/v1/dashboards/overview?range=7d",
            "overview 30d": "/api/v1/dashboards/overview?range=30d", "nodes": "/api/v1/dashboards/nodes",
            "queue": "/api/v1/dashboards/queue", "projects": "/api/v1/dashboards/projects",
            "job": f"/api/v1/dashboards/jobs/{info['running_job']}"}


def _measure_api(url: str, info: dict, requests: int) -> tuple[dict, list[str]]:
    proc, port = start_server("broker", url, 1, what="the broker server", env=_NO_RATE_LIMIT)
    out, samples = {}, []
    try:
        for role, token in (("platform-admin", info["admin"]), ("member", info["member"])):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            headers = {"Authorization": f"Bearer {token}"}
            try:
                for name, path in _paths(info).items():
                    lat, errors, size = [], 0, 0
                    for k in range(requests + 1):  # the first is a warm-up, not counted
                        t0 = time.perf_counter()
                        conn.request("GET", path, headers=headers)
                        resp = conn.getresponse()
                        body = resp.read()
                        ms = (time.perf_counter() - t0) * 1000
                        if resp.status != 200:
                            errors += 1
                            if len(samples) < 5:
                                samples.append(f"{name} [{role}]: {resp.status} {body[:160]!r}")
                        if k:
                            lat.append(ms)
                            size = len(body)
                    out[f"{name} [{role}]"] = {"requests": len(lat), "errors": errors, **_stats(lat), "bytes": size}
            finally:
                conn.close()
    finally:
        stop_server(proc)
    return out, samples


def _vacuum(eng) -> None:
    if eng.dialect.name == "postgresql":
        with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE pool_rollups"))


def _stats(lat: list[float]) -> dict:
    return {"p50_ms": round(percentile(lat, .5), 1), "p95_ms": round(percentile(lat, .95), 1),
            "max_ms": round(max(lat), 1) if lat else 0.0}


def _timed(fn: Callable[[], object], n: int) -> dict:
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        lat.append((time.perf_counter() - t0) * 1000)
    return _stats(lat)


# --------------------------------------------------------------------------- the plain queries


def _overview(res: int, span: int):
    def run(eng, info):
        now = time.time()
        end = now - now % res + res
        with Session(eng) as s:
            return q.pool_series(s, res, end - span, end)
    return run


def _nodes(eng, info):
    with Session(eng) as s:
        q.nodes(s, None)
        q.latest_gpus(s, q.latest_minute(s))
        return q.gpu_jobs(s, None)


def _queue(eng, info):
    with Session(eng) as s:
        q.pending_groups(s, None)
        return q.pending_jobs(s, None, 200)


def _projects(eng, info):
    now = time.time()
    period = month_start(now)
    with Session(eng) as s:
        q.projects(s, None, None)
        q.gpu_quotas(s)
        q.holding_gpus(s)
        q.ledger_since(s, period, None)
        return q.project_use(s, HOUR, period, now, None)


def _job(eng, info):
    """The job page's series read as the page reads it (minutes up to a day, hours beyond) and
    its events."""
    now, start = time.time(), info["running_job_start"]
    job_series(eng, info["running_job"], start, now, "1m" if now - start <= DAY else "1h")
    with Session(eng) as s:
        return job_queries.events(s, info["running_job"])


PLAIN = {"overview 24h": _overview(MINUTE, DAY), "overview 7d": _overview(HOUR, 7 * DAY),
         "overview 30d": _overview(HOUR, 30 * DAY), "nodes": _nodes, "queue": _queue, "projects": _projects,
         "job": _job}


def _without_pool_rollups(eng) -> list:
    """The 30-day overview's allocated-by-attribution and used figures straight from the GPU rollups."""
    now = time.time()
    with Session(eng) as s:
        return s.execute(text(
            "SELECT n.pool, r.bucket, COUNT(DISTINCT r.node_id || ':' || CAST(r.gpu_index AS VARCHAR(8))), "
            "SUM(r.util_sum) / 100.0, SUM(r.power_sum) FROM gpu_rollups r JOIN nodes n ON n.id = r.node_id "
            "WHERE r.resolution_s = 3600 AND r.bucket >= :a GROUP BY n.pool, r.bucket"), {"a": now - 30 * DAY}).all()
