"""What the broker learns for the scheduler: runtime ratios from the ledger, checkpoint times
from checkpoint directories, checkpointable jobs in the snapshot."""

from __future__ import annotations

import os
import time

import pytest
from sqlmodel import Session

from broker.models import Job, Ledger
from broker.services import scheduling_queries as q
from broker.services.checkpoints import last_checkpoint
from broker.services.snapshot import RATIO_WINDOW, build_snapshot, runtime_ratio, to_job
from tests.broker.conftest import job_body


@pytest.mark.parametrize("case, samples, expected", [
    ("unknown_project_plans_with_the_request", [], 1.0),
    ("four_samples_are_not_enough", [(60, 600)] * 4, 1.0),
    ("median_of_five", [(60, 600), (60, 600), (120, 600), (600, 600), (6, 600)], 0.1),
    ("one_killed_at_its_limit_does_not_move_it", [(300, 600)] * 9 + [(600, 600)], 0.5),
    ("never_below_the_floor", [(0.1, 600)] * 10, 0.05),
    ("overruns_count_as_the_request", [(900, 600)] * 10, 1.0),
    ("only_the_newest_window_counts", [(60, 600)] * RATIO_WINDOW + [(600, 600)] * 50, 0.1),
])
def test_runtime_ratio(case, samples, expected):
    assert runtime_ratio(samples) == pytest.approx(expected), case


def test_recent_runtimes_come_from_successful_finished_attempts_newest_first(client, engine, new_project):
    project = new_project()
    now = time.time()
    ids = [client.post("/api/v1/jobs", json=job_body(project=project, max_runtime_s=1000)).json()["id"]
           for _ in range(4)]
    with Session(engine) as s:
        for i, (jid, status, ran) in enumerate(zip(ids, ["SUCCEEDED", "SUCCEEDED", "FAILED", "RUNNING"],
                                                    [100, 300, 50, None])):
            s.get(Job, jid).status = status
            end = None if ran is None else now - 100 + i
            s.add(Ledger(job_id=jid, attempt=1, project_id=project, department_id="ouh", gpus=1,
                         started_at=(end or now) - (ran or 10), ended_at=end))
        s.commit()
        got = q.recent_runtimes(s, now - 3600, per_project=10)[project]
    assert got == [(pytest.approx(300), 1000), (pytest.approx(100), 1000)]  # failed and running left out


def test_last_checkpoint_is_the_newest_write(tmp_path):
    d = tmp_path / "ckpt"
    assert last_checkpoint(d) is None
    d.mkdir()
    os.utime(d, (1000, 1000))
    (d / "step").write_text("1")
    os.utime(d / "step", (5000, 5000))
    os.utime(d, (2000, 2000))
    assert last_checkpoint(d) == 5000  # rewritten in place: the file's time


def test_snapshot_carries_checkpointable_jobs_checkpoints_and_ratios(client, engine):
    jid = client.post("/api/v1/jobs", json=job_body(checkpointable=True)).json()["id"]
    with Session(engine) as s:
        row = s.get(Job, jid)
        assert to_job(row).checkpointable is True
        row.started_at, row.flavor_pool = 100.0, "innovation"
        snap = build_snapshot(now=200.0, half_life_s=3600, departments=[], projects=[], pools=[], nodes=[],
                              quotas=[], holding=[row], placements={(jid, 1): []}, pending=[], ledger=[],
                              runtime_ratios={"ouh-liver": 0.4}, checkpoints={jid: 150.0})
        assert snap.running == ()  # no placements: skipped, not guessed
        from broker.models import Placement

        pl = Placement(job_id=jid, attempt=1, rank=0, node_id="inno-1", gpu_indices=[0])
        snap = build_snapshot(now=200.0, half_life_s=3600, departments=[], projects=[], pools=[], nodes=[],
                              quotas=[], holding=[row], placements={(jid, 1): [pl]}, pending=[], ledger=[],
                              runtime_ratios={"ouh-liver": 0.4}, checkpoints={jid: 150.0})
        (run,) = snap.running
        assert run.checkpoint_time == 150.0 and run.work_at_risk_s(200.0) == pytest.approx(50.0)
        s.rollback()


def test_preempted_attempts_reach_the_snapshot_of_a_running_job(client, engine):
    """The scheduler spares a job preempted often (Policy.reclaim_exempt_after): the broker
    counts its PREEMPTED attempts (not lost or failed ones) and puts the count on the job."""
    from broker.models import Attempt, Placement

    jid = client.post("/api/v1/jobs", json=job_body()).json()["id"]
    other = client.post("/api/v1/jobs", json=job_body()).json()["id"]
    with Session(engine) as s:
        for n, status in enumerate(["PREEMPTED", "LOST", "PREEMPTED"], start=1):
            s.add(Attempt(job_id=jid, number=n, status=status, admitted_at=10.0 * n, ended_at=10.0 * n + 5))
        s.add(Attempt(job_id=other, number=1, status="LOST", admitted_at=1.0, ended_at=2.0))
        row = s.get(Job, jid)
        row.attempt, row.status, row.started_at, row.flavor_pool = 4, "RUNNING", 100.0, "innovation"
        s.commit()
        counts = q.preemption_counts(s, [jid, other])
        assert counts == {jid: 2}
        pl = Placement(job_id=jid, attempt=4, rank=0, node_id="inno-1", gpu_indices=[0])
        snap = build_snapshot(now=200.0, half_life_s=3600, departments=[], projects=[], pools=[], nodes=[],
                              quotas=[], holding=[row], placements={(jid, 4): [pl]}, pending=[], ledger=[],
                              preemptions=counts)
        assert snap.running[0].job.preemptions == 2


@pytest.mark.parametrize("klass,preemptible,exempt", [("operation", False, True), ("operation", True, False),
                                                      ("innovation", False, False), ("innovation", True, False)])
def test_only_an_operation_services_min_replicas_skip_the_budget(klass, preemptible, exempt):
    """The rows marked not preemptible are an operation service's `min` replicas: they never wait
    for budget (their GPU-hours still count). Nothing else is exempt."""
    row = Job(id="r1", project_id="p", name="r1", workload_class=klass, gpus=1, preemptible=preemptible)
    job = to_job(row)
    assert job.budget_exempt is exempt and job.preemptible is preemptible
