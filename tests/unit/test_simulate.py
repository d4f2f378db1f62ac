"""Simulator: hand-computed fifo replays, metric definitions, preemption accounting, tick rule,
determinism, and the CLIs (simulate and bench) end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.model import POLICIES, Admission, CycleResult, Flavor, Placement
from scheduler.sim.cli import parse_window
from scheduler.sim.cluster import project_shares
from scheduler.sim.metrics import JobOutcome, jain, metrics, percentile
from scheduler.sim.simulate import SimConfig, SimulationError, simulate
from scheduler.sim.traces import TraceJob, load_trace, parse_lines
from tests.unit.simkit import by_id, scripted

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "tests" / "data" / "sim_sample.csv"
SIM_KEYS = {"jobs", "avg_jct_s", "avg_wait_s", "p50_wait_s", "p95_wait_s", "p99_wait_s", "utilization",
            "makespan_s", "jain_fairness", "preemptions", "cycles", "wall_s"}
BENCH_KEYS = {"cycle_ms_median", "cycle_ms_p95", "admitted", "preempted", "pending", "nodes", "running"}


def exact(**kw) -> SimConfig:
    """Event-exact replay: a tick at every event time, every pending job visible."""
    kw.setdefault("cycle_interval", 0)
    kw.setdefault("queue_depth", 0)
    return SimConfig(**kw)


def tj(jid: str, submit: float, duration: float, gpus: int = 1, project: str = "p", *,
       checkpointable: bool = False, line: int = 0) -> TraceJob:
    return TraceJob(id=jid, submit_time=submit, duration=duration, gpus=gpus, project=project,
                    max_runtime=2 * duration, checkpointable=checkpointable, line=line)


def outcome(jid: str, submit: float, start: float, end: float, duration: float, gpus: int = 1,
            project: str = "p") -> JobOutcome:
    return JobOutcome(id=jid, project=project, submit=submit, duration=duration, gpus=gpus,
                      first_start=start, end=end)


HAND = [tj("a", 0, 100, 1), tj("b", 10, 50, 2), tj("c", 20, 30, 1)]


def check_hand_fifo(result, starts: dict[str, float]) -> None:
    got = by_id(result)
    for jid, start in starts.items():
        assert got[jid].first_start == start, jid


def test_hand_computed_fifo_with_the_real_core():
    """2 GPUs; a(1 GPU, 100 s) at 0, b(2 GPUs, 50 s) at 10, c(1 GPU, 30 s) at 20.
    fifo: a 0-100; b blocks the head until a ends: 100-150; c behind b: 150-180."""
    result = simulate(HAND, exact(nodes=1, gpus_per_node=2, policy=POLICIES["fifo"]))
    check_hand_fifo(result, {"a": 0, "b": 100, "c": 150})
    m = result.metrics
    assert m["jobs"] == 3 and m["unfinished"] == 0
    assert m["avg_wait_s"] == pytest.approx((0 + 90 + 130) / 3, abs=0.1)
    assert m["avg_jct_s"] == pytest.approx((100 + 140 + 160) / 3, abs=0.1)
    assert (m["p50_wait_s"], m["p95_wait_s"], m["p99_wait_s"]) == (90, 130, 130)
    assert m["makespan_s"] == 180
    assert m["utilization"] == pytest.approx((100 * 1 + 50 * 2 + 30 * 1) / (2 * 180), abs=1e-4)
    assert m["preemptions"] == 0


def test_stand_in_gives_the_same_hand_result_and_skips_useless_cycles():
    result = simulate(HAND, exact(nodes=1, gpus_per_node=2, policy=POLICIES["fifo"]), scripted())
    check_hand_fifo(result, {"a": 0, "b": 100, "c": 150})
    # cycles at 0 (a), 100 (b), 150 (c); the submits of b and c cannot start anything (b is
    # the blocked head), so no cycle runs for them.
    assert result.metrics["cycles"] == 3


def test_cycle_interval_coalesces_events_into_ticks():
    """Ticks every 60 s: a at tick 0; b, c arrive before tick 60 but b blocks; a ends at 100,
    freeing at tick 120 (b 120-170); c starts at tick 180. Completion times stay exact."""
    cfg = exact(nodes=1, gpus_per_node=2, policy=POLICIES["fifo"], cycle_interval=60)
    result = simulate(HAND, cfg, scripted())
    check_hand_fifo(result, {"a": 0, "b": 120, "c": 180})
    got = by_id(result)
    assert (got["a"].end, got["b"].end, got["c"].end) == (100, 170, 210)


@pytest.mark.parametrize("checkpointable,interval,x_end,lost,util", [
    pytest.param(False, 0, 150, 80, 210 / (2 * 150), id="restart loses the work since its start"),
    pytest.param(False, 30, 150, 80, 210 / (2 * 150), id="checkpoint interval does not help a restart"),
    pytest.param(True, 0, 110, 0, 210 / (2 * 110), id="checkpointable, continuous checkpoints: resumes"),
    pytest.param(True, 30, 120, 20, 210 / (2 * 120), id="checkpoint every 30 s: loses the last 10 s"),
    pytest.param(True, 40, 110, 0, 210 / (2 * 110), id="checkpoint exactly at the preemption: loses nothing"),
    pytest.param(True, 60, 150, 80, 210 / (2 * 150), id="no checkpoint yet: loses all 40 s"),
])
def test_preemption_loses_work_since_the_last_checkpoint(checkpointable, interval, x_end, lost, util):
    """2 GPUs, projects p and q with one GPU of nominal each. x (q, 2 GPUs, 100 s) borrows from
    0; y (p, 1 GPU, 10 s) arrives at 40 and reclaims; x runs again once y ends at 50, resuming
    from its last checkpoint (every `interval` s of run time) or from scratch."""
    trace = [tj("x", 0, 100, 2, "q", checkpointable=checkpointable), tj("y", 40, 10, 1, "p")]
    cfg = exact(nodes=1, gpus_per_node=2, checkpoint_interval=interval)
    result = simulate(trace, cfg, scripted({"y": "x"}, frozenset({"x"})))
    got = by_id(result)
    assert got["y"].first_start == 40 and got["y"].end == 50, "the preemptor starts at once (grace 0)"
    assert got["x"].first_start == 0, "wait counts to the first start"
    assert got["x"].end == x_end and got["x"].jct == x_end, "preempted job keeps its submit time"
    assert got["x"].preemptions == 1 and got["x"].lost_gpu_s == lost
    assert result.metrics["preemptions"] == 1 and result.metrics["lost_gpu_s"] == lost
    assert result.metrics["lost_fraction"] == pytest.approx(lost / 210, abs=1e-4)
    assert result.metrics["utilization"] == pytest.approx(util, abs=1e-4)


def recording(inner):
    """The stand-in cycle, recording every snapshot it is shown (with its time)."""
    seen = []

    def cycle(snap, now, policy):
        seen.append((now, snap))
        return inner(snap, now, policy)
    return cycle, seen


@pytest.mark.parametrize("interval,at,expected", [
    pytest.param(30, 40, 30.0, id="last checkpoint: start + floor(ran / S) x S"),
    pytest.param(40, 40, 40.0, id="a checkpoint written exactly now"),
    pytest.param(60, 40, 0.0, id="none yet since the start: the start"),
    pytest.param(0, 40, None, id="without --checkpoint-interval: None"),
])
def test_running_checkpoint_time_is_fed_as_the_broker_does(interval, at, expected):
    trace = [tj("x", 0, 100, 2, "q", checkpointable=True), tj("y", at, 10, 1, "p")]
    cycle, seen = recording(scripted({"y": "x"}, frozenset({"x"})))
    simulate(trace, exact(nodes=1, gpus_per_node=2, checkpoint_interval=interval), cycle)
    snap = next(s for now, s in seen if now == at)
    (x,) = snap.running
    assert x.job.checkpointable and x.checkpoint_time == expected
    assert next(j for j in snap.pending if j.id == "y").checkpointable is False


def test_runtime_ratio_is_the_median_of_the_last_finished_jobs_once_five_finished():
    """max_runtime is twice the duration (tj): every finished job of p has ratio 0.5. The
    ratio stays 1.0 until five jobs of p have finished; q, with none, stays at 1.0."""
    trace = [tj(f"a{i}", 10 * i, 5, 1, "p") for i in range(7)] + [tj("z", 200, 5, 1, "q")]
    cycle, seen = recording(scripted())
    simulate(trace, exact(nodes=1, gpus_per_node=1), cycle)
    ratios = [(now, {p.id: p.runtime_ratio for p in s.projects}) for now, s in seen]
    assert [r["p"] for now, r in ratios if now < 45] == [1.0] * len([n for n, _ in ratios if n < 45])
    assert all(r["p"] == 0.5 for now, r in ratios if now >= 45)
    assert all(r["q"] == 1.0 for _, r in ratios)
    cycle, seen = recording(scripted())
    simulate(trace, exact(nodes=1, gpus_per_node=1, learn_runtime_ratio=False), cycle)
    assert all(p.runtime_ratio == 1.0 for _, s in seen for p in s.projects)


def test_preempt_grace_holds_resources_until_the_stop_event():
    trace = [tj("x", 0, 100, 2, "q"), tj("y", 40, 10, 1, "p")]
    cfg = exact(nodes=1, gpus_per_node=2, preempt_grace=5)
    result = simulate(trace, cfg, scripted({"y": "x"}, frozenset({"x"})))
    got = by_id(result)
    assert got["y"].first_start == 45 and got["x"].end == 155


def test_no_cycle_for_a_submit_that_cannot_start_or_reclaim():
    """Same as above but x does not borrow: y cannot reclaim anything, so no cycle runs at 40."""
    trace = [tj("x", 0, 100, 2, "q"), tj("y", 40, 10, 1, "p")]
    result = simulate(trace, exact(nodes=1, gpus_per_node=2), scripted({"y": "x"}))
    assert by_id(result)["y"].first_start == 100 and result.metrics["preemptions"] == 0
    assert result.metrics["cycles"] == 2


def test_over_allocating_admission_is_refused():
    def greedy(snap, now, policy):
        return CycleResult(admissions=tuple(Admission(j.id, Flavor("sim", "gpu"), (Placement(0, snap.nodes[0].id),))
                                            for j in snap.pending))
    with pytest.raises(SimulationError, match="over-allocated"):
        simulate([tj("a", 0, 10), tj("b", 0, 10)], exact(nodes=1, gpus_per_node=1), greedy)


def test_jobs_larger_than_the_cluster_are_skipped_not_hung():
    result = simulate([tj("big", 0, 10, gpus=32), tj("a", 0, 10)], exact(nodes=2, gpus_per_node=8), scripted())
    assert result.metrics["skipped_jobs"] == 1 and result.metrics["jobs"] == 1


def test_multi_gpu_jobs_are_split_into_workers_on_nodes():
    seen = []

    def spy(snap, now, policy):
        seen.extend((j.id, j.workers, j.per_worker.gpus) for j in snap.pending)
        return scripted()(snap, now, policy)
    simulate([tj("w", 0, 10, gpus=16)], exact(nodes=2, gpus_per_node=8), spy)
    assert seen[0] == ("w", 2, 8)


METRIC_CASES = {
    "percentile nearest rank p50 of 4": (lambda: percentile([4, 1, 3, 2], 50), 2),
    "percentile p95 of 20": (lambda: percentile(list(range(1, 21)), 95), 19),
    "percentile of one": (lambda: percentile([7], 99), 7),
    "jain equal": (lambda: jain([2, 2, 2]), 1.0),
    "jain one takes all": (lambda: jain([1, 0, 0, 0]), 0.25),
}


@pytest.mark.parametrize("fn,expected", METRIC_CASES.values(), ids=METRIC_CASES.keys())
def test_metric_helpers(fn, expected):
    assert fn() == pytest.approx(expected)


def test_metrics_definitions():
    outs = [
        outcome("a", 0, 0, 100, 100, project="p"),      # slowdown 1
        outcome("b", 50, 150, 250, 100, project="q"),   # wait 100, slowdown 2
        JobOutcome("c", "q", 60, 5, 1, None, None),      # never ran: excluded, counted unfinished
    ]
    m = metrics(outs, cluster_gpus=2)
    assert (m["jobs"], m["unfinished"]) == (2, 1)
    assert m["avg_wait_s"] == 50 and m["avg_jct_s"] == 150
    assert m["makespan_s"] == 250 and m["utilization"] == pytest.approx(200 / 500)
    assert m["jain_fairness"] == pytest.approx((1 + 2) ** 2 / (2 * (1 + 4)), abs=1e-4)


def test_project_shares():
    trace = [tj("a", 0, 100, 1, "p"), tj("b", 0, 100, 3, "q")]
    assert project_shares(trace, "equal") == {"p": 0.5, "q": 0.5}
    assert project_shares(trace, "demand") == {"p": 0.25, "q": 0.75}


@pytest.mark.parametrize("text,expected", [
    ("0:7d", (0.0, 7 * 86400.0)), (":3600", (None, 3600.0)), ("2h:", (7200.0, None)), ("10m:90", (600.0, 90.0)),
])
def test_parse_window(text, expected):
    assert parse_window(text) == expected


def test_replay_is_deterministic_with_the_real_core():
    jobs = load_trace(str(SAMPLE))
    cfg = exact(nodes=2, gpus_per_node=8)
    a, b = simulate(jobs, cfg), simulate(jobs, cfg)
    assert a.outcomes == b.outcomes
    timing = ("wall_s", "cpu_s")
    assert {k: v for k, v in a.metrics.items() if k not in timing} == {k: v for k, v in b.metrics.items() if k not in timing}
    assert a.metrics["jobs"] == len(jobs)


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_simulate_cli_json(policy):
    p = run_module("scheduler.sim.simulate", "--trace", str(SAMPLE), "--nodes", "2", "--gpus-per-node", "8",
                   "--policy", policy, "--json")
    assert p.returncode == 0, p.stderr
    m = json.loads(p.stdout)
    assert SIM_KEYS <= m.keys()
    assert m["jobs"] == 10 and 0 < m["utilization"] <= 1


def test_simulate_cli_table_and_window():
    p = run_module("scheduler.sim.simulate", "--trace", str(SAMPLE), "--nodes", "1", "--gpus-per-node", "8",
                   "--policy", "fifo", "--window", "0:600")
    assert p.returncode == 0, p.stderr
    assert "average JCT (s)" in p.stdout and "jobs completed" in p.stdout


def test_simulate_cli_bad_trace_exits_2_naming_the_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("job_id,submit_time,duration,gpus,project\na,0,10,1,p\nb,0,ten,1,p\n")
    p = run_module("scheduler.sim.simulate", "--trace", str(bad), "--nodes", "1", "--gpus-per-node", "8")
    assert p.returncode == 2
    assert "line 3" in p.stderr and "duration must be a number" in p.stderr
    assert "Traceback" not in p.stderr


def test_bench_cli_json_small():
    p = run_module("scheduler.sim.bench", "--json", "--small", "--repeat", "2")
    assert p.returncode == 0, p.stderr
    m = json.loads(p.stdout)
    assert BENCH_KEYS <= m.keys()
    assert m["nodes"] == 40 and m["pending_in"] == 300
    assert m["admitted"] + m["pending"] == m["pending_in"], "every pending job is admitted or has a reason"


def test_operation_jobs_get_an_operation_pool_with_the_real_core():
    """A trace with operation work gets an operation pool (a quarter of the nodes) that lends idle
    capacity to innovation; the operation job runs there at once even though innovation work
    arrived first and fills the innovation pool."""
    jobs = parse_lines([
        "job_id,submit_time,duration,gpus,project,class",
        "i1,0,1000,8,research,innovation",
        "i2,0,1000,8,research,innovation",
        "i3,0,1000,8,research,innovation",
        "o1,10,100,8,clinic,operation",
    ])
    result = simulate(jobs, exact(nodes=4, gpus_per_node=8))
    got = by_id(result)
    assert result.metrics["jobs"] == 4 and result.metrics["unfinished"] == 0
    assert got["o1"].first_start == 10


@pytest.mark.parametrize("policy,depth,seen", [
    pytest.param("fair", 3, 3, id="per-project depth when fewer GPUs are free"),
    pytest.param("fair", 0, 10, id="depth 0 passes everything"),
    pytest.param("fifo", 3, 2, id="fifo passes free GPUs + 1 of the global queue"),
])
def test_queue_depth_bounds_the_pending_view(policy, depth, seen):
    """1 GPU busy until 100; ten 1-GPU jobs queue meanwhile; at 100 one GPU is free."""
    trace = [tj("x", 0, 100)] + [tj(f"q{i}", i + 1, 10) for i in range(10)]
    views: dict[float, int] = {}

    def spy(snap, now, pol):
        views.setdefault(now, len(snap.pending))
        return scripted()(snap, now, pol)
    simulate(trace, exact(nodes=1, gpus_per_node=1, policy=POLICIES[policy], queue_depth=depth), spy)
    assert views[100] == seen


@pytest.mark.parametrize("alias,module,args", [
    pytest.param("scheduler.simulate", "scheduler.sim.simulate",
                 ("--trace", str(SAMPLE), "--nodes", "2", "--gpus-per-node", "8", "--json"), id="simulate"),
    pytest.param("scheduler.bench", "scheduler.sim.bench", ("--json", "--small", "--repeat", "1", "--no-explain"),
                 id="bench"),
])
def test_documented_entry_points_are_aliases(alias, module, args):
    """`python -m scheduler.simulate` / `scheduler.bench` stay the documented commands: same flags,
    same figures as the package modules they alias."""
    a, b = run_module(alias, *args), run_module(module, *args)
    assert a.returncode == 0 == b.returncode, a.stderr + b.stderr
    timing = {"wall_s", "cpu_s", "cycle_ms_median", "cycle_cpu_ms_median", "cycle_ms_p95", "cycle_ms_min"}
    strip = lambda out: {k: v for k, v in json.loads(out).items() if k not in timing}  # noqa: E731
    assert strip(a.stdout) == strip(b.stdout)
    assert run_module(alias, "--help").stdout == run_module(module, "--help").stdout
