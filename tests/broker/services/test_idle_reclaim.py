"""Idle-GPU detection and reclaim, driven by fake-GPU agents that script idle and busy phases.

The agents push real telemetry reports (POST /api/v1/telemetry with node tokens) for the GPUs
the real scheduling loop placed the jobs on; `check_idle` runs at chosen times over those
phases. Innovation work that stays idle while others wait is preempted through the usual path
(notice, requeue without using a retry) and its GPUs go to the waiting job; operation work is
only flagged.
"""

from __future__ import annotations

import time

import pytest
from sqlmodel import Session, select

from agents.agent import encode
from broker.adapters.fake import FakeExecutor, node
from broker.models import JobEvent, NotifyOutbox, NotifySubscription
from broker.services.idle import check_idle
from broker.services.scheduling import SchedulingLoop
from tests.broker.conftest import NODES, job_body
from tests.broker.services.telemetry.builders import agent_token, gpu, report

NOW = time.time()
T0 = NOW - 6000  # the scripted phases start here
STARTED = NOW - 8000  # the jobs' workers started before any phase


@pytest.fixture(scope="module")
def fake_executor():
    return FakeExecutor([node(n["id"], pool=n["pool"], gpus=n["gpus"], gpu_model=n["gpu_model"]) for n in NODES],
                        clock=lambda: STARTED)


@pytest.fixture(scope="module")
def loop(settings, engine, fake_executor):
    return SchedulingLoop(settings, engine, fake_executor, clock=time.time)


