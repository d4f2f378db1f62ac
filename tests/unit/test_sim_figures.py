"""Simulator figures computed by hand on tiny traces: per class and project, ETA accuracy of the
first estimate, the per-job CSV, and replays that cannot finish."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.model import POLICIES, CycleResult, PendingReason, ReasonCode, WorkloadClass
from scheduler.sim.cluster import ReplayError
from scheduler.sim.simulate import SimConfig, simulate
from scheduler.sim.traces import TraceJob
from tests.unit.simkit import by_id, scripted

ROOT = Path(__file__).resolve().parents[2]
OP, INNO = WorkloadClass.OPERATION, WorkloadClass.INNOVATION


def job(jid: str, submit: float, duration: float, gpus: int = 1, project: str = "lab", klass=INNO) -> TraceJob:
    return TraceJob(id=jid, submit_time=submit, duration=duration, gpus=gpus, project=project,
                    workload_class=klass, max_runtime=2 * duration)


def exact(**kw) -> SimConfig:
    kw.setdefault("cycle_interval", 0)
    kw.setdefault("queue_depth", 0)
    return SimConfig(**kw)


# 2 nodes x 1 GPU (n00000 operation, n00001 innovation); the stand-in admits in arrival order
# with head-of-line blocking. o1 0-100 and i1 0-50 start at once; i2 (10) waits for i1: 50-60;
# o2 (15) is behind i2: 60-90.
MIXED = [job("o1", 0, 100, project="clinic", klass=OP), job("i1", 0, 50), job("i2", 10, 10),
         job("o2", 15, 30, project="clinic", klass=OP)]


@pytest.mark.parametrize("group,key,expected", [
    pytest.param("operation", "jobs", 2, id="operation jobs"),
    pytest.param("operation", "avg_wait_s", 22.5, id="operation avg wait (0 + 45) / 2"),
    pytest.param("operation", "p50_wait_s", 0, id="operation p50 nearest rank"),
    pytest.param("operation", "p99_wait_s", 45, id="operation p99"),
    pytest.param("operation", "max_wait_s", 45, id="operation max"),
    pytest.param("operation", "avg_jct_s", 87.5, id="operation avg JCT (100 + 75) / 2"),
    pytest.param("innovation", "avg_wait_s", 20, id="innovation avg wait (0 + 40) / 2"),
    pytest.param("innovation", "max_wait_s", 40, id="innovation max"),
    pytest.param("innovation", "avg_jct_s", 50, id="innovation avg JCT"),
])
def test_per_class_figures(group, key, expected):
    m = simulate(MIXED, exact(nodes=2, gpus_per_node=1), scripted()).metrics
    assert m["per_class"][group][key] == expected


@pytest.mark.parametrize("project,key,expected", [
    pytest.param("clinic", "avg_wait_s", 22.5, id="clinic avg wait"),
    pytest.param("clinic", "gpu_share", round(130 / 190, 4), id="clinic share: 100 + 30 of 190 GPU-s"),
    pytest.param("lab", "gpu_share", round(60 / 190, 4), id="lab share: 50 + 10 of 190 GPU-s"),
    pytest.param("lab", "p95_wait_s", 40, id="lab p95"),
])
def test_per_project_figures(project, key, expected):
    m = simulate(MIXED, exact(nodes=2, gpus_per_node=1), scripted()).metrics
    assert m["per_project"][project][key] == expected


def test_overall_max_wait_and_an_empty_class():
    m = simulate([job("a", 0, 10), job("b", 0, 10)], exact(nodes=1, gpus_per_node=1), scripted()).metrics
    assert m["max_wait_s"] == 10
    assert m["per_class"]["operation"] == {"jobs": 0, "avg_wait_s": 0.0, "p50_wait_s": 0.0, "p95_wait_s": 0.0,
                                           "p99_wait_s": 0.0, "max_wait_s": 0.0, "avg_jct_s": 0.0}


def estimating(estimates: dict[str, float | None]):
    """The stand-in fifo cycle, plus a pending reason for each job left pending whose estimated
    start is now + estimates[job] (None: no estimate). The estimate changes every cycle, so only
    the first cycle's can give the expected figures."""
    base = scripted()

    def cycle(snap, now, policy):
        r = base(snap, now, policy)
        admitted = {a.job_id for a in r.admissions}
        pending = {}
        for j in snap.pending:
            if j.id not in admitted:
                ahead = estimates.get(j.id)
                est = None if ahead is None or not policy.explain else now + ahead
                pending[j.id] = PendingReason(ReasonCode.NO_CAPACITY, "busy", estimated_start=est)
        return CycleResult(admissions=r.admissions, pending=pending)
    return cycle


# 1 GPU; a runs 0-1000; then b 1000-1010, c 1010-1020, d 1020-1030, f 1030-1040, e 1040-1050.
# First estimates (first cycle = the submit instant, even though nothing can start then):
# b 100+500, c 200+500, d 300+2000, f none; e waits 50 s, under the 10-minute threshold.
ETA_TRACE = [job("a", 0, 1000), job("b", 100, 10), job("c", 200, 10), job("d", 300, 10), job("f", 400, 10),
             job("e", 990, 10)]
