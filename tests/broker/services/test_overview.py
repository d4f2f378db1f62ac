"""Utilization overview, Prometheus /metrics: allocated versus really used GPUs.

A job is admitted by the real scheduling loop (FakeExecutor), then telemetry rows say whether
its GPUs are busy; the overview must tell allocated from used and flag the idle allocation.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text
from sqlmodel import Session

from broker.adapters.fake import FakeExecutor, node
from broker.services.scheduling import SchedulingLoop
from tests.broker.conftest import NODES, job_body


@pytest.fixture(scope="module")
def fake_executor():
    return FakeExecutor([node(n["id"], pool=n["pool"], gpus=n["gpus"], gpu_model=n["gpu_model"]) for n in NODES],
                        clock=lambda: time.time() - 1200)


@pytest.fixture(scope="module")
def running_jobs(client, settings, engine, fake_executor):
    """Two running 2-GPU jobs started 20 minutes ago: one busy, one idle."""
    loop = SchedulingLoop(settings, engine, fake_executor, clock=lambda: time.time() - 1200)
    ids = []
    for name in ("busy", "idle"):
        r = client.post("/api/v1/jobs", json=job_body(name=name, gpus=2, project="ouh-radiology"))
        assert r.status_code == 201
        ids.append(r.json()["id"])
    loop.tick()
    loop.tick()
    now = time.time()
    with Session(engine) as s:
        for jid, util in zip(ids, (85.0, 0.0)):
            job = client.get(f"/api/v1/jobs/{jid}").json()
            assert job["status"] == "RUNNING"
            pl = job["placements"][0]
            for gi in pl["gpu_indices"]:
                for k in range(5):
                    s.execute(text(
                        "INSERT INTO gpu_samples (node_id, gpu_index, uuid, ts, util_gpu, power_w, job_id, attempt, project_id) "
                        "VALUES (:n, :g, '', :ts, :u, 250, :j, 1, 'ouh-radiology')"),
                        {"n": pl["node"], "g": gi, "ts": now - 60 * k, "u": util, "j": jid})
        s.commit()
    return dict(zip(("busy", "idle"), ids))


def test_overview_tells_allocated_from_used(client, running_jobs):
    d = client.get("/api/v1/overview").json()
    inno = next(p for p in d["pools"] if p["name"] == "innovation")
    assert (inno["gpus"], inno["gpus_allocated"], inno["gpus_used"]) == (8, 4, 2)
    proj = next(p for p in d["projects"] if p["project"] == "ouh-radiology")
    assert (proj["running"], proj["gpus_allocated"], proj["gpus_used"]) == (2, 4, 2)
    assert [i["job_id"] for i in d["idle_allocations"]] == [running_jobs["idle"]]
    assert d["totals"]["idle_allocated_gpus"] == 2
    assert d["queue"]["running"] == 2


def test_metrics_exposes_pool_and_project_gauges(client, running_jobs):
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    body = r.text
    assert 'broker_pool_gpus_allocated{pool="innovation"} 4.0' in body
    assert 'broker_pool_gpus_used{pool="innovation"} 2.0' in body
    assert 'broker_project_gpus_allocated{project="ouh-radiology"} 4.0' in body
    assert "broker_idle_allocated_gpus 2.0" in body
    assert 'broker_jobs{status="RUNNING"} 2.0' in body


def test_observability_requires_a_token(anon):
    for path in ("/api/v1/overview", "/metrics"):
        r = anon.get(path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"


def test_dashboard_page_is_self_contained(anon):
    r = anon.get("/dashboard")
    assert r.status_code == 200 and "<title>" in r.text
    # No CDN: every script and stylesheet is inline or served by the broker itself.
    assert "http://" not in r.text and "https://" not in r.text


def test_job_shows_measured_usage_and_ledger_gets_used_gpu_seconds(client, running_jobs, settings, engine,
                                                                   fake_executor):
    from broker.models import Ledger
    from broker.services.accounting import fill_ledger_usage

    busy = running_jobs["busy"]
    u = client.get(f"/api/v1/jobs/{busy}").json()["usage"]
    assert (u["gpus"], u["samples"], u["gpu_util_avg"], u["gpu_util_peak"]) == (2, 10, 85.0, 85.0)
    loop = SchedulingLoop(settings, engine, fake_executor, clock=time.time)
    fake_executor.finish(busy, 1, exit_code=0)
    loop.tick()
    assert client.get(f"/api/v1/jobs/{busy}").json()["status"] == "SUCCEEDED"
    assert fill_ledger_usage(engine, time.time() + 3600) >= 1
    with Session(engine) as s:
        led = s.get(Ledger, (busy, 1))
        # 2 GPUs at 85 % over 5 readings a minute apart: 0.85 x 300 s x 2
        assert led.used_gpu_s == pytest.approx(0.85 * 300 * 2, rel=0.01)
        assert led.allocated_gpu_s > led.used_gpu_s


def test_metrics_show_the_audit_outbox_lag(client, engine):
    """Job submits wait (briefly) to be sealed into the audit chain: /metrics says how many."""
    from broker.services.admin.audit import seal_pending
    from tests.broker.conftest import job_body

    seal_pending(engine)
    assert "broker_audit_unsealed_submits 0.0" in client.get("/metrics").text
    for _ in range(3):
        assert client.post("/api/v1/jobs", json=job_body(project="ouh-liver")).status_code == 201
    assert "broker_audit_unsealed_submits 3.0" in client.get("/metrics").text
    seal_pending(engine)
    assert "broker_audit_unsealed_submits 0.0" in client.get("/metrics").text


# ------------------------------------------------------------------ the shared snapshot


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


SNAPSHOT_CASES = [  # name, max_age_s, seconds between two reads, computations
    ("second read within the age shares the snapshot", 2.0, 1.0, 1),
    ("second read after the age recomputes", 2.0, 2.5, 2),
    ("age zero recomputes every time", 0.0, 0.0, 2),
]


@pytest.mark.parametrize("max_age,gap,computed", [c[1:] for c in SNAPSHOT_CASES], ids=[c[0] for c in SNAPSHOT_CASES])
def test_snapshot_age(engine, monkeypatch, max_age, gap, computed):
    from broker.auth.authz import Authz
    from broker.services import overview as ov

    calls = []
    monkeypatch.setattr(ov, "overview", lambda eng, now, **kw: calls.append(now) or {"projects": [], "n": len(calls)})
    clock = _Clock()
    svc = ov.OverviewService(engine, Authz(engine), max_age_s=max_age, monotonic=clock)
    svc.snapshot()
    clock.t += gap
    svc.snapshot()
    assert len(calls) == computed


def test_concurrent_stale_reads_share_one_computation(engine, monkeypatch):
    import threading
    import time as _time

    from broker.auth.authz import Authz
    from broker.services import overview as ov

    calls = []

    def slow(eng, now, **kw):
        calls.append(now)
        _time.sleep(0.2)
        return {"projects": []}

    monkeypatch.setattr(ov, "overview", slow)
    svc = ov.OverviewService(engine, Authz(engine), max_age_s=5.0)
    threads = [threading.Thread(target=svc.snapshot) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