class FakeAgent:
    """One node's agent: pushes readings of its GPUs, attributed to a job, phase by phase."""

    def __init__(self, client, engine, node_id: str) -> None:
        self.client, self.node = client, node_id
        self.token = agent_token(engine, node_id)
        self.seq = 0

    def phase(self, job: dict, start: float, end: float, *, util: float, mem: float, every: float = 30.0) -> None:
        pl = next(p for p in job["placements"] if p["node"] == self.node)
        ts, readings = start, []
        while ts <= end:
            readings += [gpu(i, ts, util=util, mem=mem, job=job["id"], project=job["project"], attempt=job["attempt"])
                         for i in pl["gpu_indices"]]
            ts += every
        self.seq += 1
        body = encode(report(self.node, self.seq, readings, started_at=T0 - 60, sent_at=end))
        r = self.client.post("/api/v1/telemetry", content=body,
                             headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        assert r.status_code == 200, r.text


def run(client, loop, body) -> dict:
    r = client.post("/api/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    loop.tick()
    loop.tick()
    return client.get(f"/api/v1/jobs/{r.json()['id']}").json()


def events(engine, job_id: str) -> list[str]:
    with Session(engine) as s:
        return [e.kind if e.kind != "transition" else f"->{e.to_status}"
                for e in s.execute(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).scalars()]


def set_policy(client, pool: str, **over):
    body = {"util_below_pct": 5, "memory_below_mib": 1024, "window_s": 600, "reclaim": True, **over}
    r = client.put(f"/api/v1/admin/idle-policies/{pool}", json=body)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def scenario(client, engine, loop):
    """Job `idle` (innovation, 4 GPUs, one whole node) and `busy` (the other node); an admin's
    region-wide subscription to idle allocations."""
    set_policy(client, "innovation")
    with Session(engine) as s:
        s.add(NotifySubscription(id="sub-idle", owner="admin", events=["allocation.idle"], channel="webhook",
                                 target="http://127.0.0.1:9/hook", scope_all=True))
        s.commit()
    idle = run(client, loop, job_body(name="idle", gpus=4, project="ouh-liver", checkpointable=True))
    busy = run(client, loop, job_body(name="busy", gpus=4, project="ouh-radiology"))
    assert idle["status"] == busy["status"] == "RUNNING"
    agents = {n["id"]: FakeAgent(client, engine, n["id"]) for n in NODES if n["pool"] == "innovation"}
    agents[busy["placements"][0]["node"]].phase(busy, T0, NOW, util=90, mem=30000)
    return {"idle": idle, "busy": busy, "agent": agents[idle["placements"][0]["node"]]}


def test_idle_allocation_is_flagged_cleared_and_reclaimed(client, app, engine, scenario, loop, fake_executor):
    """One job through its phases: busy, idle (flagged: event, list, notification), busy again
    (cleared), idle while another job waits (reclaimed: notice, requeue, GPUs to the waiting job)."""
    idle, agent = scenario["idle"], scenario["agent"]
    agent.phase(idle, T0, T0 + 900, util=85, mem=20000)  # busy phase
    assert check_idle(engine, T0 + 900).flagged == []
    agent.phase(idle, T0 + 930, T0 + 1800, util=1, mem=500)  # idle phase (memory low too)
    assert check_idle(engine, T0 + 1200).flagged == []  # the window still holds busy readings
    rep = check_idle(engine, T0 + 1800)
    assert rep.flagged == [idle["id"]] and rep.reclaimed == []  # nobody waits: flagged only
    assert "idle_flagged" in events(engine, idle["id"])
    items = client.get("/api/v1/idle-allocations").json()["items"]
    assert [(i["job_id"], i["gpus"], i["util_max_pct"]) for i in items] == [(idle["id"], 4, 1.0)]
    with Session(engine) as s:
        out = s.execute(select(NotifyOutbox).where(NotifyOutbox.event == "allocation.idle")).scalars().all()
    assert [o.payload["job_id"] for o in out] == [idle["id"]]
    assert check_idle(engine, T0 + 1800).flagged == []  # flagged once, not every minute

    # busy again: the flag is cleared
    agent.phase(idle, T0 + 1830, T0 + 2400, util=70, mem=20000)
    assert check_idle(engine, T0 + 2400).cleared == [idle["id"]]
    assert client.get("/api/v1/idle-allocations").json()["items"] == []
    assert events(engine, idle["id"])[-1] == "idle_cleared"

    # idle again while another job waits for the pool: reclaimed through the usual preemption
    waiting = client.post("/api/v1/jobs", json=job_body(name="waiting", gpus=4, project="slb-cardio", pool="innovation")).json()
    loop.tick()
    assert client.get(f"/api/v1/jobs/{waiting['id']}").json()["status"] == "PENDING"
    agent.phase(idle, T0 + 2430, T0 + 3100, util=0, mem=300)
    rep = check_idle(engine, T0 + 3100)
    assert rep.reclaimed == [idle["id"]]
    job = client.get(f"/api/v1/jobs/{idle['id']}").json()
    assert job["status"] == "PREEMPTED" and "idle" in job["message"]
    loop.tick()  # observe: the usual notice (SIGTERM, the pool's grace) ...
    stop = [s for s in fake_executor.stops if s[0] == idle["id"]]
    assert stop and stop[0][4] == "preempted" and stop[0][2] == loop.grace_s(job_row(engine, idle["id"]))
    loop.tick()  # ... the workers are gone: requeued, and the waiting job gets the GPUs
    loop.tick()
    after = client.get(f"/api/v1/jobs/{idle['id']}").json()
    assert after["attempt"] == 2 and after["status"] not in ("FAILED", "CANCELLED")  # requeued, no retry used
    got = client.get(f"/api/v1/jobs/{waiting['id']}").json()
    assert got["status"] in ("ADMITTED", "STARTING", "RUNNING")
    assert got["placements"][-1]["node"] == idle["placements"][0]["node"]  # the reclaimed GPUs
    # checkpointable: the next attempt (placed elsewhere) gets the same checkpoint directory
    first, second = fake_executor.specs[(idle["id"], 1)], fake_executor.specs.get((idle["id"], 2))
    assert first.checkpoint_dir and second is not None and second.checkpoint_dir == first.checkpoint_dir
    items = client.get("/api/v1/idle-allocations", params={"include_cleared": True}).json()["items"]
    assert any(i["job_id"] == idle["id"] and i["reclaimed_at"] for i in items)

    # ... and counted in /metrics (by the leader)
    leader = app.state.services.leader
    leader.start()
    try:
        deadline = time.monotonic() + 10
        while not leader.is_leader:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        body = client.get("/metrics").text
    finally:
        leader.stop()
    assert 'broker_idle_flags_total{pool="innovation"} 1.0' in body  # one row per attempt (re-flag reopens)
    assert 'broker_idle_reclaims_total{pool="innovation"} 1.0' in body
    assert 'broker_preemptions_total{class="innovation"} 1.0' in body


def test_operation_work_is_flagged_but_never_reclaimed(client, engine, loop):
    set_policy(client, "operation")
    op = run(client, loop, job_body(name="op-idle", gpus=2, project="shs-ops-triage", **{"class": "operation"}))
    assert op["status"] == "RUNNING" and op["placements"][0]["node"] == "op-1", op
    client.post("/api/v1/jobs", json=job_body(name="op-wait", gpus=8, project="shs-ops-triage",
                                              **{"class": "operation"}))
    loop.tick()
    FakeAgent(client, engine, "op-1").phase(op, T0, T0 + 700, util=0, mem=100)
    rep = check_idle(engine, T0 + 700)
    assert rep.flagged == [op["id"]] and rep.reclaimed == []
    assert client.get(f"/api/v1/jobs/{op['id']}").json()["status"] == "RUNNING"


POLICY_CASES = [  # name, body, status
    ("utilization above 100", {"util_below_pct": 101}, 422),
    ("window under a minute", {"window_s": 10}, 422),
    ("unknown field", {"bogus": 1}, 422),
]


@pytest.mark.parametrize("body,status", [c[1:] for c in POLICY_CASES], ids=[c[0] for c in POLICY_CASES])
def test_bad_policies_are_refused(client, body, status):
    r = client.put("/api/v1/admin/idle-policies/innovation", json=body)
    assert r.status_code == status and r.json()["error"]["code"]


def test_unknown_pool_is_404(client):
    r = client.put("/api/v1/admin/idle-policies/nope", json={})
    assert r.status_code == 404 and r.json()["error"]["code"] == "POOL_NOT_FOUND"


def job_row(engine, job_id):
    from broker.models import Job

    with Session(engine) as s:
        row = s.get(Job, job_id)
        s.expunge(row)
        return row
