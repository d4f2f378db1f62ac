"""`broker bench submit`: concurrent POST /api/v1/jobs against a real API server.

What it does, in one run:
1. prepares the database (PostgreSQL: a private schema, dropped afterwards; SQLite: a file in a
   temp dir), migrates it, seeds the demo region, a node inventory and a bearer token;
2. starts the API (uvicorn, uvloop + httptools, 127.0.0.1 on a free port) in a subprocess;
3. runs a closed-loop load generator in this process: `concurrency` keep-alive connections,
   each sending one job per request back to back for `duration` seconds (after a warm-up),
   over raw asyncio streams so the generator costs little CPU on the shared machine;
4. stops the server and checks that every 201's job id is a row in the DB (a missing row
   counts as an error: a 201 must mean durably stored);
5. does the same against the baseline app (`broker.bench_baseline`) and reports the ratio.

JSON keys: jobs_per_s, p95_ms, p50_ms, p99_ms, errors, requests, verified, concurrency,
duration_s, database, server_workers, repeat, baseline {...}, ratio (jobs_per_s / baseline's),
runs [...] (with --repeat N > 1: the top-level figures are the median run's).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    ys = sorted(xs)
    return ys[min(len(ys) - 1, max(0, int(round(q * (len(ys) - 1)))))]


# ----------------------------------------------------------------------------- database


def prepare_database(url: str | None) -> tuple[str, callable]:
    """Return (url, cleanup) for a fresh, migrated, seeded database."""
    from broker.db import normalize_url

    if url is None:
        url = PG_DEFAULT if _pg_up(PG_DEFAULT) else ""
    if not url or url.startswith("sqlite"):
        if not url:
            d = tempfile.mkdtemp(prefix="bench-submit-")
            return _seed(f"sqlite:///{d}/broker.db"), lambda: shutil.rmtree(d, ignore_errors=True)
        return _seed(url), lambda: None
    url = normalize_url(url)
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    import psycopg

    base = url.replace("+psycopg", "").split("?")[0]
    with psycopg.connect(base, autocommit=True) as c:
        c.execute(f'CREATE SCHEMA "{schema}"')

    def cleanup():
        with psycopg.connect(base, autocommit=True) as c:
            c.execute(f'DROP SCHEMA "{schema}" CASCADE')

    sep = "&" if "?" in url else "?"
    return _seed(f"{url}{sep}options=-csearch_path%3D{schema}"), cleanup


def _pg_up(url: str) -> bool:
    try:
        import psycopg

        psycopg.connect(url.replace("+psycopg", ""), connect_timeout=2).close()
        return True
    except Exception:
        return False


def _seed(url: str) -> str:
    from sqlmodel import Session

    from broker.db import make_engine, migrate
    from broker.models import Node
    from broker.services.bootstrap import seed_demo
    from broker.settings import Settings

    st = Settings(database_url=url, data_dir=Path(tempfile.gettempdir()))  # data_dir is unused here
    migrate(st)
    eng = make_engine(st)
    with Session(eng) as s:
        seed_demo(s, gpu_model="A100")
        for i in range(4):
            s.add(Node(id=f"bench-{i}", hostname=f"bench-{i}", pool="innovation" if i else "operation",
                       gpu_model="A100", gpus=8, cpus=64, memory_gb=512))
        s.commit()
    eng.dispose()
    return url


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


# ----------------------------------------------------------------------------- server


def serve(mode: str, url: str, port: int, workers: int) -> None:
    """Run the API in this process (the subprocess entry point)."""
    import uvicorn

    os.environ["BROKER_DATABASE_URL"] = url
    # One token drives the whole load: the per-token rate limiter stays on the path (its cost
    # is measured) with a limit no run reaches, unless the caller set one.
    os.environ.setdefault("BROKER_RATE_LIMIT_PER_S", "1e9")
    os.environ.setdefault("BROKER_RATE_LIMIT_BURST", "1000000000")
    target = "broker.bench_submit:_broker_app" if mode == "broker" else "broker.bench_submit:_baseline_app"
    uvicorn.run(target, factory=True, host="127.0.0.1", port=port, workers=workers, loop="uvloop",
                http="httptools", log_level="warning", access_log=False, proxy_headers=False,
                server_header=False, date_header=False)


def _broker_app():
    from broker.app import create_app
    from broker.settings import Settings

    return create_app(Settings(), start_background=False)


def _baseline_app():
    from broker.bench_baseline import create_baseline_app
    from broker.settings import Settings

    return create_baseline_app(Settings())


def start_server(mode: str, url: str, workers: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "broker.bench_submit", "serve", mode, url, str(port), str(workers)],
                            start_new_session=True)
    return wait_healthy(proc, port, f"the {mode} server"), port


def wait_healthy(proc: subprocess.Popen, port: int, what: str, timeout_s: float = 60.0) -> subprocess.Popen:
    """Wait until the server subprocess answers GET /healthz with 200; stop it and raise if not."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc
        except OSError:
            pass  # not listening yet
        time.sleep(0.1)
    stop_server(proc)
    raise RuntimeError(f"{what} did not answer within {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


# ----------------------------------------------------------------------------- load


def job_body(i: int) -> bytes:
    return orjson.dumps({
        "name": f"bench-{i}", "project": "ouh-liver", "class": "innovation", "image": "localhost/busybox:test",
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
            status_line = await reader.readline()
            length, status = 0, int(status_line.split(b" ", 2)[1])
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                k, _, v = line.partition(b":")
                if k.lower() == b"content-length":
                    length = int(v)
            data = await reader.readexactly(length)
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
    proc, port = start_server(mode, url, workers)
    try:
        try:
            import uvloop

            res = uvloop.run(run_load(port, token, concurrency, duration_s, warmup_s))
        except ImportError:
            res = asyncio.run(run_load(port, token, concurrency, duration_s, warmup_s))
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
        ours_runs, base_runs = [], []
        for _ in range(max(1, repeat)):
            ours_runs.append(run_one("broker", url, token, concurrency=concurrency, duration_s=duration_s,
                                     warmup_s=warmup_s, workers=workers))
            if baseline:
                base_runs.append(run_one("baseline", url, token, concurrency=baseline_concurrency or concurrency,
                                         duration_s=duration_s, warmup_s=warmup_s,
                                         workers=baseline_workers or workers))
        ours = _median_run(ours_runs)
        out = {**asdict(ours), "errors": sum(r.errors for r in ours_runs), "database": _redact(url),
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


def _redact(url: str) -> str:
    return url.split("?")[0].split("@")[-1] if "@" in url else url.split("?")[0]


if __name__ == "__main__" and len(sys.argv) >= 2 and sys.argv[1] == "serve":
    serve(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
