"""`broker bench submit`: concurrent POST /api/v1/jobs against a real API server.

What it does, in one run:
1. prepares the database (PostgreSQL: a private schema, dropped afterwards; SQLite: a file in a
   temp dir), migrates it, seeds the demo region, a node inventory, a bearer token and
   `BENCH_PROJECTS` projects the jobs are spread over (each under its pending cap);
2. starts the API (uvicorn, uvloop + httptools, 127.0.0.1 on a free port) in a subprocess;
3. runs a closed-loop load generator in this process: `concurrency` keep-alive connections,
   each sending one job per request back to back for `duration` seconds (after a warm-up),
   over raw asyncio streams so the generator costs little CPU on the shared machine;
4. stops the server and checks that every 201's job id is a row in the DB (a missing row
   counts as an error: a 201 must mean durably stored);
5. does the same against the baseline app (`broker.bench.baseline`) and reports the ratio.

JSON keys: jobs_per_s, p95_ms, p50_ms, p99_ms, errors, requests, verified, concurrency,
duration_s, database, server_workers, repeat, baseline {...}, ratio (jobs_per_s / baseline's),
runs [...] (with --repeat N > 1: the top-level figures are the median run's).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict, dataclass, field

import orjson

from broker.bench.common import percentile, prepare_database, read_response, redact, run_async, start_server, stop_server

# One token drives the whole load: the per-token rate limiter stays on the path (its cost is
# measured) with a limit no run reaches, unless the caller set one.
_NO_RATE_LIMIT = {"BROKER_RATE_LIMIT_PER_S": "1e9", "BROKER_RATE_LIMIT_BURST": "1000000000"}


@dataclass
class LoadResult:
    requests: int = 0
    ok_ids: list[str] = field(default_factory=list)
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    error_samples: list[str] = field(default_factory=list)


@dataclass
class RunReport:
    mode: str
    jobs_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    requests: int
    verified: int
    concurrency: int
    duration_s: float
    server_workers: int
    error_samples: list[str]


def make_token(url: str) -> str:
    from sqlmodel import Session

    from broker.db import make_engine
    from broker.services.bootstrap import create_token
    from broker.settings import Settings

    eng = make_engine(Settings(database_url=url))
    with Session(eng) as s:
        tok, _ = create_token(s, name="bench", role="platform-admin")
        s.commit()
    eng.dispose()
    return tok


def count_rows(url: str, ids: list[str]) -> int:
    from sqlalchemy import func, select
    from sqlmodel import Session

    from broker.db import make_engine
    from broker.models import Job
    from broker.settings import Settings

    eng = make_engine(Settings(database_url=url))
    n = 0
    with Session(eng) as s:
        for i in range(0, len(ids), 1000):
            chunk = ids[i:i + 1000]
            n += s.execute(select(func.count()).select_from(Job).where(Job.id.in_(chunk))).scalar_one()
    eng.dispose()
    return n


# ----------------------------------------------------------------------------- load


# The load is spread round-robin over this many projects, each under the default pending cap
# (1,000): the cap is counted on every submit as in production, and no run (nor three runs on
# one database) fills a project, so no request is refused for it.
BENCH_PROJECTS = 128


def bench_project(i: int) -> str:
    return f"bench-p{i % BENCH_PROJECTS:03d}"


def make_projects(url: str) -> None:
    from sqlmodel import Session

    from broker.db import make_engine
    from broker.models import Project
    from broker.settings import Settings

    eng = make_engine(Settings(database_url=url))
    with Session(eng) as s:
        for i in range(BENCH_PROJECTS):
            s.add(Project(id=bench_project(i), department_id="ouh", name=bench_project(i)))
        s.commit()
    eng.dispose()


def job_body(i: int) -> bytes:
    return orjson.dumps({
        "name": f"bench-{i}", "project": bench_project(i), "class": "innovation", "image": "localhost/busybox:test",
        "command": ["/bin/busybox", "sh", "-c", "echo hello; sleep 1"], "env": {"EPOCHS": "3", "LR": "0.001"},
        "resources": {"gpus": 1, "cpus": 4, "memory_gb": 16}, "workers": 1, "max_runtime_s": 600,
        "priority": 0, "runtime": "container", "max_retries": 1,
    })


async def _connection(port: int, token: str, stop_at: float, record_from: float, res: LoadResult, seq: list[int]):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (f"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\n").encode()
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            seq[0] += 1
            body = job_body(seq[0])
            writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            status, data = await read_response(reader)
            t1 = time.perf_counter()
            if t0 < record_from:
                if status == 201:
                    res.ok_ids.append(orjson.loads(data)["id"])  # warm-up rows are verified too
                continue
            res.requests += 1
            res.latencies_ms.append((t1 - t0) * 1000)
            if status == 201:
                res.ok_ids.append(orjson.loads(data)["id"])
            else:
                res.errors += 1
                if len(res.error_samples) < 5:
                    res.error_samples.append(f"{status} {data[:200]!r}")
    except Exception as e:  # a dropped connection is an error of the run, not a crash
        res.errors += 1
        if len(res.error_samples) < 5:
            res.error_samples.append(f"{type(e).__name__}: {e}")
    finally:
        writer.close()


async def run_load(port: int, token: str, concurrency: int, duration_s: float, warmup_s: float) -> LoadResult:
    res = LoadResult()
    t = time.perf_counter()
    record_from, stop_at = t + warmup_s, t + warmup_s + duration_s
    seq = [0]
    await asyncio.gather(*(_connection(port, token, stop_at, record_from, res, seq) for _ in range(concurrency)))
    res.elapsed_s = time.perf_counter() - record_from
    return res


def run_one(mode: str, url: str, token: str, *, concurrency: int, duration_s: float, warmup_s: float,
            workers: int) -> RunReport:
    env = {k: v for k, v in _NO_RATE_LIMIT.items() if k not in os.environ}
    proc, port = start_server(mode, url, workers, what=f"the {mode} server", lean=True, env=env)
    try:
        res = run_async(lambda: run_load(port, token, concurrency, duration_s, warmup_s))
    finally:
        stop_server(proc)
    verified = count_rows(url, res.ok_ids)
    missing = len(res.ok_ids) - verified
    ok = res.requests - res.errors
    return RunReport(mode=mode, jobs_per_s=round(ok / res.elapsed_s, 1), p50_ms=round(percentile(res.latencies_ms, .5), 2),
                     p95_ms=round(percentile(res.latencies_ms, .95), 2), p99_ms=round(percentile(res.latencies_ms, .99), 2),
                     errors=res.errors + missing, requests=res.requests, verified=verified, concurrency=concurrency,
                     duration_s=duration_s, server_workers=workers, error_samples=res.error_samples)


def bench(*, database: str | None, concurrency: int, duration_s: float, warmup_s: float = 1.0, workers: int = 1,
          baseline: bool = True, baseline_workers: int | None = None, baseline_concurrency: int | None = None,
          repeat: int = 1) -> dict:
    """Run ours (and the baseline) `repeat` times, alternating, on one prepared database.

    The top-level figures are those of our median-throughput run (and the baseline's median
    run), so one unlucky run on a shared machine neither makes nor breaks the result; `errors`
    is the sum over all runs, and every run is listed under `runs`.
    """
    url, cleanup = prepare_database(database)
    try:
        token = make_token(url)
        make_projects(url)
        ours_runs, base_runs = [], []
        for _ in range(max(1, repeat)):
            ours_runs.append(run_one("broker", url, token, concurrency=concurrency, duration_s=duration_s,
                                     warmup_s=warmup_s, workers=workers))
            if baseline:
                base_runs.append(run_one("baseline", url, token, concurrency=baseline_concurrency or concurrency,
                                         duration_s=duration_s, warmup_s=warmup_s,
                                         workers=baseline_workers or workers))
        ours = _median_run(ours_runs)
        out = {**asdict(ours), "errors": sum(r.errors for r in ours_runs), "database": redact(url),
               "repeat": len(ours_runs)}
        if baseline:
            base = _median_run(base_runs)
            out["baseline"] = {**asdict(base), "errors": sum(r.errors for r in base_runs)}
            out["ratio"] = round(ours.jobs_per_s / base.jobs_per_s, 2) if base.jobs_per_s else None
        if len(ours_runs) > 1:
            out["runs"] = [{**{k: asdict(r)[k] for k in ("mode", "jobs_per_s", "p50_ms", "p95_ms", "errors")},
                            "error_samples": r.error_samples[:3]} for r in ours_runs + base_runs]
        return out
    finally:
        cleanup()


def _median_run(runs: list[RunReport]) -> RunReport:
    return sorted(runs, key=lambda r: r.jobs_per_s)[len(runs) // 2]
