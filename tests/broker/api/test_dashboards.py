"""The dashboards' JSON API on SQLite and PostgreSQL: figures and who sees what.

A world of two departments (one project each), two running jobs on the demo innovation nodes,
two pending jobs, one finished job with a preempted first attempt, GPU rollups for the last
minute and the pool rollups folded from them. Each page's API is read as a platform-admin, a
member of one project, a department-admin and an ops-viewer: aggregates for everyone, project
rows and job names only within the caller's scope, a foreign job's page answers exactly like a
missing one.
"""

from __future__ import annotations

import time
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import Session

from broker.services.dashboards_projects import borrowing
from broker.services.dashboards_rollup import fold, run_pool_rollups
from tests.dashboard_seed import H, World, seed_world


def _client(app, token: str) -> TestClient:
    c = TestClient(app, headers={"Authorization": f"Bearer {token}"})
    c.__enter__()
    return c


@pytest.fixture(scope="module")
def world(engine, app) -> World:
    tag = uuid.uuid4().hex[:6]
    w = seed_world(engine, time.time(), own=(f"da-{tag}", f"da-{tag}-pa"), foreign=(f"db-{tag}", f"db-{tag}-pb"),
                   own_gpus=("inno-1", [0, 1]), foreign_gpus=("inno-2", [0]), idle_gpu=("inno-2", 1))
    run_pool_rollups(engine, w.now)
    app.state.services.authz.invalidate()
    return w


@pytest.fixture(scope="module")
def people(app, client, world):
    """Clients for: alice (member of pa), dora (department-admin of d1), ops (global ops-viewer)."""
    tag = uuid.uuid4().hex[:6]
    out = {"admin": client}
    for name, path, role in (("alice", f"/api/v1/projects/{world.pa}/members", "member"),
                             ("dora", f"/api/v1/departments/{world.d1}/members", "department-admin")):
        uid = f"{name}-{tag}"
        assert client.post("/api/v1/admin/users", json={"id": uid}).status_code == 201
        assert client.post(path, json={"user": uid, "role": role}).status_code == 201
        out[name] = _client(app, client.post("/api/v1/admin/tokens", json={"name": uid, "user": uid}).json()["token"])
    out["ops"] = _client(app, client.post("/api/v1/admin/tokens", json={"name": "ops", "role": "ops-viewer"}).json()["token"])
    yield out
    for k, c in out.items():
        if k != "admin":
            c.__exit__(None, None, None)


def _get(c, path, status=200, **params):
    r = c.get(path, params=params)
    assert r.status_code == status, r.text
    return r.json()


# ------------------------------------------------------------------ overview


def test_overview_has_capacity_allocated_and_used_per_pool(people, world):
    body = _get(people["admin"], "/api/v1/dashboards/overview", range="24h")
    assert body["resolution_s"] == 60
    inno = {p["name"]: p for p in body["pools"]}["innovation"]
    i = body["t"].index(world.bucket)
    assert inno["capacity"][i] == 8  # inno-1 and inno-2, 4 GPUs each
    assert inno["allocated"][i] == pytest.approx(3.0)  # ja 2 + jb 1 over the whole minute
    assert inno["used"][i] == pytest.approx(2 * 0.8 + 0.5)
    # allocated GPU-hours over the range: the ledger's intervals up to the folded end, exactly
    want = (2 * (world.fold_end - (world.now - 2 * H)) + 1 * (world.fold_end - (world.now - H))) / H
    assert inno["totals"]["allocated_gpu_hours"] == pytest.approx(want, abs=1e-3)
    assert inno["totals"]["energy_kwh"] == pytest.approx(4 * 200 * 60 / 3.6e6, abs=1e-3)  # 3 attributed GPUs + 1 idle
    assert inno["totals"]["idle_gpu_hours"] == pytest.approx(want - 2.1 / 60, abs=1e-3)


@pytest.mark.parametrize("rng,res", [("7d", 3600), ("30d", 3600)])
def test_overview_longer_ranges_read_hours(people, rng, res):
    body = _get(people["alice"], "/api/v1/dashboards/overview", range=rng)
    assert body["resolution_s"] == res and {"innovation", "operation"} <= {p["name"] for p in body["pools"]}


