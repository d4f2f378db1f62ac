"""`broker-agent` as a subprocess: what operators and our checks actually run."""

import json
import subprocess
import sys

import pytest

from agents.schema import TelemetryReport

AGENT = [sys.executable, "-m", "agents.main"]


def run_agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*AGENT, *args], capture_output=True, text=True, timeout=timeout)


def test_once_stdout_fake_gpus_prints_one_valid_report():
    p = run_agent("--once", "--stdout", "--fake-gpus", "2", "--node-id", "node-a")
    assert p.returncode == 0, p.stderr
    [line] = p.stdout.strip().splitlines()
    report = TelemetryReport.model_validate(json.loads(line))
    assert report.node_id == "node-a" and report.heartbeat.gpu_backend == "fake"
    assert [g.index for g in report.gpus] == [0, 1]
    assert report.host is not None and report.host.mem_total_mb > 0


def test_once_stdout_without_driver_reports_cpu_only():
    p = run_agent("--once", "--stdout", "--node-id", "cpu-1")
    assert p.returncode == 0, p.stderr
    report = TelemetryReport.model_validate_json(p.stdout)
    if not report.heartbeat.cpu_only:
        pytest.skip("this machine has a working NVIDIA driver")
    assert report.gpus == [] and report.heartbeat.cpu_only_reason
    assert p.stderr.count("CPU-only") == 1  # said once, not per reading


@pytest.mark.parametrize(
    "name,args",
    [
        ("nothing to do", []),
        ("negative interval", ["--stdout", "--sample-interval", "-1"]),
        ("too many fake gpus", ["--stdout", "--fake-gpus", "1000"]),
    ],
)
def test_bad_arguments_exit_2_with_message(name, args):
    p = run_agent(*args)
    assert p.returncode == 2 and "error" in p.stderr and "Traceback" not in p.stderr
