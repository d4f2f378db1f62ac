"""`broker bench reads` end to end on a small scale: a real server, a filled queue, the four reads."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from broker.cli import app


@pytest.mark.slow
def test_bench_reads_json_on_sqlite(tmp_path):
    r = CliRunner().invoke(app, ["bench", "reads", "--json", "--database", f"sqlite:///{tmp_path / 'r.db'}",
                                 "--queue", "300", "--projects", "3", "--users", "4", "--duration", "1"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["errors"] == 0, out["error_samples"]
    assert set(out["endpoints"]) == {"overview", "metrics", "job list", "job get"}
    for name, e in out["endpoints"].items():
        assert e["requests"] > 0 and e["p95_ms"] >= e["p50_ms"] > 0, name