def test_overview_refuses_an_unknown_range_with_a_code(people):
    r = people["admin"].get("/api/v1/dashboards/overview", params={"range": "1y"})
    assert r.status_code == 422 and r.json()["error"]["code"]


# ------------------------------------------------------------------ nodes


def _gpu(body, node, i):
    (n,) = [n for n in body["nodes"] if n["id"] == node]
    return {k: n[k][i] for k in ("util", "mem_mib", "temp_c", "power_w", "job")}


def test_nodes_show_readings_and_the_job_on_each_gpu(people, world):
    body = _get(people["admin"], "/api/v1/dashboards/nodes")
    assert body["as_of"] == world.bucket
    g = _gpu(body, "inno-1", 0)
    assert g == {"util": 80, "mem_mib": 2048, "temp_c": 61, "power_w": 200, "job": g["job"]}
    assert body["jobs"][g["job"]]["id"] == world.ja and body["jobs"][g["job"]]["name"] == f"name-{world.ja}"
    assert body["jobs"][_gpu(body, "inno-2", 0)["job"]]["id"] == world.jb
    assert _gpu(body, "inno-2", 1)["job"] is None


def test_a_member_sees_foreign_gpus_as_allocated_without_the_job(people, world):
    body = _get(people["alice"], "/api/v1/dashboards/nodes")
    assert body["jobs"][_gpu(body, "inno-1", 1)["job"]]["id"] == world.ja
    assert _gpu(body, "inno-2", 0)["job"] == -1
    raw = people["alice"].get("/api/v1/dashboards/nodes").text
    assert world.jb not in raw and world.pb not in raw


def test_nodes_filter_by_pool(people):
    body = _get(people["admin"], "/api/v1/dashboards/nodes", pool="operation")
    assert {n["pool"] for n in body["nodes"]} == {"operation"}


# ------------------------------------------------------------------ queue


def test_queue_by_department_and_reason_with_eta(people, world):
    body = _get(people["admin"], "/api/v1/dashboards/queue")
    depts = {d["department"]: d for d in body["departments"]}
    (r,) = depts[world.d1]["reasons"]
    assert (r["reason"], r["jobs"], r["gpus"]) == ("QUOTA_LIMIT", 1, 4)
    assert 800 < r["eta_min_s"] <= 900 and 590 < r["oldest_wait_s"] < 700
    assert depts[world.d2]["reasons"][0]["reason"] == "NO_CAPACITY"
    assert {world.jc, world.jd} <= {j["id"] for j in body["jobs"]}


def test_a_member_sees_only_its_projects_pending_jobs(people, world):
    r = people["alice"].get("/api/v1/dashboards/queue")
    body = r.json()
    assert [d["department"] for d in body["departments"]] == [world.d1]
    assert [j["id"] for j in body["jobs"]] == [world.jc]
    assert world.jd not in r.text and world.pb not in r.text
    assert body["region"]["pending"] >= 2  # the region's count names no tenant


def test_queue_of_a_foreign_department_answers_404_like_a_missing_one(people, world):
    a = people["dora"].get("/api/v1/dashboards/queue", params={"department": world.d2})
    b = people["dora"].get("/api/v1/dashboards/queue", params={"department": "no-such-dept"})
    assert a.status_code == b.status_code == 404 and a.json()["error"]["code"] == b.json()["error"]["code"]
    assert [d["department"] for d in _get(people["dora"], "/api/v1/dashboards/queue",
                                          department=world.d1)["departments"]] == [world.d1]


# ------------------------------------------------------------------ projects


