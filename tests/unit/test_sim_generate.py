"""The trace generator: same seed, same bytes; the parameters are honoured; the output is a
valid canonical trace the simulator replays."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.model import WorkloadClass
from scheduler.sim.generate import GenSpec, generate, parse_spec, spec_text
from scheduler.sim.simulate import SimConfig, simulate
from scheduler.sim.traces import parse_lines

ROOT = Path(__file__).resolve().parents[2]
SMALL = GenSpec(seed=3, projects=8, operation_share=0.2, load=0.8, checkpointable_share=0.5, days=2, cluster_gpus=32)


def test_same_seed_same_bytes_other_seed_other_trace():
    assert generate(SMALL) == generate(SMALL)
    other = GenSpec(**{**{f: getattr(SMALL, f) for f in SMALL.__slots__}, "seed": 4})
    assert generate(other) != generate(SMALL)


def test_cli_writes_the_same_file_twice(tmp_path):
    args = [sys.executable, "-m", "scheduler.sim.generate", "--seed", "3", "--projects", "8", "--operation-share",
            "0.2", "--load", "0.8", "--checkpointable-share", "0.5", "--days", "2", "--cluster-gpus", "32"]
    for name in ("a.csv", "b.csv"):
        p = subprocess.run([*args, "-o", str(tmp_path / name)], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes() == generate(SMALL).encode()


def test_parameters_are_honoured():
    jobs = parse_lines(generate(SMALL).splitlines())
    op = [j for j in jobs if j.workload_class is WorkloadClass.OPERATION]
    inno = [j for j in jobs if j.workload_class is WorkloadClass.INNOVATION]
    assert len(op) / len(jobs) == pytest.approx(0.2, abs=0.01)
    assert sum(j.checkpointable for j in inno) == round(len(inno) * 0.5)
    assert not any(j.checkpointable for j in op)
    load = sum(j.gpu_seconds for j in inno) / (32 * 2 * 86400)
    assert 0.8 <= load < 0.8 + max(j.gpu_seconds for j in inno) / (32 * 2 * 86400)
    assert all(0 <= j.submit_time < 2 * 86400 for j in jobs)
    assert all(j.max_runtime >= j.duration for j in jobs), "a request below the run time would be killed"
    assert {j.project for j in op} <= {"op-01", "op-02"} and len({j.project for j in inno}) >= 4
    sizes = [j.gpus for j in inno]
    assert sizes.count(1) / len(sizes) > 0.6 and max(sizes) > 8
    assert all(j.workers == j.gpus // 8 for j in inno if j.gpus > 8)


def test_submits_follow_the_day():
    """More submits in the afternoon (12-16 h) than at night (0-4 h)."""
    jobs = parse_lines(generate(GenSpec(seed=5, days=7, load=0.5, cluster_gpus=64)).splitlines())
    hour = [(j.submit_time % 86400) // 3600 for j in jobs]
    assert sum(12 <= h < 16 for h in hour) > 2 * sum(0 <= h < 4 for h in hour)


def test_generated_trace_replays_to_the_end():
    jobs = parse_lines(generate(SMALL).splitlines())
    m = simulate(jobs, SimConfig(nodes=4, gpus_per_node=8, checkpoint_interval=1800)).metrics
    assert m["unfinished"] == 0 and m["jobs"] == len(jobs) and m["per_class"]["operation"]["jobs"] > 0


@pytest.mark.parametrize("text,error", [
    pytest.param("7:loud=1", "bad generator parameter 'loud=1'", id="unknown key"),
    pytest.param("7:projects=1", "projects must be >= 2", id="too few projects"),
    pytest.param("7:operation-share=1.5", "operation-share must be in", id="share out of range"),
    pytest.param("x:load=1", "invalid literal", id="seed not a number"),
])
def test_bad_spec_text(text, error):
    with pytest.raises(ValueError, match=error):
        parse_spec(text)


def test_spec_text_round_trip():
    assert parse_spec(spec_text(SMALL)) == SMALL
    assert parse_spec("9:operation_share=0.1,days=3") == GenSpec(seed=9, operation_share=0.1, days=3)
