"""Prometheus counters and histograms: business totals from the database (leader only),
process figures (API latency, scheduling tick, waits by class) from every broker.

A real app (FakeExecutor, SQLite and PostgreSQL) admits, preempts-by-hand and finishes jobs
through the real scheduling loop; /metrics must count them, keep them across a restart (a new
app on the same database) and leave them out on a broker that is not the leader.
"""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session

from broker.adapters.fake import FakeExecutor, node
from broker.app import create_app
from broker.models import Job
from broker.services.scheduling import SchedulingLoop
from tests.broker.conftest import NODES, job_body


@pytest.fixture(scope="module")
def fake_executor():
    return FakeExecutor([node(n["id"], pool=n["pool"], gpus=n["gpus"], gpu_model=n["gpu_model"]) for n in NODES])


def wait_for(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.02)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


@pytest.fixture(scope="module")
def leading(app):
    """This app's leadership, started (as `broker up`'s periodic tasks do)."""
    leader = app.state.services.leader
    leader.start()
    wait_for(lambda: leader.is_leader)
    yield leader
    leader.stop()


@pytest.fixture(scope="module")
def history(client, app, settings, engine, fake_executor, leading):
    """Two innovation jobs admitted by the app's own loop; one finished after 100 s, one running."""
    svc = app.state.services
    loop: SchedulingLoop = svc.loop
    ids = [client.post("/api/v1/jobs", json=job_body(name=f"m{i}", gpus=2, project="ouh-liver")).json()["id"]
           for i in range(2)]
    loop.tick()
    loop.tick()
    fake_executor.finish(ids[0], 1, exit_code=0)
    loop.tick()
    with Session(engine) as s:
        assert s.get(Job, ids[0]).status == "SUCCEEDED"
        assert s.get(Job, ids[1]).status == "RUNNING"
    svc.overview.totals.max_age_s = 0.0
    return ids


def test_business_totals_count_submits_admissions_and_gpu_seconds(client, history):
    body = client.get("/metrics").text
    assert value(body, "broker_jobs_submitted_total", **{"class": "innovation"}) >= 2
    assert value(body, "broker_admissions_total", **{"class": "innovation"}) >= 2
    assert value(body, "broker_preemptions_total", **{"class": "innovation"}) is not None
    a1 = value(body, "broker_gpu_seconds_allocated_total", pool="innovation")
    assert a1 is not None and a1 >= 0
    time.sleep(0.05)  # the running job's GPU-seconds grow with time
    a2 = value(client.get("/metrics").text, "broker_gpu_seconds_allocated_total", pool="innovation")
    assert a2 > a1


def test_waits_and_tick_durations_are_histograms(client, history):
    body = client.get("/metrics").text
    assert value(body, "broker_job_wait_seconds_count", **{"class": "innovation"}) >= 2
    assert value(body, "broker_scheduler_cycle_seconds_count") >= 3
    assert value(body, "broker_scheduler_last_tick_timestamp_seconds") > time.time() - 600


def test_api_latency_is_labelled_by_route_template(client, history):
    jid = history[0]
    client.get(f"/api/v1/jobs/{jid}")
    client.get("/api/v1/no-such-thing")
    body = client.get("/metrics").text
    assert value(body, "broker_http_requests_total", method="GET", route="/api/v1/jobs/{job_id}", code="200") >= 1
    assert value(body, "broker_http_requests_total", method="POST", route="/api/v1/jobs", code="201") >= 2
    assert value(body, "broker_http_requests_total", method="GET", route="unmatched", code="404") >= 1
    assert value(body, "broker_http_request_duration_seconds_count", method="GET", route="/api/v1/jobs/{job_id}") >= 1
    assert jid not in body  # no raw paths: bounded label values


def test_totals_survive_a_restart_and_only_the_leader_exports_them(client, app, history, settings, engine, leading):
    before = samples(client.get("/metrics").text)
    leading.stop()  # the file lock is released: a second app on the same database can lead
    try:
        other = create_app(settings, executor=FakeExecutor(), start_background=False, engine=engine)
        from fastapi.testclient import TestClient
        with TestClient(other, headers=dict(client.headers)) as c2:
            follower = c2.get("/metrics").text
            assert 'broker_jobs_submitted_total{' not in follower  # not the leader: no totals
            assert "# TYPE broker_jobs_submitted_total counter" in follower  # ... but the name is there
            assert 'broker_leader 0.0' in follower
            other.state.services.leader.start()
            wait_for(lambda: other.state.services.leader.is_leader)
            try:
                after = samples(c2.get("/metrics").text)
            finally:
                other.state.services.leader.stop()
    finally:
        leading.start()
        wait_for(lambda: leading.is_leader)
    for key, v in before.items():
        if key[0] in ("broker_jobs_submitted_total", "broker_admissions_total", "broker_preemptions_total"):
            assert after[key] == v, key  # derived from the database: a restart loses nothing