def test_projects_usage_quota_borrowing_budget_and_efficiency(people, world):
    body = _get(people["admin"], "/api/v1/dashboards/projects", department=world.d1)
    (pa,) = body["projects"]
    assert pa["id"] == world.pa and pa["nominal_gpus"] == 1 and pa["limit_gpus"] == 4
    assert pa["in_use_gpus"] == 2 and pa["borrowed_gpus"] == pytest.approx(1.0)
    assert sum(x["gpus"] for x in pa["borrowed_from"]) == pytest.approx(1.0, abs=1e-3)
    assert any(x["project"] == world.pb for x in pa["borrowed_from"])  # the admin sees who lent
    spent = 2 * 2  # ja: 2 GPUs for 2 hours this month (je has no ledger row)
    assert pa["budget"]["spent"] == pytest.approx(spent, abs=0.01)
    assert pa["budget"]["burn"][-1] == pa["budget"]["spent"] and len(pa["budget"]["burn"]) == body["day"]
    assert pa["budget"]["reserved"] == pytest.approx(2 * 8, abs=0.01)  # ja may run 8 more hours
    assert pa["budget"]["gpu_hours"] == 100 and pa["budget"]["left"] == pytest.approx(100 - spent - 16, abs=0.01)
    assert pa["month"]["efficiency"] is not None and 0 < pa["month"]["efficiency"] <= 1
    (pb,) = _get(people["admin"], "/api/v1/dashboards/projects", department=world.d2)["projects"]
    assert pb["lent_gpus"] > 0 and any(x["project"] == world.pa for x in pb["lent_to"])


def test_a_member_sees_its_project_and_lenders_only_as_other(people, world):
    r = people["alice"].get("/api/v1/dashboards/projects")
    assert r.status_code == 200
    assert [p["id"] for p in r.json()["projects"]] == [world.pa]
    assert world.pb not in r.text
    (pa,) = r.json()["projects"]
    assert any(x.get("other") for x in pa["borrowed_from"])


def test_department_admin_sees_its_department(people, world):
    ids = {p["id"] for p in _get(people["dora"], "/api/v1/dashboards/projects")["projects"]}
    assert world.pa in ids and world.pb not in ids


def test_ops_viewer_sees_every_project(people, world):
    ids = {p["id"] for p in _get(people["ops"], "/api/v1/dashboards/projects")["projects"]}
    assert {world.pa, world.pb} <= ids


# ------------------------------------------------------------------ job page


def test_job_page_has_timeline_series_and_log_access(people, world):
    body = _get(people["alice"], f"/api/v1/dashboards/jobs/{world.je}")
    states = [s["status"] for s in body["timeline"]["states"]]
    assert states == ["PENDING", "RUNNING", "PREEMPTED", "PENDING", "RUNNING", "SUCCEEDED"]
    assert body["timeline"]["states"][-1]["end"] is None
    assert [a["number"] for a in body["timeline"]["attempts"]] == [1, 2]
    assert body["logs"]["allowed"] is True
    assert "command" not in body["job"] and "env" not in body["job"]
    running = _get(people["alice"], f"/api/v1/dashboards/jobs/{world.ja}")
    assert running["series"]["resolution"] == "1m"
    assert [(g["node"], g["gpu"]) for g in running["series"]["gpus"]] == [("inno-1", 0), ("inno-1", 1)]
    assert running["series"]["gpus"][0]["util"] == [80.0]
    # no transition events written: the row's status still ends the timeline
    assert [(x["status"], x["end"]) for x in running["timeline"]["states"]][-1] == ("RUNNING", running["generated_at"])


@pytest.mark.parametrize("who", ["alice", "dora", "ops"])
def test_a_job_the_caller_may_not_read_answers_like_a_missing_one(people, world, who):
    job = world.jb if who != "ops" else world.ja  # ops-viewers never see a job
    a = people[who].get(f"/api/v1/dashboards/jobs/{job}")
    b = people[who].get("/api/v1/dashboards/jobs/0000000000000000")
    assert a.status_code == b.status_code == 404
    assert a.json()["error"]["code"] == b.json()["error"]["code"] == "JOB_NOT_FOUND"


def test_dashboards_need_a_token(anon):
    for path in ("overview", "nodes", "queue", "projects", "jobs/x"):
        assert anon.get(f"/api/v1/dashboards/{path}").status_code == 401


# ------------------------------------------------------------------ the fold


