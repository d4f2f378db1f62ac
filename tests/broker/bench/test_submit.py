"""`broker bench submit` end to end on a small scale: real uvicorn servers in subprocesses,
every 201 verified as a DB row, with the JSON keys BENCHMARKS.md documents."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from broker.cli import app


@pytest.mark.slow
def test_bench_submit_json_on_sqlite(tmp_path):
    r = CliRunner().invoke(app, ["bench", "submit", "--json", "--database", f"sqlite:///{tmp_path / 'b.db'}",
                                 "--duration", "1", "--concurrency", "2", "--repeat", "2"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    for k in ("jobs_per_s", "p95_ms", "p50_ms", "errors", "ratio"):
        assert k in out
    assert out["errors"] == 0 and out["requests"] > 0 and out["verified"] >= out["requests"]
    assert out["baseline"]["errors"] == 0 and out["baseline"]["requests"] > 0
    assert out["repeat"] == 2 and [r["mode"] for r in out["runs"]] == ["broker", "broker", "baseline", "baseline"]
