"""`broker bench cli` end to end on a small scale: a real server, the real console script, curl."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from broker.cli import app


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is the benchmark's baseline")
def test_bench_cli_times_jobs_list_beside_curl(tmp_path):
    r = CliRunner().invoke(app, ["bench", "cli", "--json", "--database", f"sqlite:///{tmp_path / 'c.db'}",
                                 "--jobs", "60", "--runs", "2"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["jobs"] == 60 and out["runs"] == 2
    for who in ("cli", "curl"):
        assert out[who]["p90_ms"] >= out[who]["median_ms"] >= out[who]["min_ms"] > 0, out
    # a CLI run is a whole interpreter start plus the request: slower than curl, never faster
    assert out["ratio_median"] > 1 and out["meets_goal"] == (out["cli"]["median_ms"] <= 300), out


def test_the_client_commands_do_not_import_the_server():
    import subprocess
    import sys

    code = ("import sys, broker.cli; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('sqlalchemy', 'sqlmodel', 'fastapi', 'uvicorn', 'ray', 'yaml') or m.startswith('broker.services')]; "
            "print(bad)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
