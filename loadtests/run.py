"""Run the Locust scenarios headless against a broker and fail on thresholds.

    python -m loadtests.run --host http://127.0.0.1:8000 --users 20 --spawn-rate 10 \
        --duration 30 --max-p95-ms 250 --max-error-rate 0.0

Exits 0 when every threshold holds, 1 otherwise, and prints one JSON line with the figures
(requests, failures, error_rate, rps, p50_ms, p95_ms per endpoint and overall). Traffic goes
only to the given host; the run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtests.run")
    ap.add_argument("--host", required=True)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--spawn-rate", type=float, default=10)
    ap.add_argument("--duration", type=int, default=30, help="seconds")
    ap.add_argument("--max-p95-ms", type=float, default=250.0)
    ap.add_argument("--max-error-rate", type=float, default=0.0)
    ap.add_argument("--token", default=os.environ.get("BROKER_TOKEN", ""))
    a = ap.parse_args(argv)
    if not a.host.startswith(("http://127.", "http://localhost", "http://[::1]")):
        print("refusing: load tests target only a broker on this machine (loopback)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "run")
        env = {**os.environ, "BROKER_TOKEN": a.token}
        proc = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(Path(__file__).with_name("locustfile.py")), "--headless",
             "--host", a.host, "-u", str(a.users), "-r", str(a.spawn_rate), "-t", f"{a.duration}s",
             "--csv", prefix, "--only-summary", "--exit-code-on-error", "0"],
            env=env, capture_output=True, text=True, timeout=a.duration + 120)
        stats_file = Path(prefix + "_stats.csv")
        if not stats_file.exists():
            print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
            return 1
        rows = list(csv.DictReader(stats_file.open()))
    out: dict = {"endpoints": {}}
    for r in rows:
        fig = {"requests": int(r["Request Count"]), "failures": int(r["Failure Count"]),
               "rps": round(float(r["Requests/s"]), 1), "p50_ms": float(r["50%"] or 0), "p95_ms": float(r["95%"] or 0)}
        if r["Name"] == "Aggregated":
            out.update(fig)
        else:
            out["endpoints"][r["Name"]] = fig
    out["error_rate"] = round(out.get("failures", 0) / max(1, out.get("requests", 0)), 4)
    ok = out.get("requests", 0) > 0 and out["error_rate"] <= a.max_error_rate and out.get("p95_ms", 1e9) <= a.max_p95_ms
    out["pass"] = ok
    print(json.dumps(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
