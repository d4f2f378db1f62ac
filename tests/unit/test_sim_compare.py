"""The policy comparison: each target judged on hand-made figures (each case can fail), and the
command end to end on a small generated trace."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.sim.compare import detect_format, summary, targets

ROOT = Path(__file__).resolve().parents[2]


def figures(op_p99=100.0, inno=(1000.0, 5000.0, 9000.0), max_wait=20000.0, lost=0.0, util=0.70, jain=0.5,
            eta=(0.1, 0.5, 0.95), wall=60.0, op_jobs=5) -> dict:
    cls = lambda **k: {"jobs": 10, "avg_wait_s": 0.0, "p50_wait_s": 0.0, "p95_wait_s": 0.0, "p99_wait_s": 0.0,  # noqa: E731
                       "max_wait_s": 0.0, "avg_jct_s": 0.0, **k}
    return {"per_class": {"operation": cls(jobs=op_jobs, p99_wait_s=op_p99),
                          "innovation": cls(avg_wait_s=inno[0], p95_wait_s=inno[1], p99_wait_s=inno[2])},
            "max_wait_s": max_wait, "lost_fraction": lost, "utilization": util, "jain_fairness": jain,
            "eta_error_p50": eta[0], "eta_error_p90": eta[1], "eta_coverage": eta[2], "wall_s": wall, "cpu_s": wall}


BASE = {"fifo": figures(op_p99=5000, inno=(9000, 20000, 30000), max_wait=40000, util=0.70, jain=0.3),
        "fair": figures(op_p99=3000, jain=0.5), "fair-backfill": figures(op_p99=3000, jain=0.5),
        "default": figures()}


def verdict(res: dict, needle: str, explain: bool = True) -> bool | None:
    lines = targets(res, "default", 300.0, 0.0, explain)
    hits = [ok for ok, line in lines if line.startswith(needle)]
    assert len(hits) == 1, (needle, lines)
    return hits[0]


def test_all_targets_pass_on_the_base_figures():
    assert all(ok for ok, _ in targets(BASE, "default", 300.0, 0.0, True))


@pytest.mark.parametrize("policy,path,value,needle", [
    pytest.param("default", ("per_class", "operation", "p99_wait_s"), 301.0, "operation p99", id="operation p99 > cycle"),
    pytest.param("default", ("per_class", "innovation", "avg_wait_s"), 1051.0, "innovation avg", id="avg > 1.05 fair"),
    pytest.param("default", ("per_class", "innovation", "p95_wait_s"), 5251.0, "innovation p95", id="p95 > 1.05 fair"),
    pytest.param("default", ("per_class", "innovation", "p99_wait_s"), 9451.0, "innovation p99", id="p99 > 1.05 fair"),
    pytest.param("default", ("max_wait_s",), 40001.0, "max wait", id="max wait above fifo's"),
    pytest.param("default", ("lost_fraction",), 0.0201, "GPU-seconds lost", id="lost over 2 %"),
    pytest.param("default", ("utilization",), 0.6949, "utilization", id="utilization 0.51 points below fifo"),
    pytest.param("default", ("jain_fairness",), 0.4999, "Jain", id="Jain below fair's"),
    pytest.param("default", ("eta_error_p50",), 0.2501, "ETA error median", id="ETA median"),
    pytest.param("default", ("eta_error_p90",), 1.0001, "ETA error p90", id="ETA p90"),
    pytest.param("default", ("eta_coverage",), 0.8999, "ETA coverage", id="ETA coverage"),
    pytest.param("fair-backfill", ("utilization",), 0.6999, "fair-backfill no worse", id="backfill worse than fair"),
])
def test_each_target_fails_just_past_its_limit(policy, path, value, needle):
    res = copy.deepcopy(BASE)
    assert verdict(res, needle) is True
    d = res[policy]
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    assert verdict(res, needle) is False


@pytest.mark.parametrize("change,needle", [
    pytest.param(lambda r: r.pop("fifo"), "max wait: n/a", id="no fifo run"),
    pytest.param(lambda r: r.pop("fair"), "Jain: n/a", id="no fair run"),
    pytest.param(lambda r: r["default"]["per_class"]["operation"].update(jobs=0), "operation p99 wait: n/a",
                 id="no operation jobs"),
])
def test_targets_without_a_reference_are_not_applicable(change, needle):
    res = copy.deepcopy(BASE)
    change(res)
    assert verdict(res, needle) is None


def test_replay_time_is_judged_without_explain_only():
    res = copy.deepcopy(BASE)
    res["default"]["wall_s"] = 121.0
    assert verdict(res, "replay", explain=False) is False
    assert not any(line.startswith("replay") for _, line in targets(res, "default", 300.0, 0.0, True))


def test_detect_format(tmp_path):
    (tmp_path / "p.csv").write_text("timestamp,duration,num_gpus,gpu_time,cluster\n")
    (tmp_path / "c.csv").write_text("job_id,submit_time,duration,gpus,project\n")
    assert detect_format(str(tmp_path / "p.csv")) == "philly-pollux"
    assert detect_format(str(tmp_path / "c.csv")) == "canonical"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler.sim.compare", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_compare_cli_end_to_end(tmp_path):
    out = tmp_path / "all.json"
    p = run("--trace-gen", "3:projects=6,days=1,load=0.9,operation-share=0.2", "--nodes", "8", "--gpus-per-node", "8",
            "--policies", "fifo,fair,fair-backfill-preempt", "--jobs", "2", "--explain", "--json-out", str(out))
    assert p.returncode == 0, p.stderr
    assert "### generated 3:projects=6,days=1,load=0.9,operation-share=0.2,cluster-gpus=64" in p.stdout
    assert "| figure | fifo | fair | fair-backfill-preempt (default) |" in p.stdout
    verdicts = [line for line in p.stdout.splitlines() if line.startswith(("- PASS", "- FAIL", "- n/a"))]
    assert len(verdicts) == 11, "operation p99, 3 innovation waits, max wait, utilization, lost, Jain, 3 ETA"
    assert "| ETA error median |" in p.stdout
    passed = sum(line.startswith("- PASS") for line in verdicts)
    assert f"fair-backfill-preempt: {passed} of {passed + sum(v.startswith('- FAIL') for v in verdicts)} targets met" \
        in p.stdout
    data = json.loads(out.read_text())
    (label, entry), = data.items()
    assert set(entry["results"]) == {"fifo", "fair", "fair-backfill-preempt"}
    assert entry["results"]["fair"]["per_class"]["operation"]["jobs"] > 0


def test_compare_cli_unfinishable_replay_exits_3():
    p = run("--trace-gen", "3:projects=6,days=1,operation-share=0.2", "--nodes", "8", "--gpus-per-node", "8",
            "--operation-nodes", "0", "--policies", "fifo,fair", "--default", "fair", "--jobs", "1")
    assert p.returncode == 3
    assert "operation jobs need pool operation, which has no nodes" in p.stdout


def test_compare_cli_bad_input_exits_2():
    p = run("--trace-gen", "3:bogus=1", "--nodes", "4", "--gpus-per-node", "8")
    assert p.returncode == 2 and "bad generator parameter" in p.stderr
    p = run("--trace-gen", "3", "--nodes", "4", "--gpus-per-node", "8", "--policies", "fifo,best")
    assert p.returncode == 2 and "unknown policy 'best'" in p.stderr


def test_reuse_takes_the_baselines_from_an_earlier_run_with_the_same_settings(tmp_path):
    base = tmp_path / "base.json"
    gen = ("--trace-gen", "3:projects=6,days=1,operation-share=0.2", "--gpus-per-node", "8", "--jobs", "1")
    first = run(*gen, "--nodes", "8", "--policies", "fifo,fair,fair-backfill-preempt", "--json-out", str(base))
    assert first.returncode == 0, first.stderr
    again = run(*gen, "--nodes", "8", "--policies", "fair-backfill-preempt", "--reuse", str(base))
    assert again.returncode == 0, again.stderr
    assert "reusing fair, fifo" in again.stderr and "fifo done" not in again.stderr
    table = lambda out: [line for line in out.splitlines()  # noqa: E731
                         if line.startswith(("|", "- ")) and "replay" not in line]  # times differ
    assert table(again.stdout) == table(first.stdout), "same table and verdicts, from one replay instead of three"
    other = run(*gen, "--nodes", "9", "--policies", "fair-backfill-preempt", "--reuse", str(base))
    assert "reusing" not in other.stderr and "max wait: n/a (fifo did not run)" in other.stdout


def test_several_cluster_sizes_in_one_command():
    p = run("--trace-gen", "3:projects=6,days=1", "--nodes", "6,8", "--gpus-per-node", "8", "--policies", "fair",
            "--default", "fair", "--jobs", "2")
    assert p.returncode == 0, p.stderr
    heads = [line for line in p.stdout.splitlines() if line.startswith("### ")]
    assert len(heads) == 2
    assert "cluster-gpus=48" in heads[0] and "6 x 8 GPUs" in heads[0]
    assert "cluster-gpus=64" in heads[1] and "8 x 8 GPUs" in heads[1]
    assert "over 2 trace(s) and cluster(s)" in p.stdout
    bad = run("--trace-gen", "3", "--nodes", "6,eight", "--gpus-per-node", "8")
    assert bad.returncode == 2 and "--nodes must be a number or a comma-separated list" in bad.stderr


def test_summary_judges_a_policy_on_the_set_of_traces():
    """Geometric means of the ratios to fair over every trace: one trace where the default is
    twice fair's and one where it is half give 1.000; 'within 1.05 x' counts the traces where
    all three innovation figures are; lost and operation p99 are the mean/worst and the worst."""
    worse = figures(inno=(2000.0, 10000.0, 18000.0), lost=0.03, jain=1.0, op_p99=250.0)
    better = figures(inno=(500.0, 2500.0, 4500.0), lost=0.01, jain=0.25, op_p99=290.0)
    results = [{**BASE, "default": worse}, {**BASE, "default": better}]
    text = summary(results, ["fifo", "fair", "default"], "default")
    row = next(line for line in text.splitlines() if line.startswith("| default (default) |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "1.000 / 1.000 / 1.000"
    assert cells[2] == "1 of 2"
    assert cells[3] == "2.00 % / 3.00 %"
    assert cells[4] == "1.000"  # Jain 2x and 0.5x of fair's 0.5
    assert cells[5] == "290"
    assert not any(line.startswith("| fair ") for line in text.splitlines())
    assert summary([{"default": worse}], ["default"], "default") == ""  # fair did not run
