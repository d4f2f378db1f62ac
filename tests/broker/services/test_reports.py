"""Usage reports against hand-computed ledgers, on SQLite and PostgreSQL.

Each test builds its own department with projects, jobs, attempts and ledger rows written by
hand (times chosen to straddle day and month boundaries), then reads the report through the
API and checks it against figures computed here: allocated GPU-seconds both ways (the report's
cells sum to the ledger's own rows to the second), used GPU-hours and energy from rollups,
preemptions, waits, cost, CSV, HTML and who may see what.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid

import pytest
from sqlalchemy import select
from sqlmodel import Session

from broker.models import Attempt, Department, GpuRollup, Job, Ledger, Project, TelemetryMark
from broker.services.accounting import accrue_ledger
from broker.services.reports import split


def T(s: str) -> float:
    return dt.datetime.fromisoformat(s).replace(tzinfo=dt.timezone.utc).timestamp()


H = 3600.0


def _world(engine):
    """A department with two projects and four jobs (five attempts):

    a: p1, 2 GPUs, 2026-10-31 22:00 -> 2026-11-01 03:00 (straddles the month and the day)
    b: p1, 1 GPU,  2026-11-15 10:00:00 -> 10:30:15.5
    c: p2, 4 GPUs, 2026-11-30 20:00 -> still running; accrued at 2026-12-01 02:10 -> up to 02:00
    d: p2, 8 GPUs, attempt 1 2026-11-10 00:00 -> 01:00 preempted; attempt 2 01:05 -> 02:05
    """
    d = "d-" + uuid.uuid4().hex[:8]
    p1, p2 = f"{d}-one", f"{d}-two"
    jobs = {k: uuid.uuid4().hex[:16] for k in "abcd"}
    with Session(engine) as s:
        s.add(Department(id=d, name=d.upper()))
        s.add(Project(id=p1, department_id=d, name=p1))
        s.add(Project(id=p2, department_id=d, name=p2))
        s.commit()

        def job(key, project, gpus, submit, status, attempt=1, ckpt=False):
            s.add(Job(id=jobs[key], project_id=project, gpus=gpus, workers=1, submit_time=submit, status=status,
                      attempt=attempt, checkpointable=ckpt))

        def run(key, n, project, gpus, start, end, status, pool="innovation", model="A100"):
            s.add(Attempt(job_id=jobs[key], number=n, status=status, admitted_at=start, started_at=start, ended_at=end))
            s.add(Ledger(job_id=jobs[key], attempt=n, project_id=project, department_id=d, pool=pool, gpu_model=model,
                         gpus=gpus, started_at=start, ended_at=end,
                         allocated_gpu_s=0.0 if end is None else gpus * (end - start)))

        job("a", p1, 2, T("2026-10-31T21:00:00"), "SUCCEEDED")
        job("b", p1, 1, T("2026-11-15T09:59:00"), "SUCCEEDED")
        job("c", p2, 4, T("2026-11-30T19:00:00"), "RUNNING")
        job("d", p2, 8, T("2026-11-09T23:50:00"), "SUCCEEDED", attempt=2)
        s.commit()
        run("a", 1, p1, 2, T("2026-10-31T22:00:00"), T("2026-11-01T03:00:00"), "SUCCEEDED")
        run("b", 1, p1, 1, T("2026-11-15T10:00:00"), T("2026-11-15T10:30:15.5"), "SUCCEEDED")
        run("c", 1, p2, 4, T("2026-11-30T20:00:00"), None, "RUNNING", pool="operation", model="H100")
        run("d", 1, p2, 8, T("2026-11-10T00:00:00"), T("2026-11-10T01:00:00"), "PREEMPTED")
        run("d", 2, p2, 8, T("2026-11-10T01:05:00"), T("2026-11-10T02:05:00"), "SUCCEEDED")
        s.commit()
    accrue_ledger(engine, T("2026-12-01T02:10:00"))
    return d, p1, p2, jobs


@pytest.fixture
def world(engine):
    return _world(engine)


def _report(client, **params):
    r = client.get("/api/v1/reports/usage", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def _cells(rep) -> dict:
    return {(row["period_start"][:10], row["group"]): row for row in rep["rows"]}


def _ledger_sum(engine, department) -> float:
    with Session(engine) as s:
        rows = s.execute(select(Ledger).where(Ledger.department_id == department)).scalars().all()
        return sum(r.allocated_gpu_s for r in rows)


def test_accrual_moves_an_open_row_to_the_last_hour(engine, world):
    d, p1, p2, jobs = world
    with Session(engine) as s:
        c = s.get(Ledger, (jobs["c"], 1))
        assert c.ended_at is None and c.accrued_to == T("2026-12-01T02:00:00")
        assert c.allocated_gpu_s == 4 * 6 * H
        closed = s.get(Ledger, (jobs["b"], 1))
        assert closed.accrued_to is None and closed.allocated_gpu_s == 1 * (30 * 60 + 15.5)
    # again within the same hour: nothing moves; an hour later: one more hour
    assert accrue_ledger(engine, T("2026-12-01T02:59:59")) == 0
    accrue_ledger(engine, T("2026-12-01T03:00:00"))
    with Session(engine) as s:
        assert s.get(Ledger, (jobs["c"], 1)).allocated_gpu_s == 4 * 7 * H


def test_monthly_report_reconciles_with_the_ledger_to_the_second(client, engine, world):
    d, p1, p2, jobs = world
    rep = _report(client, group_by="project", period="month", department=d, **{"from": "2026-10-01", "to": "2027-01-01"})
    cells = _cells(rep)
    want = {
        ("2026-10-01", p1): 2 * 2 * H,  # a: 22:00 -> 24:00
        ("2026-11-01", p1): 2 * 3 * H + (30 * 60 + 15.5),  # a after midnight + b
        ("2026-11-01", p2): 4 * 4 * H + 8 * H + 8 * H,  # c until midnight + both attempts of d
        ("2026-12-01", p2): 4 * 2 * H,  # c as accrued: 00:00 -> 02:00
    }
    assert {k: v["allocated_gpu_s"] for k, v in cells.items()} == pytest.approx(want, abs=1e-6)
    # both ways: the report's cells and its total sum to the ledger's own rows, to the second
    ledger = _ledger_sum(engine, d)
    assert abs(sum(r["allocated_gpu_s"] for r in rep["rows"]) - ledger) < 1.0
    assert abs(rep["totals"]["allocated_gpu_s"] - ledger) < 1.0
    assert cells[("2026-11-01", p2)]["jobs"] == 2 and cells[("2026-11-01", p1)]["jobs"] == 2
    # preemption: one attempt of d, not checkpointable: its 8 GPU-hours are lost
    assert cells[("2026-11-01", p2)]["preemptions"] == 1
    assert cells[("2026-11-01", p2)]["gpu_hours_lost"] == pytest.approx(8.0)
    assert rep["totals"]["preemptions"] == 1


def test_daily_report_splits_at_midnight_and_a_window_cuts_exactly(client, world):
    d, p1, p2, jobs = world
    rep = _report(client, group_by="department", period="day", department=d,
                  **{"from": "2026-10-31T23:00:00Z", "to": "2026-11-01T01:30:00Z"})
    cells = _cells(rep)
    assert cells[("2026-10-31", d)]["allocated_gpu_s"] == pytest.approx(2 * H)  # a, 23:00 -> 24:00
    assert cells[("2026-11-01", d)]["allocated_gpu_s"] == pytest.approx(2 * 1.5 * H)  # a, 00:00 -> 01:30
    assert list(split(T("2026-10-31T22:00:00"), T("2026-11-01T03:00:00"), "day")) == [
        (T("2026-10-31T00:00:00"), 2 * H), (T("2026-11-01T00:00:00"), 3 * H)]


def test_queue_waits_count_from_submit_or_from_the_previous_attempt(client, world):
    d, p1, p2, jobs = world
    rep = _report(client, group_by="project", period="month", project=p2, **{"from": "2026-11-01", "to": "2026-12-01"})
    w = _cells(rep)[("2026-11-01", p2)]["queue_wait_s"]
    # d attempt 1: 10 min after submit; d attempt 2: 5 min after attempt 1 ended; c: 1 h
    assert w["count"] == 3 and w["p50"] == pytest.approx(600) and w["max"] == pytest.approx(3600)


def test_used_hours_energy_and_cost_come_from_rollups_and_prices(client, engine, world):
    d, p1, p2, jobs = world
    bucket = T("2026-11-15T10:00:00")
    with Session(engine) as s:
        # one GPU, one hour: 900 samples of job b at 60 % and 300 W, 2,700 idle samples
        s.add(GpuRollup(resolution_s=3600, node_id="inno-1", gpu_index=0, bucket=bucket, job_id=jobs["b"],
                        project_id=p1, samples=900, util_n=900, util_sum=60.0 * 900, power_n=900, power_sum=300.0 * 900))
        s.add(GpuRollup(resolution_s=3600, node_id="inno-1", gpu_index=0, bucket=bucket, job_id="",
                        samples=2700, util_n=2700, util_sum=0.0, power_n=2700, power_sum=60.0 * 2700))
        if s.get(TelemetryMark, "rollup_1h") is None:
            s.add(TelemetryMark(name="rollup_1h", value=T("2026-12-01T00:00:00")))
        s.commit()
    r = client.put("/api/v1/reports/prices/innovation", json={"gpu_hour": 10.0, "kwh": 2.0, "currency": "DKK"})
    assert r.status_code == 200, r.text
    rep = _report(client, group_by="pool", period="month", project=p1, **{"from": "2026-11-01", "to": "2026-12-01"})
    cell = _cells(rep)[("2026-11-01", "innovation")]
    # each sample stands for 1 s of that GPU-hour: used 900 s x 60 % = 540 s; energy 900 x 300 J
    assert cell["used_gpu_hours"] == pytest.approx(540 / H, abs=1e-6)
    assert cell["energy_kwh"] == pytest.approx(900 * 300 / 3.6e6)
    alloc_h = (2 * 3 * H + 30 * 60 + 15.5) / H
    assert cell["idle_gpu_hours"] == pytest.approx(alloc_h - 540 / H, abs=1e-5)
    assert cell["efficiency"] == pytest.approx(540 / H / alloc_h, abs=1e-4)
    assert cell["cost"] == {"gpu": round(alloc_h * 10, 2), "energy": round(900 * 300 / 3.6e6 * 2, 2),
                            "total": round(alloc_h * 10 + 900 * 300 / 3.6e6 * 2, 2), "currency": "DKK"}
    # a pool without a price has no cost, never a made-up zero
    rep2 = _report(client, group_by="pool", period="month", project=p2, **{"from": "2026-12-01", "to": "2027-01-01"})
    assert _cells(rep2)[("2026-12-01", "operation")]["cost"] is None


def test_csv_and_statement(client, world):
    d, p1, p2, jobs = world
    r = client.get("/api/v1/reports/usage", params={"group_by": "project", "department": d, "format": "csv",
                                                     "from": "2026-11-01", "to": "2026-12-01"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(r.text)))
    assert [x["project"] for x in lines] == [p1, p2, ""] and lines[-1]["period_start"] == "TOTAL"
    assert float(lines[0]["allocated_gpu_hours"]) == pytest.approx((2 * 3 * H + 30 * 60 + 15.5) / H, abs=1e-5)
    st = client.get("/api/v1/reports/statement", params={"department": d, "month": "2026-11", "format": "html"})
    assert st.status_code == 200 and st.headers["content-type"].startswith("text/html")
    assert p1 in st.text and "GPU usage statement" in st.text and "<script" not in st.text
    js = client.get("/api/v1/reports/statement", params={"department": d, "month": "2026-11"}).json()
    assert {r["group"] for r in js["rows"]} == {p1, p2}


@pytest.mark.parametrize("params, code", [
    ({"group_by": "galaxy"}, 422),
    ({"period": "year"}, 422),
    ({"from": "yesterday"}, 422),
    ({"from": "1e400"}, 422),
    ({"to": "nan"}, 422),
    ({"from": "9999-12-01"}, 422),
    ({"from": "2026-11-02", "to": "2026-11-01"}, 422),
    ({"period": "day", "from": "2020-01-01", "to": "2026-01-01"}, 422),
    ({"project": "no-such-project"}, 404),
    ({"department": "no-such-dept"}, 404),
], ids=["group", "period", "time", "inf", "nan", "year-9999", "range", "too-many-days", "project", "department"])
def test_bad_input_is_a_4xx_with_a_code(client, params, code):
    r = client.get("/api/v1/reports/usage", params=params)
    assert r.status_code == code, r.text
    assert r.json()["error"]["code"]


def _token(client, **grant) -> dict:
    r = client.post("/api/v1/admin/tokens", json={"name": "r-" + uuid.uuid4().hex[:6], "ttl_days": 1, **grant})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def test_each_role_sees_its_own_scope(client, engine):
    mine = _world(engine)
    other = _world(engine)
    d, p1, p2, _ = mine
    window = {"from": "2026-10-01", "to": "2027-01-01", "group_by": "project"}

    def groups(headers, **extra):
        r = client.get("/api/v1/reports/usage", params={**window, **extra}, headers=headers)
        assert r.status_code == 200, r.text
        return {row["group"] for row in r.json()["rows"]}

    dept_admin = _token(client, role="department-admin", department=d)
    member = _token(client, role="member", department=d, project=p1)
    ops = _token(client, role="ops-viewer")
    assert groups(dept_admin) == {p1, p2}
    assert groups(member) == {p1}
    assert {p1, p2, other[1], other[2]} <= groups(ops)
    # a foreign project or department is not found; one's own department's usage is the admins'
    r = client.get("/api/v1/reports/usage", params={**window, "project": other[1]}, headers=member)
    assert r.status_code == 404
    r = client.get("/api/v1/reports/usage", params={**window, "department": other[0]}, headers=dept_admin)
    assert r.status_code == 404
    r = client.get("/api/v1/reports/statement", params={"department": d, "month": "2026-11"}, headers=member)
    assert r.status_code == 403
    r = client.put("/api/v1/reports/prices/innovation", json={"gpu_hour": 1.0}, headers=dept_admin)
    assert r.status_code == 403


@pytest.mark.parametrize("start, end, period, want", [
    ("2026-12-31T23:00:00", "2027-01-01T01:00:00", "month", [("2026-12-01", 3600), ("2027-01-01", 3600)]),
    ("2026-11-29T12:00:00", "2026-11-30T12:00:00", "week", [("2026-11-23", 43200), ("2026-11-30", 43200)]),
    ("2026-11-05T00:00:00", "2026-11-05T00:00:01", "day", [("2026-11-05", 1)]),
    ("2026-10-15T00:00:00", "2026-12-15T00:00:00", "month",
     [("2026-10-01", 17 * 86400), ("2026-11-01", 30 * 86400), ("2026-12-01", 14 * 86400)]),
], ids=["new-year", "monday", "one-second", "three-months"])
def test_split_cuts_at_utc_period_boundaries(start, end, period, want):
    got = [(dt.datetime.fromtimestamp(p, tz=dt.timezone.utc).date().isoformat(), s)
           for p, s in split(T(start), T(end), period)]
    assert got == want


def test_service_counts_come_from_the_hook():
    from broker.services.reports import build_report

    p = T("2026-11-01T00:00:00")
    rep = build_report(group_by="project", period="month", start=p, end=T("2026-12-01T00:00:00"), intervals=[],
                       waits=[], uses=[], jobs={}, nodes={}, prices={}, services={(p, "ouh-liver"): 2})
    assert rep["rows"][0]["group"] == "ouh-liver" and rep["rows"][0]["services"] == 2
    assert rep["totals"]["services"] == 2


def test_minute_rollups_count_after_the_hour_watermark_and_hours_before(client, engine, world):
    d, p1, p2, jobs = world
    mark = T("2026-12-01T01:00:00")
    with Session(engine) as s:
        row = s.get(TelemetryMark, "rollup_1h")
        if row is None:
            s.add(TelemetryMark(name="rollup_1h", value=mark))
        else:
            row.value = mark
        # job c on op-1: one hour row before the watermark (half busy), and after it one minute
        # row (fully busy) plus an hour row the hour rollup has not been run for yet
        for res, bucket, n, util in ((3600, "2026-12-01T00:00:00", 3600, 50.0), (60, "2026-12-01T01:00:00", 60, 100.0),
                                     (3600, "2026-12-01T01:00:00", 3600, 100.0)):
            s.add(GpuRollup(resolution_s=res, node_id="op-1", gpu_index=0, bucket=T(bucket), job_id=jobs["c"],
                            project_id=p2, samples=n, util_n=n, util_sum=util * n, power_n=n, power_sum=100.0 * n))
        s.commit()
    rep = _report(client, group_by="pool", period="month", project=p2, **{"from": "2026-12-01", "to": "2026-12-02"})
    cell = _cells(rep)[("2026-12-01", "operation")]
    assert cell["used_gpu_hours"] == pytest.approx((1800 + 60) / H, abs=1e-6)  # never the un-rolled hour twice
    assert cell["energy_kwh"] == pytest.approx(100.0 * (3600 + 60) / 3.6e6, abs=1e-6)  # rounded to 6 places


def test_a_running_job_accrues_hourly_and_its_close_replaces_the_accrual(settings, engine, client, new_project):
    """The scheduling loop, the accrual and the close on one ledger row: while the job runs the
    report shows it up to the last whole hour; when it ends, its row holds its whole duration."""
    import time as _time

    from broker.adapters.fake import FakeExecutor, node
    from broker.services.scheduling import SchedulingLoop
    from tests.broker.conftest import NODES, job_body

    now = [(_time.time() // H + 1) * H + 600.0]  # 10 min past the next whole hour
    fake = FakeExecutor([node(n["id"], pool=n["pool"], gpus=n["gpus"], cpus=n["cpus"], memory_gb=n["memory_gb"],
                              gpu_model=n["gpu_model"]) for n in NODES], clock=lambda: now[0])
    loop = SchedulingLoop(settings, engine, fake, clock=lambda: now[0])
    project = new_project()
    r = client.post("/api/v1/jobs", json=job_body(project=project, gpus=2, max_runtime_s=86400))
    jid = r.json()["id"]
    assert jid in loop.tick().admitted
    start = now[0]
    now[0] = start + 2.5 * H  # past two whole hours (start + 50 min and start + 110 min)
    loop.tick()
    accrue_ledger(engine, now[0])
    with Session(engine) as s:
        led = s.get(Ledger, (jid, 1))
        assert led.ended_at is None and led.accrued_to == start - 600 + 2 * H
        assert led.allocated_gpu_s == pytest.approx(2 * (led.accrued_to - start))
    rep = _report(client, group_by="project", period="day", project=project, **{"from": str(start - H), "to": str(now[0])})
    assert rep["totals"]["allocated_gpu_s"] == pytest.approx(2 * (2 * H - 600))
    now[0] += 100.0
    fake.finish(jid, 1, exit_code=0)
    loop.tick()
    with Session(engine) as s:
        led = s.get(Ledger, (jid, 1))
        assert led.ended_at == now[0] and led.allocated_gpu_s == pytest.approx(2 * (now[0] - start))
    rep = _report(client, group_by="project", period="day", project=project,
                  **{"from": str(start - H), "to": str(now[0] + H)})
    assert rep["totals"]["allocated_gpu_s"] == pytest.approx(2 * (now[0] - start))
