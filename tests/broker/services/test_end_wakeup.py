"""An attempt's end wakes the scheduling loop (`broker.ports.EndNotifier`), through the app as
deployed: `create_app` with its periodic tasks, a FakeExecutor on the real clock whose workers
end on their own, SQLite and PostgreSQL.

The cycle interval is an hour here, so only a wake-up can run a tick: a job that waits for
GPUs another job holds is admitted well within seconds of that job's end only if the end woke
the loop (without the hook it would wait for the interval).
"""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from broker.adapters.fake import FakeExecutor, Outcome, node
from broker.app import create_app
from broker.settings import Settings
from tests.broker.conftest import NODES, job_body

INTERVAL_S = 3600.0


@pytest.fixture(scope="module")
def settings(db_url, tmp_path_factory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("data"), database_url=db_url, token_cache_ttl_s=30.0,
                    cycle_interval_s=INTERVAL_S, reconcile_interval_s=INTERVAL_S)


@pytest.fixture(scope="module")
def fake_executor():
    """Real clock; each worker runs for its job's RUN_S seconds (env), then exits 0. Only the
    innovation nodes (8 GPUs): idle operation GPUs would be lent to the waiting jobs."""
    ex = FakeExecutor([node(n["id"], pool=n["pool"], gpus=n["gpus"], cpus=n["cpus"], memory_gb=n["memory_gb"],
                            gpu_model=n["gpu_model"]) for n in NODES if n["pool"] == "innovation"],
                      outcome_for=lambda spec: Outcome(run_s=float(spec.env.get("RUN_S", "3600"))))
    yield ex
    ex.shutdown()


@pytest.fixture(scope="module")
def app(settings, engine, fake_executor):
    return create_app(settings, executor=fake_executor, start_background=True, engine=engine)


@pytest.fixture(scope="module")
def client(app, admin_token):
    with TestClient(app, headers={"Authorization": f"Bearer {admin_token}"}) as c:  # starts the tasks
        yield c


@pytest.fixture
def ticks(app, monkeypatch):
    """Counts the scheduling loop's ticks from now on."""
    loop, count = app.state.services.loop, []
    tick = loop.tick
    monkeypatch.setattr(loop, "tick", lambda: (count.append(time.monotonic()), tick())[1])
    return count


def submit(client, run_s: float, **over) -> str:
    r = client.post("/api/v1/jobs", json=job_body(env={"RUN_S": str(run_s)}, max_retries=0, **over))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def wait_status(client, jid: str, ok, timeout_s: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        j = client.get(f"/api/v1/jobs/{jid}").json()
        if ok(j["status"]) or time.monotonic() > deadline:
            return j
        time.sleep(0.02)


def test_a_jobs_end_admits_the_next_pending_job_at_once(client):
    holder = submit(client, 0.5, gpus=4, workers=2)  # every innovation GPU (2 nodes x 4)
    assert wait_status(client, holder, lambda s: s in ("STARTING", "RUNNING"))["status"] in ("STARTING", "RUNNING")
    waiter = submit(client, 0.3, gpus=1)
    j = wait_status(client, waiter, lambda s: False, timeout_s=0.3)  # a tick (the submit's wake-up) looked
    assert j["status"] == "PENDING" and j["pending_reason"] is not None, j

    done = wait_status(client, holder, lambda s: s == "SUCCEEDED")
    assert done["status"] == "SUCCEEDED", "the holder's end was seen without an interval tick"
    j = wait_status(client, waiter, lambda s: s != "PENDING")
    assert j["status"] != "PENDING"
    # well before the next interval tick (an hour): within seconds of the holder's end
    assert j["admitted_at"] - done["finished_at"] < 5.0
    assert wait_status(client, waiter, lambda s: s == "SUCCEEDED")["status"] == "SUCCEEDED"  # its own end too


def test_a_burst_of_ends_coalesces_into_a_few_ticks(client, ticks):
    holder = submit(client, 3.0, gpus=4, workers=2)
    assert wait_status(client, holder, lambda s: s in ("STARTING", "RUNNING"))["status"] in ("STARTING", "RUNNING")
    jobs = [submit(client, 0.6, gpus=1) for _ in range(8)]  # wait behind it, then start in one tick
    started = [wait_status(client, jid, lambda s: s in ("STARTING", "RUNNING")) for jid in jobs]
    assert {j["status"] for j in started} <= {"STARTING", "RUNNING"}
    assert len({j["admitted_at"] for j in started}) == 1, "admitted by one tick, so they end together"
    before = len(ticks)
    for jid in jobs:
        assert wait_status(client, jid, lambda s: s == "SUCCEEDED")["status"] == "SUCCEEDED"
    time.sleep(0.5)
    # 8 ends within a few milliseconds: one wake-up (the others find its flag set), perhaps one
    # more tick for ends that came in while it ran; never a tick per end
    assert 1 <= len(ticks) - before <= 3, len(ticks) - before
