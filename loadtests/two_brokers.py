"""The load scenario of the reliability issue: two brokers on one PostgreSQL, loaded at once.

    python -m loadtests.two_brokers --database postgresql+psycopg://postgres@127.0.0.1:5432/test \
        --users 50 --duration 600

Prepares a private schema (migrated, demo region, an admin token) and starts two broker
processes on it over the shared fake executor (`broker.bench.failover`'s server: jobs need no
container runtime), one of them the leader; then runs `python -m loadtests.run` against each
with half the users for `duration` seconds, both at once. Prints one JSON object: each broker's
figures as `loadtests.run` reports them (requests, failures, p50/p95 per endpoint and overall,
`pass` against the 250 ms p95 threshold), which one led, the machine's load average before and
after, and the jobs by status at the end (the queue bounded by the pending caps). Exits 0 when
both runs pass their thresholds, 1 otherwise. Everything it started is stopped at the end (by
PID); the schema is dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtests.two_brokers")
    ap.add_argument("--database", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--users", type=int, default=50, help="in all, half on each broker")
    ap.add_argument("--duration", type=int, default=600, help="seconds")
    ap.add_argument("--cycle-interval", type=float, default=1.0)
    a = ap.parse_args(argv)
    from sqlalchemy import text

    from broker.bench.failover import prepare

    env = prepare(a.database)
    try:
        extra = {"BROKER_CYCLE_INTERVAL_S": str(a.cycle_interval)}
        brokers = [env.start(name, extra=extra) for name in ("a", "b")]
        load_before = os.getloadavg()
        runs = [subprocess.Popen([sys.executable, "-m", "loadtests.run", "--host", b.url,
                                  "--users", str(max(1, a.users // 2)), "--spawn-rate", "10",
                                  "--duration", str(a.duration), "--token", env.token],
                                 cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for b in brokers]
        out: dict = {"users": a.users, "duration_s": a.duration, "brokers": {}}
        for name, b, p in zip("ab", brokers, runs):
            stdout, stderr = p.communicate(timeout=a.duration + 300)
            lines = [line for line in stdout.splitlines() if line.startswith("{")]
            fig = json.loads(lines[-1]) if lines else {"error": stderr[-2000:]}
            out["brokers"][name] = {"leader": b.is_leader(), "exit": p.returncode, **fig}
        out["load_before"], out["load_after"] = [round(x, 2) for x in load_before], \
            [round(x, 2) for x in os.getloadavg()]
        with env.engine().connect() as c:
            out["jobs_by_status"] = dict(c.execute(text("select status, count(*) from jobs group by status")).all())
        out["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        print(json.dumps(out))
        return 0 if all(r.get("exit") == 0 for r in out["brokers"].values()) else 1
    finally:
        env.close()


if __name__ == "__main__":
    raise SystemExit(main())
