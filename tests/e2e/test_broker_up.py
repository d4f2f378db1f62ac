"""The README's first command, for real: `broker up` in a subprocess on a fresh data dir.

One broker (SQLite, embedded one-node Ray head with 2 logical GPUs, node agent, API) is started
for the module; the tests check what a user and a security reviewer rely on:
- a job submitted over REST runs on the embedded Ray head and ends SUCCEEDED with its logs;
- Ray stays behind the broker: token authentication is on (a client without the token is
  refused, one with it is served), the token file is private, and every port the broker's
  process tree listens on (gcs_server, raylet, workers, agents, the API) is on loopback;
- the job's own environment carries neither Ray's token nor the bind shim;
- the service entry point's worker processes (started here with BROKER_SERVICE_PROXY_WORKERS=2)
  serve their own port, on loopback too;
- SIGTERM stops everything it started (the entry workers included): no process of its tree is left.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")
pytest.importorskip("ray")

from broker.client import BrokerClient  # noqa: E402

pytestmark = pytest.mark.ray

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(pid: int) -> list:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture(scope="module")
def broker_up(tmp_path_factory):
    data = tmp_path_factory.mktemp("up")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # nothing from the test process
    env.setdefault("CONTAINERS_CONF", str(Path(__file__).resolve().parents[1] / "containers.conf"))
    entry_port = _free_port()
    env.update(BROKER_SERVICE_PROXY_WORKERS="2", BROKER_SERVICE_PROXY_PORT=str(entry_port))
    broker_bin = Path(sys.executable).with_name("broker")
    log = open(data / "up.log", "wb")
    proc = subprocess.Popen([str(broker_bin), "up", "--port", str(port), "--data-dir", str(data), "--gpus", "2",
                             "--fake-telemetry", "2"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    import httpx

    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"broker up exited with {proc.returncode}: {(data / 'up.log').read_text()[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"broker up not ready in 120 s: {(data / 'up.log').read_text()[-3000:]}")
    token = (data / "admin-token").read_text().strip()
    proc.entry_port = entry_port  # the entry point workers' port
    try:
        yield proc, url, token, data
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            for p in _tree(proc.pid):
                p.kill()
        log.close()


def test_a_job_runs_on_the_embedded_ray_head(broker_up):
    _, url, token, _ = broker_up
    probe = ("echo auth=${RAY_AUTH_MODE:-none} token=${RAY_AUTH_TOKEN_PATH:-none} "
             "preload=${LD_PRELOAD:-none} cvd=$CUDA_VISIBLE_DEVICES")
    with BrokerClient(url, token) as c:
        created = c.submit(name="up-smoke", project="ouh-liver", workload_class="innovation", image="",
                           command=["sh", "-c", probe], resources={"gpus": 1, "cpus": 0.5, "memory_gb": 0.1},
                           runtime="process", max_runtime_s=60, max_retries=0)
        done = c.wait(created["id"], until=TERMINAL, timeout=90, poll_s=0.2)
        assert done["status"] == "SUCCEEDED", done
        out = dict(kv.split("=", 1) for kv in c.logs(created["id"]).split() if "=" in kv)
    # the job is no Ray client of the broker's cluster and may bind where it likes
    assert out["auth"] == "none" and out["token"] == "none" and out["preload"] == "none", out
    assert out["cvd"] in ("0", "1")


def test_up_says_where_the_dashboard_is_without_migration_noise(broker_up):
    _, url, _, data = broker_up
    text = (data / "up.log").read_text(errors="replace")
    assert f"dashboard  {url}/dashboard" in text and f"{url}/docs" in text and "log in:" in text, text[-3000:]
    assert "alembic" not in text.lower(), text[:3000]
    assert (data / "admin-token").read_text().strip() not in text  # the token itself is never printed


def test_the_console_script_against_the_live_broker(broker_up, tmp_path):
    """Spec file round trip through the real `broker` script: submit --wait, list, get -o yaml."""
    import json as json_

    _, url, token, _ = broker_up
    spec = tmp_path / "hello.yaml"
    spec.write_text("name: cli-live\nproject: ouh-liver\nruntime: process\ncommand: [sh, -c, 'echo hello from $RANK']\n"
                    "resources: {gpus: 0, cpus: 0.5, memory_gb: 0.1}\nmax_runtime_s: 60\nmax_retries: 0\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "BROKER_URL": url, "BROKER_TOKEN": token}
    cli = [sys.executable, "-m", "broker.cli"]
    r = subprocess.run([*cli, "jobs", "submit", "-f", str(spec), "--wait", "--timeout", "90"], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    # one progress line per change seen (a warm cluster may admit it before the first poll)
    progress = [ln.split()[1] for ln in r.stderr.splitlines() if re.match(r"\d\d:\d\d:\d\d  ", ln)]
    assert re.search(r"Status:\s+SUCCEEDED", r.stdout) and progress[-1] == "SUCCEEDED", r.stderr
    assert "waiting for" in r.stderr and len(progress) == len(set(progress)), r.stderr
    job_id = re.search(r"Job:\s+(\w+)", r.stdout).group(1)
    t0 = time.perf_counter()
    listed = subprocess.run([*cli, "jobs", "list", "-o", "json"], capture_output=True, text=True, timeout=60, env=env)
    wall = time.perf_counter() - t0
    assert listed.returncode == 0 and job_id in [j["id"] for j in json_.loads(listed.stdout)["items"]]
    print(f"broker jobs list: {wall * 1000:.0f} ms wall")
    logs = subprocess.run([*cli, "jobs", "logs", job_id], capture_output=True, text=True, timeout=60, env=env)
    assert "hello from 0" in logs.stdout


def test_ray_refuses_clients_without_the_cluster_token(broker_up):
    proc, _, _, data = broker_up
    token_file = data / "ray-auth-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert len(bytes.fromhex(token_file.read_text().strip())) == 32
    gcs = next(p for p in _tree(proc.pid) if p.name() == "gcs_server")
    port = next(a.split("=", 1)[1] for a in gcs.cmdline() if a.startswith("--gcs_server_port="))
    probe = ("from ray._raylet import GcsClient\n"
             f"print(len(GcsClient(address='127.0.0.1:{port}').get_all_node_info(timeout=5)))")
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    anonymous = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=base)
    assert anonymous.returncode != 0
    assert "token" in (anonymous.stdout + anonymous.stderr).lower()
    authed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                            env={**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)})
    assert authed.returncode == 0, authed.stderr[-2000:]
    assert authed.stdout.strip() == "2"  # the default: one node per pool, the head and one more


def test_the_entry_point_workers_serve_their_own_port(broker_up):
    import httpx

    proc, _, token, data = broker_up
    base = f"http://127.0.0.1:{proc.entry_port}"
    auth = {"Authorization": f"Bearer {token}"}
    for _ in range(4):  # new connections: both workers
        r = httpx.get(base + "/svc/ouh-liver/no-such-service/", headers=auth, timeout=30)
        assert r.status_code == 404 and r.json()["error"]["code"] == "SERVICE_NOT_FOUND", r.text
        r = httpx.get(base + "/api/v1/jobs", headers=auth, timeout=30)
        assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND", r.text
    workers = [p for p in _tree(proc.pid) if "spawn_main" in " ".join(p.cmdline())]
    assert len(workers) == 2, [(p.pid, p.cmdline()) for p in _tree(proc.pid)]
    assert "service entry points: 2 worker processes" in (data / "up.log").read_text()


def test_every_port_of_the_broker_listens_on_loopback_only(broker_up):
    proc, _, _, _ = broker_up
    pids = {p.pid: p.name() for p in _tree(proc.pid)}
    listening = [(pids[c.pid], c.laddr.ip, c.laddr.port)
                 for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in pids]
    names = {n for n, _, _ in listening}
    assert {"gcs_server", "raylet"} <= names, listening  # the head's servers are in the tree
    assert len({pid for pid, n in pids.items() if n == "raylet"}) == 2, pids  # and the second node's
    exposed = [x for x in listening if not (x[1].startswith("127.") or x[1] in ("::1", "::ffff:127.0.0.1"))]
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_sigterm_stops_everything_it_started(broker_up):
    proc, _, _, data = broker_up
    tree = _tree(proc.pid)
    assert any(p.name() == "raylet" for p in tree)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=90)
    deadline = time.time() + 30
    while time.time() < deadline and [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]:
        time.sleep(0.5)
    left = [(p.pid, p.name()) for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"left behind: {left}; log: {(data / 'up.log').read_text()[-2000:]}"
    assert proc.returncode == 0, (data / "up.log").read_text()[-2000:]  # a clean stop

