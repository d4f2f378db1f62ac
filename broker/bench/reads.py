"""`broker bench reads`: the read paths under load with a deep queue.

What it does, in one run:
1. prepares the database (as `broker bench submit`: PostgreSQL private schema or SQLite file),
   and fills it with `queue` PENDING jobs (default 35,000) spread over `projects` projects,
   written directly in batches (this benchmark is about reads, not submits), plus a token;
2. starts the API (uvicorn, 1 worker, 127.0.0.1) in a subprocess, as deployed: the overview
   snapshot's default age, the rate limiter lifted (one token drives all users);
3. runs `users` keep-alive connections for `duration` seconds (after a warm-up), each sending
   the four reads round-robin back to back: `GET /api/v1/overview`, `GET /metrics`,
   `GET /api/v1/jobs?limit=50` (newest first) and `GET /api/v1/jobs/{id}` of a random queued job;
4. reports p50/p95/p99 and requests per endpoint; any status other than 200 is an error.

JSON keys: queue, projects, users, duration_s, overview_max_age_s, database, requests, errors, requests_per_s,
endpoints {name: {requests, errors, p50_ms, p95_ms, p99_ms}}, error_samples.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field

from broker.bench.common import percentile, prepare_database, read_response, redact, run_async, start_server, stop_server

_NO_RATE_LIMIT = {"BROKER_RATE_LIMIT_PER_S": "1e9", "BROKER_RATE_LIMIT_BURST": "1000000000"}
ENDPOINTS = ("overview", "metrics", "job list", "job get")


@dataclass
class Stats:
    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: {e: [] for e in ENDPOINTS})
    errors: dict[str, int] = field(default_factory=lambda: {e: 0 for e in ENDPOINTS})
    samples: list[str] = field(default_factory=list)


def fill_queue(url: str, queue: int, projects: int) -> tuple[str, list[str]]:
    """`queue` PENDING jobs over `projects` new projects; returns (admin token, job ids)."""
    from sqlmodel import Session

    from broker.db import make_engine
    from broker.models import Project
    from broker.services import job_queries as repo
    from broker.services.bootstrap import create_token
    from broker.settings import Settings

    eng = make_engine(Settings(database_url=url))
    pids = [f"reads-p{i:03d}" for i in range(projects)]
    ids: list[str] = []
    with Session(eng) as s:
        tok, _ = create_token(s, name="bench-reads", role="platform-admin")
        for pid in pids:
            s.add(Project(id=pid, department_id="ouh", name=pid, max_pending=100_000))
        s.commit()
    now = time.time()
    batch = 2000
    with eng.connect() as conn:
        for start in range(0, queue, batch):
            rows, events = [], []
            for i in range(start, min(queue, start + batch)):
                jid = uuid.uuid4().hex[:16]
                ids.append(jid)
                t = now - queue + i
                rows.append(_job_row(jid, pids[i % projects], t))
                events.append({"job_id": jid, "ts": t, "kind": "submitted", "from_status": None,
                               "to_status": "PENDING", "attempt": 1, "message": "bench", "details": {}})
            with conn.begin():
                repo.insert_jobs(conn, rows, events)
    eng.dispose()
    return tok, ids


def _job_row(jid: str, project: str, t: float) -> dict:
    return {
        "id": jid, "name": f"q-{jid[:6]}", "project_id": project, "workload_class": "innovation",
        "image": "localhost/busybox:test", "command": ["/bin/busybox", "true"], "env": {"EPOCHS": "3"},
        "runtime": "container", "gpus": 1, "cpus": 4, "memory_gb": 16, "gpu_models": [], "pool": None,
        "workers": 1, "max_runtime_s": 600, "priority": 0, "max_retries": 1, "checkpointable": False,
        "status": "PENDING", "version": 1, "attempt": 1, "submit_time": t, "created_at": t,
        "admitted_at": None, "started_at": None, "finished_at": None, "cancel_requested_at": None,
        "exit_code": None, "message": "", "pending_code": "QUOTA", "pending_message": "", "pending_details": {},
        "queue_position": None, "estimated_start": None, "borrowing": False, "flavor_pool": None,
        "flavor_gpu_model": None, "owner_token_id": None,
    }


async def _user(port: int, token: str, ids: list[str], stop_at: float, record_from: float, st: Stats,
                rng: random.Random, offset: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
    k = offset
    try:
        while True:
            name = ENDPOINTS[k % len(ENDPOINTS)]
            k += 1
            path = {"overview": "/api/v1/overview", "metrics": "/metrics", "job list": "/api/v1/jobs?limit=50",
                    "job get": f"/api/v1/jobs/{rng.choice(ids)}"}[name]
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            writer.write(f"GET {path} HTTP/1.1\r\n{auth}".encode())
            status, data = await read_response(reader)
            if t0 < record_from:
                continue
            st.latencies_ms[name].append((time.perf_counter() - t0) * 1000)
            if status != 200:
                st.errors[name] += 1
                if len(st.samples) < 5:
                    st.samples.append(f"{name}: {status} {data[:160]!r}")
    except Exception as e:  # a dropped connection is an error of the run, not a crash
        st.errors["job get"] += 1
        if len(st.samples) < 5:
            st.samples.append(f"{type(e).__name__}: {e}")
    finally:
        writer.close()


def bench(*, database: str | None, queue: int = 35_000, projects: int = 50, users: int = 50,
          duration_s: float = 20.0, warmup_s: float = 2.0, seed: int = 7,
          overview_max_age_s: float | None = None) -> dict:
    """`overview_max_age_s`: the server's BROKER_OVERVIEW_MAX_AGE_S (None: its default; 0
    recomputes the overview on every request, as the broker did before the snapshot)."""
    url, cleanup = prepare_database(database)
    try:
        token, ids = fill_queue(url, queue, projects)
        env = dict(_NO_RATE_LIMIT)
        if overview_max_age_s is not None:
            env["BROKER_OVERVIEW_MAX_AGE_S"] = str(overview_max_age_s)
        proc, port = start_server("broker", url, 1, what="the broker server", env=env)
        st = Stats()
        try:
            t = time.perf_counter()
            record_from, stop_at = t + warmup_s, t + warmup_s + duration_s

            async def load():
                await asyncio.gather(*(_user(port, token, ids, stop_at, record_from, st, random.Random(seed + u), u)
                                       for u in range(users)))

            run_async(load)
        finally:
            stop_server(proc)
        endpoints = {e: {"requests": len(st.latencies_ms[e]), "errors": st.errors[e],
                         "p50_ms": round(percentile(st.latencies_ms[e], .5), 1),
                         "p95_ms": round(percentile(st.latencies_ms[e], .95), 1),
                         "p99_ms": round(percentile(st.latencies_ms[e], .99), 1)} for e in ENDPOINTS}
        requests = sum(v["requests"] for v in endpoints.values())
        return {"queue": queue, "projects": projects, "users": users, "duration_s": duration_s,
                "overview_max_age_s": overview_max_age_s,
                "database": redact(url), "requests": requests, "errors": sum(st.errors.values()),
                "requests_per_s": round(requests / duration_s, 1), "endpoints": endpoints,
                "error_samples": st.samples}
    finally:
        cleanup()
