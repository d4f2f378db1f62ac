"""`broker bench dashboards` end to end on a small fleet: a real server, every dashboard API for both
roles, the plain queries beside them; on SQLite and, where it answers, PostgreSQL."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from broker.bench.dashboards import PAGES
from broker.cli import app
from tests.broker.conftest import PG_URL, pg_reason

SMALL = ["--nodes", "6", "--days", "2", "--minute-hours", "2", "--projects", "3", "--pending", "40",
         "--history", "100", "--requests", "3"]


def _run(database: str) -> dict:
    r = CliRunner().invoke(app, ["bench", "dashboards", "--json", "--database", database, *SMALL])
    assert r.exit_code == 0, r.output
    return json.loads(r.output.strip().splitlines()[-1])


def _check(out: dict) -> None:
    assert out["error_samples"] == [] and all(a["errors"] == 0 for a in out["api"].values())
    assert set(out["api"]) == {f"{p} [{role}]" for p in PAGES for role in ("platform-admin", "member")}
    assert set(out["plain"]) == set(PAGES) | {"nodes, a new minute"}
    # 6 nodes x 8 GPUs x (48 hours + 120 minutes)
    assert out["fleet"]["gpus"] == 48 and out["fleet"]["rollup_rows"] == 48 * (48 + 120)
    for name, a in out["api"].items():
        assert a["requests"] == 3 and a["p95_ms"] >= a["p50_ms"] > 0 and a["bytes"] > 100, name
    # a member reads less of the queue than the platform-admin
    assert out["api"]["queue [member]"]["bytes"] < out["api"]["queue [platform-admin]"]["bytes"]


@pytest.mark.slow
def test_bench_dashboards_json_on_sqlite(tmp_path):
    _check(_run(f"sqlite:///{tmp_path / 'd.db'}"))


@pytest.mark.slow
@pytest.mark.postgres
def test_bench_dashboards_json_on_postgres():
    if pg_reason():
        pytest.skip(pg_reason())
    out = _run(PG_URL)
    _check(out)
    assert out["database"].startswith("127.0.0.1:5432")