def test_fold_allocates_exactly_the_ledger_and_refolds_idempotently(engine, world):
    def allocated():
        with Session(engine) as s:
            return s.execute(text("SELECT SUM(allocated_gpu_s) FROM pool_rollups WHERE resolution_s = 60 "
                                  "AND project_id = :p"), {"p": world.pa}).scalar()

    first = allocated()
    assert first == pytest.approx(2 * (world.fold_end - (world.now - 2 * H)), abs=1e-6)
    fold(engine, 60, world.fold_end - H, world.fold_end, now=world.now)
    assert allocated() == pytest.approx(first, abs=1e-6)
    with Session(engine) as s:  # the pool's own row holds the pool's totals: its projects' parts and more
        pool, parts = s.execute(text(
            "SELECT SUM(CASE WHEN project_id = '' THEN allocated_gpu_s END), "
            "SUM(CASE WHEN project_id <> '' THEN allocated_gpu_s END) FROM pool_rollups "
            "WHERE resolution_s = 60 AND pool = 'innovation'")).one()
    assert pool == pytest.approx(parts, abs=1e-6) and parts > first


BORROW_CASES = [
    # name, used, nominal, (borrowed, lent) per project
    ("one borrower one lender", {"a": {"p": 3}}, {"a": {"p": 1}, "b": {"p": 4}}, {"a": (2, 0), "b": (0, 2)}),
    ("demand beyond idle nominal", {"a": {"p": 5}}, {"a": {"p": 1}, "b": {"p": 2}}, {"a": (4, 0), "b": (0, 2)}),
    ("two lenders share by idle", {"a": {"p": 3}}, {"b": {"p": 2}, "c": {"p": 6}}, {"a": (3, 0), "b": (0, 0.75),
                                                                                 "c": (0, 2.25)}),
]


@pytest.mark.parametrize("used,nominal,want", [c[1:] for c in BORROW_CASES], ids=[c[0] for c in BORROW_CASES])
def test_borrowing_both_ways(used, nominal, want):
    got = borrowing(used, nominal)
    for p, (b, l) in want.items():
        assert got[p]["borrowed"] == pytest.approx(b) and got[p]["lent"] == pytest.approx(l)
        assert sum(got[p]["from"].values()) == pytest.approx(b)


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/nodes", "/dashboard/queue", "/dashboard/projects",
                                  "/dashboard/jobs/anything"])
def test_pages_are_served_without_a_token(anon, path):
    r = anon.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/static/dash.js" in r.text and "https://" not in r.text  # no CDN: every asset is the broker's


def test_an_unknown_page_is_a_404_with_a_code(anon):
    r = anon.get("/dashboard/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize("name", ["dash.js", "dash.css", "uPlot.iife.min.js", "uPlot.min.css"])
def test_vendored_assets_are_served(anon, name):
    assert anon.get(f"/static/{name}").status_code == 200


def test_a_periodic_run_refolds_the_minutes_after_an_attempt_ended(engine, world):
    """An attempt that ended (its ledger row closed) stops counting in the buckets the next run
    re-folds (the last 10 minutes); its own pool ("lab", no nodes) keeps this test apart from the
    others."""
    from broker.models import Job, Ledger

    jid, now = uuid.uuid4().hex[:16], world.now
    start, end = world.fold_end - 8 * 60, now - 5 * 60  # inside the 10 minutes every run folds again
    with Session(engine) as s:
        s.add(Job(id=jid, project_id=world.pb, gpus=2, status="RUNNING", submit_time=start, created_at=start))
        s.flush()
        s.add(Ledger(job_id=jid, attempt=1, project_id=world.pb, department_id=world.d2, pool="lab", gpus=2,
                     started_at=start))
        s.commit()
    run_pool_rollups(engine, now)  # open: counted up to the folded end

    def lab():
        with Session(engine) as s:
            return s.execute(text("SELECT SUM(allocated_gpu_s) FROM pool_rollups WHERE resolution_s = 60 "
                                  "AND pool = 'lab' AND project_id = :p"), {"p": world.pb}).scalar()

    assert lab() == pytest.approx(2 * (world.fold_end - start), abs=1e-6)
    with Session(engine) as s:
        row = s.get(Ledger, (jid, 1))
        row.ended_at, row.allocated_gpu_s = end, 2 * (end - start)
        s.commit()
    run_pool_rollups(engine, now + 60)
    assert lab() == pytest.approx(2 * (end - start), abs=1e-6)