ETA_EST = {"b": 500, "c": 500, "d": 2000, "f": None, "e": 5}
ERR_B, ERR_C, ERR_D = abs(600 - 1000) / 900, abs(700 - 1010) / 810, abs(2300 - 1020) / 720


@pytest.mark.parametrize("key,expected", [
    pytest.param("eta_jobs", 4, id="b c d f waited over 10 minutes"),
    pytest.param("eta_coverage", 0.75, id="f got no estimate"),
    pytest.param("eta_error_p50", round(ERR_B, 4), id="median error, nearest rank of c b d"),
    pytest.param("eta_error_p90", round(ERR_D, 4), id="p90 error"),
    pytest.param("eta_late_share", round(2 / 3, 4), id="b and c started later than estimated, d earlier"),
])
def test_eta_accuracy_of_the_first_estimate(key, expected):
    result = simulate(ETA_TRACE, exact(nodes=1, gpus_per_node=1, explain=True), estimating(ETA_EST))
    assert result.metrics[key] == expected
    assert by_id(result)["b"].first_estimate == 600


def test_eta_figures_only_with_explain():
    m = simulate(ETA_TRACE, exact(nodes=1, gpus_per_node=1), estimating(ETA_EST)).metrics
    assert not any(k.startswith("eta_") for k in m)


def test_explain_with_the_real_core_gives_first_estimates():
    """Two 1-GPU jobs of 1,000 s on one GPU: the second gets an estimate at its submit."""
    result = simulate([job("a", 0, 1000), job("b", 0, 1000)],
                      exact(nodes=1, gpus_per_node=1, explain=True, policy=POLICIES["fair-backfill-preempt"]))
    got = by_id(result)
    assert got["b"].first_start == 1000 and got["b"].first_estimate is not None
    assert result.metrics["eta_coverage"] == 1.0


def test_operation_jobs_without_an_operation_pool_are_an_error_not_a_quiet_result():
    trace = [job("i1", 0, 100), job("o1", 10, 10, klass=OP), job("o2", 20, 10, klass=OP), job("i2", 30, 10)]
    with pytest.raises(ReplayError, match=r"2 operation jobs need pool operation, which has no nodes \(first: job o1\)"):
        simulate(trace, SimConfig(nodes=2, gpus_per_node=8, policy=POLICIES["fifo"], operation_nodes=0))


def test_jobs_that_never_complete_are_an_error_with_the_cycles_reason():
    def never_z(snap, now, policy):
        r = scripted()(snap.__class__(snap.nodes, snap.pools, snap.departments, snap.projects, snap.running,
                                      tuple(j for j in snap.pending if j.id != "z")), now, policy)
        return CycleResult(admissions=r.admissions,
                           pending={"z": PendingReason(ReasonCode.QUOTA_LIMIT, "z is over its limit.")})
    with pytest.raises(ReplayError, match=r"1 of 2 jobs never completed: 1 QUOTA_LIMIT \(e.g. job z: z is over"):
        simulate([job("a", 0, 10), job("z", 0, 10)], exact(nodes=1, gpus_per_node=1), never_z)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler.simulate", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_cli_unfinishable_replay_exits_3_naming_the_reason(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("job_id,submit_time,duration,gpus,project,class\n"
                     "a,0,100,1,lab,innovation\nb,10,100,1,clinic,operation\n")
    p = run_cli("--trace", str(trace), "--nodes", "2", "--gpus-per-node", "8", "--policy", "fifo",
                "--operation-nodes", "0", "--json")
    assert p.returncode == 3 and p.stdout == ""
    assert "1 operation jobs need pool operation, which has no nodes" in p.stderr and "Traceback" not in p.stderr


def test_cli_jobs_out_one_row_per_job(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("job_id,submit_time,duration,gpus,project,class\n"
                     "a,0,100,8,lab,innovation\nb,10,50,8,lab,innovation\n")
    out = tmp_path / "jobs.csv"
    p = run_cli("--trace", str(trace), "--nodes", "1", "--gpus-per-node", "8", "--policy", "fifo",
                "--cycle-interval", "0", "--jobs-out", str(out))
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(out.open()))
    assert [r["job_id"] for r in rows] == ["a", "b"]
    assert rows[1] == {"job_id": "b", "project": "lab", "class": "innovation", "gpus": "8", "submit": "10.0",
                       "first_start": "100.0", "end": "150.0", "wait": "90.0", "preemptions": "0",
                       "lost_gpu_s": "0.0", "first_estimate": ""}


def test_explain_shows_each_new_job_to_its_first_cycle_past_the_queue_depth():
    """Queue depth 1, one GPU busy until 100: at 20 nothing can start. Without explain no job
    beyond the project's head is shown (and no cycle need run); with explain a cycle runs at
    c's submit and shows c, beyond the depth, so c gets its reason at its first cycle."""
    trace = [job("a", 0, 100), job("b", 10, 10), job("c", 20, 10)]
    views: dict[bool, dict[float, set[str]]] = {}
    for explain in (False, True):
        seen = views[explain] = {}

        def spy(snap, now, policy, seen=seen):
            seen.setdefault(now, {j.id for j in snap.pending})
            return scripted()(snap, now, policy)
        simulate(trace, exact(nodes=1, gpus_per_node=1, queue_depth=1, explain=explain), spy)
    assert "c" not in views[False].get(20, set())
    assert views[True][20] == {"b", "c"}
