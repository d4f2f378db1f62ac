"""`broker bench kueue`: the scenario's shape, the accounting on hand-made rows (so a wrong
figure or a missed double admission fails here, not silently in BENCHMARKS.md), and one
scaled-down run through the real server, loop and fake executor."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from broker.bench.kueue import CLASSES, Sent, peak_held, project_ids, schedule, summarize
from broker.cli import app


def test_full_scenario_is_kueues_baseline():
    plan = schedule(1.0)
    assert len(plan) == 15_000 and len(project_ids()) == 30
    per_class = {c.name: sum(1 for s in plan if s.cls.name == c.name) for c in CLASSES}
    assert per_class == {"small": 30 * 350, "medium": 30 * 100, "large": 30 * 50}
    assert [s.at_s for s in plan] == sorted(s.at_s for s in plan)
    assert max(s.at_s for s in plan if s.cls.name == "large") == pytest.approx(49 * 1.2)
    work = sum(s.cls.gpus * s.cls.run_s for s in plan)
    assert work == pytest.approx(39_600)  # GPU-seconds: 66 s of the 600 GPUs fully busy


def test_scale_keeps_every_series():
    plan = schedule(0.001)
    assert len(plan) == 30 * 3  # at least one job per queue and class


# --------------------------------------------------------------------------- accounting

def _rows(*jobs, ledger=(), admits=None, preemptions=0):
    """jobs: (id, status, gpus, run_s, finished_at, attempts [(n, admitted, started, ended)])."""
    out = {"jobs": [], "attempts": [], "ledger": list(ledger), "preemptions": preemptions}
    for jid, status, gpus, run_s, fin, atts in jobs:
        out["jobs"].append(dict(id=jid, name=jid, status=status, gpus=gpus, command=["sleep", str(run_s)],
                                finished_at=fin))
        out["attempts"] += [dict(job_id=jid, number=n, admitted_at=a, started_at=s, ended_at=e, status=status)
                            for n, a, s, e in atts]
    out["admits"] = admits if admits is not None else {(a["job_id"], a["number"]): 1 for a in out["attempts"]}
    return out


def _led(jid, attempt, gpus, start, end):
    return dict(job_id=jid, attempt=attempt, gpus=gpus, started_at=start, ended_at=end,
                allocated_gpu_s=gpus * (end - start))


T0 = 1000.0
SENT = [Sent(T0, T0, "small", 201, "a"), Sent(T0 + 1, T0 + 1, "large", 201, "b")]


def test_usage_wall_and_latency_from_the_rows():
    rows = _rows(("a", "SUCCEEDED", 1, 0.2, T0 + 2.0, [(1, T0 + 0.5, T0 + 1.0, T0 + 2.0)]),
                 ("b", "SUCCEEDED", 20, 1.0, T0 + 10.0, [(1, T0 + 3.0, T0 + 4.0, T0 + 10.0)]),
                 ledger=[_led("a", 1, 1, T0 + 0.5, T0 + 2.0), _led("b", 1, 20, T0 + 3.0, T0 + 10.0)])
    out = summarize(SENT, rows, [("a", 1), ("b", 1)], gpus_total=40, t0=T0)
    assert out["ok"], out["problems"]
    assert out["wall_s"] == 10.0
    assert out["allocated_gpu_s"] == pytest.approx(1.5 + 140.0)
    assert out["usage_pct"] == pytest.approx(round(100 * 141.5 / (40 * 10.0), 2))
    assert out["work_gpu_s"] == pytest.approx(0.2 + 20.0)
    assert out["latency"]["small"]["admitted_ms"]["p50"] == 500.0
    assert out["latency"]["large"]["admitted_ms"]["p50"] == 2000.0
    assert out["latency"]["large"]["running_ms"]["p50"] == 3000.0
    assert out["peak_gpus_held"] == 20 and out["succeeded"] == 2


CASES = {
    "admitted twice": (dict(admits={("a", 1): 2, ("b", 1): 1}), "admitted more than once"),
    "not succeeded": (dict(status_b="FAILED"), "did not succeed"),
    "two attempts at once": (dict(overlap=True), "two attempts at once"),
    "more GPUs than exist": (dict(gpus_total=15), "more than the 15"),
    "launch without admission": (dict(launches=[("a", 1), ("b", 1), ("b", 2)]), "without an admission"),
    "refused submit": (dict(refused=True), "submits refused"),
    "open ledger row": (dict(open_row=True), "still open"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_problems_are_caught(case):
    kw, expect = CASES[case]
    ledger = [_led("a", 1, 1, T0 + 0.5, T0 + 2.0), _led("b", 1, 20, T0 + 3.0, T0 + 10.0)]
    if kw.get("overlap"):
        ledger.append(_led("b", 2, 20, T0 + 9.0, T0 + 11.0))
    if kw.get("open_row"):
        ledger.append(dict(job_id="a", attempt=2, gpus=1, started_at=T0 + 3, ended_at=None, allocated_gpu_s=0.0))
    rows = _rows(("a", "SUCCEEDED", 1, 0.2, T0 + 2.0, [(1, T0 + 0.5, T0 + 1.0, T0 + 2.0)]),
                 ("b", kw.get("status_b", "SUCCEEDED"), 20, 1.0, T0 + 10.0, [(1, T0 + 3.0, T0 + 4.0, T0 + 10.0)]),
                 ledger=ledger, admits=kw.get("admits"))
    sent = SENT + ([Sent(T0, T0, "small", 429, None)] if kw.get("refused") else [])
    out = summarize(sent, rows, kw.get("launches", [("a", 1), ("b", 1)]), gpus_total=kw.get("gpus_total", 40), t0=T0)
    assert not out["ok"]
    assert any(expect in p for p in out["problems"]), out["problems"]


def test_peak_counts_a_release_before_a_grab_at_the_same_instant():
    assert peak_held([_led("a", 1, 10, 0, 1), _led("b", 1, 10, 1, 2)]) == 10
    assert peak_held([_led("a", 1, 10, 0, 2), _led("b", 1, 5, 1, 3)]) == 15


# --------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_scaled_down_run_through_the_real_service(tmp_path):
    r = CliRunner().invoke(app, ["bench", "kueue", "--json", "--scale", "0.01", "--database",
                                 f"sqlite:///{tmp_path / 'k.db'}", "--timeout", "120"])
    out = json.loads(r.output.strip().splitlines()[-1])
    assert r.exit_code == 0 and out["ok"], out["problems"]
    assert out["jobs"] == out["succeeded"] == 30 * (4 + 1 + 1)
    assert out["admitted_twice"] == 0 and out["peak_gpus_held"] <= 600
    # the reported figures are rounded (allocated to 0.1 GPU-s, wall to 10 ms, usage to 0.01):
    # recomputed from them, usage agrees within what that rounding can move it
    recomputed = 100 * out["allocated_gpu_s"] / (600 * out["wall_s"])
    slack = recomputed * 1.01 * (0.005 / out["wall_s"] + 0.05 / out["allocated_gpu_s"]) + 0.005
    assert abs(out["usage_pct"] - recomputed) <= slack, (out["usage_pct"], recomputed, slack)
    assert out["work_gpu_s"] == pytest.approx(30 * (4 * 0.2 + 5 * 0.5 + 20 * 1.0))
    assert set(out["latency"]) == {"small", "medium", "large"}
    assert out["loop"]["tick"]["calls"] > 0
