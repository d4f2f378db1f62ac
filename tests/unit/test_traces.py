"""Trace parsing: both formats, every kind of bad row naming its line, max_runtime, worker split."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.model import WorkloadClass
from scheduler.sim.traces import (
    RUNTIME_STEP_S, TraceError, estimate_max_runtime, load_trace, parse_lines, split_workers, to_job,
)

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sim_sample.csv"
HEADER = "job_id,submit_time,duration,gpus,project"


def canonical(*rows: str, header: str = HEADER) -> list[str]:
    return [header, *rows]


def test_canonical_good_rows_with_defaults_and_optionals():
    jobs = parse_lines(canonical(
        "b,10,100,16,pathology",
        "a,0,50.5,1,radiology",
        header=HEADER,
    ))
    assert [j.id for j in jobs] == ["a", "b"], "sorted by submit time"
    a, b = jobs
    assert (a.duration, a.gpus, a.project, a.workers, a.line) == (50.5, 1, "radiology", None, 3)
    assert a.workload_class is WorkloadClass.INNOVATION and a.priority == 0 and not a.checkpointable
    assert a.max_runtime == estimate_max_runtime(50.5)
    assert b.gpu_seconds == 1600


def test_canonical_all_optional_columns():
    jobs = parse_lines(canonical(
        "x,5,100,8,p,2,16,64,H100,operation,3,500,yes",
        header=HEADER + ",workers,cpus,memory_gb,gpu_model,class,priority,max_runtime,checkpointable",
    ))
    (x,) = jobs
    assert (x.workers, x.cpus, x.memory_gb, x.gpu_model) == (2, 16.0, 64.0, "H100")
    assert (x.workload_class, x.priority, x.max_runtime, x.checkpointable) == (WorkloadClass.OPERATION, 3, 500.0, True)
    job = to_job(x, gpus_per_node=8)
    assert (job.workers, job.per_worker.gpus, job.per_worker.cpus, job.per_worker.memory_gb) == (2, 4, 8.0, 32.0)
    assert job.gpu_models == ("H100",) and job.max_runtime_s == 500.0


def test_blank_lines_are_ignored_but_line_numbers_stay_file_lines():
    with pytest.raises(TraceError) as e:
        parse_lines([HEADER, "", "a,0,10,1,p", "", "b,0,-1,1,p"])
    assert e.value.line == 5


BAD_CANONICAL = {
    "missing required column": ([ "job_id,submit_time,duration,project", "a,0,1,p"], 1, "gpus"),
    "unknown column": ([HEADER + ",colour", "a,0,1,1,p,red"], 1, "colour"),
    "too few fields": (canonical("a,0,10,1"), 2, "expected 5 fields"),
    "duration not a number": (canonical("a,0,ten,1,p"), 2, "duration must be a number"),
    "duration zero": (canonical("a,0,0,1,p"), 2, "duration must be > 0"),
    "negative submit": (canonical("a,-5,10,1,p"), 2, "submit_time must be >= 0"),
    "gpus fractional": (canonical("a,0,10,1.5,p"), 2, "gpus must be a whole number"),
    "gpus zero": (canonical("a,0,10,0,p"), 2, "gpus must be >= 1"),
    "empty project": (canonical("a,0,10,1,"), 2, "project is empty"),
    "empty job id": (canonical(",0,10,1,p"), 2, "job_id is empty"),
    "duplicate job id": (canonical("a,0,10,1,p", "a,1,10,1,p"), 3, "duplicate job_id"),
    "nan duration": (canonical("a,0,nan,1,p"), 2, "finite"),
    "workers do not divide": ([HEADER + ",workers", "a,0,10,6,p,4"], 2, "split evenly"),
    "bad class": ([HEADER + ",class", "a,0,10,1,p,research"], 2, "class must be operation or innovation"),
    "bad checkpointable": ([HEADER + ",checkpointable", "a,0,10,1,p,maybe"], 2, "checkpointable"),
    "bad max_runtime": ([HEADER + ",max_runtime", "a,0,10,1,p,0"], 2, "max_runtime must be > 0"),
    "header only": ([HEADER], 1, "no jobs"),
    "empty file": ([], 1, "empty trace"),
}


@pytest.mark.parametrize("lines,line,problem", BAD_CANONICAL.values(), ids=BAD_CANONICAL.keys())
def test_bad_canonical_rows_name_the_line_and_problem(lines, line, problem):
    with pytest.raises(TraceError) as e:
        parse_lines(lines, "canonical")
    assert e.value.line == line
    assert problem in str(e.value)
    assert f"line {line}:" in str(e.value)


PHILLY_HEADER = "timestamp,duration,num_gpus,gpu_time,cluster"


def test_philly_pollux_relative_times_and_projects():
    jobs = parse_lines([
        PHILLY_HEADER,
        "2017-10-09 07:01:55,66.0,1,66.0,11cb48",
        "2017-10-09 06:13:03,2951.0,16,47216.0,6214e9",
    ], "philly-pollux")
    assert [(j.id, j.submit_time, j.gpus, j.project) for j in jobs] == [
        ("j3", 0.0, 16, "6214e9"), ("j2", 2932.0, 1, "11cb48"),
    ]
    assert all(j.max_runtime == estimate_max_runtime(j.duration) for j in jobs)


BAD_PHILLY = {
    "bad timestamp": ("2017/10/09 07:01:55,66.0,1,66.0,c", "timestamp must be"),
    "bad gpus": ("2017-10-09 07:01:55,66.0,x,66.0,c", "num_gpus must be a whole number"),
    "negative duration": ("2017-10-09 07:01:55,-1,1,66.0,c", "duration must be > 0"),
    "bad gpu_time": ("2017-10-09 07:01:55,66,1,abc,c", "gpu_time must be a number"),
    "empty cluster": ("2017-10-09 07:01:55,66,1,66,", "cluster is empty"),
}


@pytest.mark.parametrize("row,problem", BAD_PHILLY.values(), ids=BAD_PHILLY.keys())
def test_bad_philly_rows_name_the_line(row, problem):
    with pytest.raises(TraceError) as e:
        parse_lines([PHILLY_HEADER, "2017-10-09 07:01:55,66.0,1,66.0,c", row], "philly-pollux")
    assert e.value.line == 3 and problem in str(e.value)


def test_canonical_file_read_as_philly_names_the_header():
    with pytest.raises(TraceError) as e:
        load_trace(str(SAMPLE), "philly-pollux")
    assert e.value.line == 1 and "timestamp" in str(e.value) and str(SAMPLE) in str(e.value)


def test_missing_file_is_a_trace_error(tmp_path):
    with pytest.raises(TraceError, match="cannot read trace"):
        load_trace(str(tmp_path / "nope.csv"))


def test_sample_trace_loads():
    jobs = load_trace(str(SAMPLE))
    assert len(jobs) == 10 and {j.project for j in jobs} == {"radiology", "pathology", "cardiology"}
    b2 = next(j for j in jobs if j.id == "b2")
    assert b2.max_runtime == 7200.0, "an explicit max_runtime wins over the estimate"


MAX_RUNTIME = {
    "tiny job gets one step": (1.0, RUNTIME_STEP_S),
    "exactly half a step": (RUNTIME_STEP_S / 2, RUNTIME_STEP_S),
    "just over half a step": (RUNTIME_STEP_S / 2 + 1, 2 * RUNTIME_STEP_S),
    "one hour doubles to two": (3600.0, 7200.0),
    "rounded up to 15 minutes": (1000.0, 2700.0),
}


@pytest.mark.parametrize("duration,expected", MAX_RUNTIME.values(), ids=MAX_RUNTIME.keys())
def test_max_runtime_estimate(duration, expected):
    est = estimate_max_runtime(duration)
    assert est == expected
    assert est >= duration, "a broker enforcing max_runtime must never kill a job that completed in the trace"


SPLITS = {
    "fits one node": (4, 8, None, (1, 4)),
    "one full node": (8, 8, None, (1, 8)),
    "16 on 8-GPU nodes": (16, 8, None, (2, 8)),
    "12 on 8-GPU nodes": (12, 8, None, (2, 6)),
    "24 on 8-GPU nodes": (24, 8, None, (3, 8)),
    "prime count": (13, 8, None, (13, 1)),
    "128 on 8-GPU nodes": (128, 8, None, (16, 8)),
    "explicit workers kept": (16, 8, 4, (4, 4)),
    "4-GPU nodes": (16, 4, None, (4, 4)),
}


@pytest.mark.parametrize("gpus,per_node,workers,expected", SPLITS.values(), ids=SPLITS.keys())
def test_split_workers(gpus, per_node, workers, expected):
    assert split_workers(gpus, per_node, workers) == expected


def test_split_rejects_uneven_explicit_workers():
    with pytest.raises(ValueError):
        split_workers(10, 8, 3)
