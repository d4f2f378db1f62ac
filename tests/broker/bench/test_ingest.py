"""`broker bench ingest` end to end, tiny: a real server, real agents' reports, rows verified."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_ingest_smoke_on_sqlite(tmp_path):
    p = subprocess.run([sys.executable, "-m", "broker.cli", "bench", "ingest", "--json", "--database",
                        f"sqlite:///{tmp_path}/b.db", "--nodes", "2", "--gpus", "2", "--readings", "5",
                        "--duration", "2", "--workers", "1"], capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["errors"] == 0 and out["samples_per_s"] > 0 and out["samples_per_report"] == 10
    assert out["samples_stored"] >= 0.9 * out["samples_per_s"] * out["duration_s"]  # acknowledged = stored
    for key in ("p95_ms", "p50_ms", "cpu_s", "samples_per_cpu_s", "runs"):
        assert key in out
