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


def test_agent_loop_in_a_thread_pushes_and_serves_metrics(tmp_path):
    """What a Ray actor would do: run main() in a thread against a broker, stop it with an event."""
    import http.server
    import socket
    import threading

    import httpx

    from agents.main import main

    got = []

    class Broker(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((self.headers["Authorization"], TelemetryReport.model_validate_json(body)))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *a):
            return None

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Broker)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        mport = s.getsockname()[1]
    (tmp_path / "token").write_text("cba_test\n")
    stop = threading.Event()
    argv = ["--broker-url", f"http://127.0.0.1:{srv.server_address[1]}", "--token-file", str(tmp_path / "token"),
            "--node-id", "n-thread", "--fake-gpus", "1", "--sample-interval", "0.05", "--push-interval", "0.2",
            "--buffer-dir", str(tmp_path / "buf"), "--metrics-port", str(mport), "--metrics-addr", "127.0.0.1"]
    t = threading.Thread(target=main, args=(argv, stop))
    t.start()
    try:
        deadline = __import__("time").monotonic() + 20
        while len(got) < 2 and __import__("time").monotonic() < deadline:
            stop.wait(0.05)
        metrics = httpx.get(f"http://127.0.0.1:{mport}/metrics", timeout=5).text
    finally:
        stop.set()
        t.join(20)
        srv.shutdown()
    assert not t.is_alive()
    assert len(got) >= 2 and got[0][0] == "Bearer cba_test"
    assert all(r.node_id == "n-thread" for _, r in got) and got[0][1].seq < got[1][1].seq
    assert 'DCGM_FI_DEV_GPU_UTIL{gpu="0"' in metrics
    assert (tmp_path / "buf" / "next_seq").exists()


def test_console_script_target_from_pyproject(capsys):
    """`broker-agent` is declared as agents.main:main; the target works without a subprocess too."""
    import importlib
    import tomllib
    from pathlib import Path

    scripts = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["broker-agent"].split(":")
    main = getattr(importlib.import_module(module), func)
    assert main(["--once", "--stdout", "--fake-gpus", "1", "--node-id", "n-entry"]) == 0
    report = TelemetryReport.model_validate_json(capsys.readouterr().out)
    assert report.node_id == "n-entry" and len(report.gpus) == 1
