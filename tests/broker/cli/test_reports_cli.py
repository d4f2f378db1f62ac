"""`broker reports usage|statement|prices|set-price` and `broker usage`: tables and files a
person reads, over a hand-written ledger (the figures themselves are tested in
tests/broker/services/test_reports.py)."""

from __future__ import annotations

import csv
import io

from sqlmodel import Session

from broker.models import Ledger
from tests.broker.services.test_reports import _world


def test_usage_report_table_csv_and_json(cli, engine):
    d, p1, p2, jobs = _world(engine)
    r = cli("reports", "usage", "-g", "project", "-d", d, "--from", "2026-11-01", "--to", "2026-12-01")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split()[:3] == ["PERIOD", "PROJECT", "ALLOC"]
    two = next(x for x in lines if p2 in x)
    assert "2026-11-01" in two and "32.0" in two  # c: 4 x 4 h; d: 8 x 1 h twice
    assert lines[-1].startswith("TOTAL")
    r = cli("reports", "usage", "-g", "project", "-d", d, "--from", "2026-11-01", "--to", "2026-12-01", "-o", "csv")
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert [x["project"] for x in rows] == [p1, p2, ""]
    assert float(rows[1]["allocated_gpu_hours"]) == 32.0  # c: 4 x 4 h; d: 8 x 1 h twice
    r = cli("reports", "usage", "-d", d, "--json", "--from", "2026-11-01", "--to", "2026-12-01")
    assert r.exit_code == 0 and '"group_by": "department"' in r.output


def test_statement_writes_csv_and_html(cli, engine, tmp_path):
    d, p1, p2, jobs = _world(engine)
    r = cli("reports", "statement", "--department", d, "--month", "2026-11", "--out-dir", str(tmp_path))
    assert r.exit_code == 0, r.output
    html = (tmp_path / f"statement-{d}-2026-11.html").read_text()
    assert "<table>" in html and p1 in html and p2 in html
    rows = list(csv.DictReader(io.StringIO((tmp_path / f"statement-{d}-2026-11.csv").read_text())))
    with Session(engine) as s:
        b = s.get(Ledger, (jobs["b"], 1))
    assert float(rows[0]["allocated_gpu_hours"]) == round((2 * 3 * 3600 + b.allocated_gpu_s) / 3600, 6)


def test_prices_and_usage_shortcuts(cli, engine):
    d, p1, p2, jobs = _world(engine)
    assert cli("reports", "set-price", "operation", "--gpu-hour", "12.5", "--kwh", "1.5").exit_code == 0
    r = cli("reports", "prices")
    assert "operation" in r.output and "12.50" in r.output
    r = cli("usage", "-d", d)
    assert r.exit_code == 0 and "PERIOD" in r.output
    r = cli("usage", "ouh-liver")  # a project: its quota view, as before
    assert r.exit_code == 0 and "Department budget" in r.output
    r = cli("reports", "usage", "-g", "galaxy")
    assert r.exit_code != 0
    r = cli("reports", "statement", "--department", d, "--month", "2026-13")
    assert r.exit_code == 2 and "BAD_MONTH" in r.output
