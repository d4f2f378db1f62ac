"""`broker bench cli`: wall time of `broker jobs list` against a live API, beside `curl` of the
same route in the same run.

The CLI talks to the broker over HTTP and must not import the server: what a user waits for is
the interpreter's start, the client's imports, one request and the table. The benchmark starts
the real API (a subprocess, database seeded with `--jobs` jobs over the demo projects), then
runs each command `--runs` times alternately (so load on a shared machine hits both alike) and
reports the median and p90 wall time of each and the median ratio CLI / curl. The CLI run is
the installed console script (`broker`, beside this interpreter) with BROKER_URL/BROKER_TOKEN,
default output (the human table, 50 newest jobs); curl fetches the route the CLI calls.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from broker.bench.common import percentile, prepare_database, redact, start_server, stop_server
from broker.bench.reads import fill_queue


def _timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited with {r.returncode}: {r.stderr.decode(errors='replace')[-500:]}")
    return wall


def bench(*, database: str | None = None, jobs: int = 1000, runs: int = 20) -> dict:
    curl = shutil.which("curl")
    if curl is None:
        raise RuntimeError("curl is not installed (the baseline of this benchmark)")
    script = Path(sys.executable).with_name("broker")
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "broker.cli"]
    url, cleanup = prepare_database(database)
    proc = None
    try:
        token, _ = fill_queue(url, jobs, 5)
        proc, port = start_server("broker", url, 1, what="the broker API")
        base = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        env.update(BROKER_URL=base, BROKER_TOKEN=token, COLUMNS="120")
        cli_argv = [*cli, "jobs", "list"]
        curl_argv = [curl, "-sf", "-o", "/dev/null", "-H", f"Authorization: Bearer {token}",
                     f"{base}/api/v1/jobs?limit=50"]
        _timed(cli_argv, env), _timed(curl_argv, env)  # warm: page cache, the server's caches
        cli_s, curl_s = [], []
        for _ in range(runs):
            cli_s.append(_timed(cli_argv, env))
            curl_s.append(_timed(curl_argv, env))
    finally:
        if proc is not None:
            stop_server(proc)
        cleanup()

    def figures(xs: list[float]) -> dict:
        return {"median_ms": round(statistics.median(xs) * 1000, 1), "p90_ms": round(percentile(xs, 0.9) * 1000, 1),
                "min_ms": round(min(xs) * 1000, 1)}

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    out = {"database": redact(url), "jobs": jobs, "runs": runs, "cli": figures(cli_s), "curl": figures(curl_s),
           "ratio_median": round(statistics.median(cli_s) / statistics.median(curl_s), 2),
           "goal_ms": 300, "load_avg_1m": load}
    out["meets_goal"] = out["cli"]["median_ms"] <= out["goal_ms"]
    return out
