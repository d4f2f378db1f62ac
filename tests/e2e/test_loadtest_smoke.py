"""The Locust scenarios run headless against a real broker API and pass their thresholds.

Bounded: 5 users for 6 seconds on loopback. The thresholds here are loose (a shared 2-core
machine); the figures that matter are measured by `broker bench submit` (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import subprocess
import sys


def test_locust_scenarios_pass_against_a_live_broker(served):
    url, token, _ = served
    r = subprocess.run([sys.executable, "-m", "loadtests.run", "--host", url, "--token", token, "--users", "5",
                        "--spawn-rate", "5", "--duration", "6", "--max-p95-ms", "2000", "--max-error-rate", "0"],
                       capture_output=True, text=True, timeout=180)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0, (out, r.stderr[-2000:])
    assert out["requests"] > 20 and out["failures"] == 0
    assert "POST /api/v1/jobs" in out["endpoints"] and "GET /api/v1/overview" in out["endpoints"]


def test_loadtest_refuses_remote_targets():
    r = subprocess.run([sys.executable, "-m", "loadtests.run", "--host", "http://10.0.0.1:8000", "--duration", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "loopback" in r.stderr
