"""Services end to end on the real local Ray cluster: a `runtime: process` Python HTTP server as
the replicas, the real scheduling loop, runner, controller (its periodic task) and /svc proxy.

Targets checked (issue: services): requests through the entry point succeed and are spread
over both replicas; a replica whose process is killed is out of rotation within 2 probe
periods (plus one controller tick) and a replacement is ready within 10 s; no request through
the entry point fails meanwhile.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest

from broker.bench.service import SERVER as BENCH_REPLICA
from tests.integration.conftest import NAMESPACE, wait_for
from tests.integration.test_e2e_ray import _release_all, running_broker

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

PERIOD_S = 0.5
# the bench's replica: answers "<job id> <pid>" on GET, keep-alive, listens on $PORT
SERVER = BENCH_REPLICA


@pytest.fixture
def broker_settings(tmp_path):
    from broker.db import migrate
    from broker.settings import Settings

    s = Settings(data_dir=tmp_path / "broker", allow_process_runtime=True, grace_period_s=2.0,
                 cycle_interval_s=0.25, reconcile_interval_s=2.0)
    s.ensure_data_dir()
    migrate(s)
    return s


@pytest.fixture
def broker(ray_cluster, broker_settings):
    with running_broker(broker_settings, ray_cluster.address) as client:
        yield client
    _release_all(ray_cluster)


def service_body(name: str, **over) -> dict:
    b = {"name": name, "project": "ouh-liver", "runtime": "process", "command": ["python3", "-c", SERVER],
         "resources": {"gpus": 0, "cpus": 0.25, "memory_gb": 0.1}, "replicas": {"min": 2, "max": 2},
         "readiness": {"path": "/healthz", "period_s": PERIOD_S, "failure_threshold": 2, "timeout_s": 0.5},
         "restart": {"backoff_initial_s": 0.2, "backoff_max_s": 2}}
    b.update(over)
    return b


def _who(broker, name: str) -> tuple[str, int]:
    r = broker.call_service("ouh-liver", name, "/predict")
    assert r.status_code == 200, r.text
    job_id, pid = r.text.split()
    return job_id, int(pid)


def test_process_replicas_serve_spread_and_a_killed_one_is_replaced(broker):
    broker.deploy_service(service_body("echo"))
    broker.wait_service("echo", project="ouh-liver", ready=2, timeout=90)
    seen = Counter(_who(broker, "echo") for _ in range(40))
    assert len({j for j, _ in seen}) == 2 and min(seen.values()) >= 10, seen

    (victim, pid), _ = seen.most_common(1)[0]
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    out = wait_for(lambda: victim not in {r["job_id"] for r in broker.service_replicas("echo", project="ouh-liver")
                                           if r["ready"]} and time.monotonic(), timeout_s=10, interval_s=0.05)
    out_s = out - killed
    failed = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            _who(broker, "echo")
        except AssertionError:
            failed += 1
        reps = broker.service_replicas("echo", project="ouh-liver")
        if sum(1 for r in reps if r["ready"]) == 2 and victim not in {r["job_id"] for r in reps}:
            break
        time.sleep(0.05)
    replaced_s = time.monotonic() - killed
    print(f"\nkilled replica: out of rotation after {out_s:.2f} s, replacement ready after {replaced_s:.2f} s, "
          f"{failed} failed requests")
    assert out_s <= 2 * PERIOD_S + 0.75, out_s
    assert replaced_s <= 10.0, replaced_s
    assert failed == 0
    seen = Counter(j for j, _ in (_who(broker, "echo") for _ in range(20)))
    assert len(seen) == 2 and victim not in seen
    kinds = [e["kind"] for e in broker.service_events("echo", project="ouh-liver")]
    assert "replica_failed" in kinds
    broker.delete_service("echo", project="ouh-liver")
    wait_for(lambda: not broker.services(project="ouh-liver"), timeout_s=30)


@pytest.mark.container
def test_container_replicas_behind_the_proxy(broker, busybox_image):
    """busybox httpd in two isolated containers (own network, the gateway guard on): the port is
    published on the node for the broker only, and requests are spread over both."""
    cmd = "echo $BROKER_JOB_ID > /tmp/index.html && exec /bin/busybox httpd -f -p $PORT -h /tmp"
    broker.deploy_service(service_body("web", runtime="container", image=busybox_image, port=8080,
                                       command=["/bin/busybox", "sh", "-c", cmd],
                                       readiness={"path": "/index.html", "period_s": PERIOD_S, "failure_threshold": 2}))
    broker.wait_service("web", project="ouh-liver", ready=2, timeout=120)
    seen = Counter()
    for _ in range(20):
        r = broker.call_service("ouh-liver", "web", "/index.html")
        assert r.status_code == 200, r.text
        seen[r.text.strip()] += 1
    assert len(seen) == 2 and min(seen.values()) >= 5, seen
    reps = broker.service_replicas("web", project="ouh-liver")
    assert {r["job_id"] for r in reps} == set(seen)
    # kill one replica's container: out of rotation, replaced (a new container) within the target
    import subprocess

    from broker.adapters.ray.runner import container_name

    victim = reps[0]
    job = broker.get(victim["job_id"])
    subprocess.run(["podman", "kill", container_name(victim["job_id"], job["attempt"], 0)], check=True,
                   capture_output=True, timeout=60, env={**os.environ})
    killed = time.monotonic()
    wait_for(lambda: victim["job_id"] not in {r["job_id"] for r in broker.service_replicas("web", project="ouh-liver")
                                              if r["ready"]}, timeout_s=5, interval_s=0.05)
    out_s = time.monotonic() - killed
    wait_for(lambda: sum(1 for r in broker.service_replicas("web", project="ouh-liver") if r["ready"]) == 2
             and victim["job_id"] not in {r["job_id"] for r in broker.service_replicas("web", project="ouh-liver")},
             timeout_s=40, interval_s=0.1)
    replaced_s = time.monotonic() - killed
    print(f"\ncontainer killed: out of rotation after {out_s:.2f} s, replacement ready after {replaced_s:.2f} s")
    assert out_s <= 2 * PERIOD_S + 0.75 and replaced_s <= 10.0 + 15.0  # + the container's own start here
    assert all(broker.call_service("ouh-liver", "web", "/index.html").status_code == 200 for _ in range(10))
    broker.delete_service("web", project="ouh-liver")
    wait_for(lambda: not broker.services(project="ouh-liver"), timeout_s=60)


@pytest.fixture
def served_broker(ray_cluster, broker_settings):
    """The broker on a real port (uvicorn in a thread): the load generator runs in a subprocess."""
    import threading

    import uvicorn
    from sqlmodel import Session

    from broker.adapters.ray.executor import RayExecutor
    from broker.adapters.ray.local import free_port
    from broker.app import create_app
    from broker.client import BrokerClient
    from broker.db import make_engine
    from broker.services.bootstrap import ensure_admin_token, seed_demo

    engine = make_engine(broker_settings)
    with Session(engine) as s:
        seed_demo(s, process_runtime=True)
        s.commit()
    token = ensure_admin_token(broker_settings, engine).read_text().strip()
    executor = RayExecutor(ray_cluster.address, log_dir=broker_settings.data_dir / "logs", namespace=NAMESPACE)
    port = free_port()
    # the load tests send thousands of requests a second with one token: lift the entry point's
    # per-caller limit (1,500/s by default) beyond their reach, as the bench does
    settings = broker_settings.model_copy(update={"service_rate_limit_per_caller_per_s": 1e7,
                                                  "service_rate_limit_per_caller_burst": 10_000_000})
    server = uvicorn.Server(uvicorn.Config(create_app(settings, executor=executor, engine=engine),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30)
        with BrokerClient(f"http://127.0.0.1:{port}", token) as c:
            yield c, port, token
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        executor.shutdown()
        engine.dispose()
        _release_all(ray_cluster)


def test_rollout_under_load_loses_nothing_and_a_bad_revision_is_rolled_back(served_broker):
    """20 concurrent clients through the entry point (a subprocess) during a rollout of a new
    revision, then of one that exits at once: 0 failed requests in both; the bad one is rolled
    back and the service keeps serving revision 2."""
    from broker.bench import service as bench

    c, port, token = served_broker
    c.deploy_service(bench.service_spec())
    c.wait_service(bench.NAME, project=bench.PROJECT, ready=2, timeout=90)
    proxy, entry = [("127.0.0.1", port)], f"/svc/{bench.PROJECT}/{bench.NAME}/predict"
    good = bench._rollout(c, proxy, entry, token, 20, {"env": {"MODEL": "v2"}}, want_rolled_back=False)
    print(f"\nrollout: {good}")
    assert good["seconds"] is not None and good["errors"] == 0 and good["requests"] > 100, good
    bad = bench._rollout(c, proxy, entry, token, 20, {"command": ["python3", "-c", "import sys; sys.exit(1)"]},
                         want_rolled_back=True)
    print(f"rollback: {bad}")
    assert bad["rolled_back"] and bad["errors"] == 0, bad
    s = c.service(bench.NAME, project=bench.PROJECT)
    assert s["revision"] == 2 and s["stable_revision"] == 2
    assert [r["status"] for r in c.service_revisions(bench.NAME, project=bench.PROJECT)][0] == "rolled_back"


def test_a_service_survives_a_broker_restart(ray_cluster, broker_settings):
    """The replicas (detached runners) outlive the broker; the next broker re-adopts the same
    replica jobs, probes them and routes to them again, starting no new ones."""
    try:
        with running_broker(broker_settings, ray_cluster.address) as first:
            first.deploy_service(service_body("keep"))
            first.wait_service("keep", project="ouh-liver", ready=2, timeout=90)
            before = {r["job_id"] for r in first.service_replicas("keep", project="ouh-liver")}
            assert _who(first, "keep")[0] in before
        with running_broker(broker_settings, ray_cluster.address) as second:
            t0 = time.monotonic()
            seen = wait_for(lambda: _who(second, "keep")[0], timeout_s=30)
            routed_s = time.monotonic() - t0
            second.wait_service("keep", project="ouh-liver", ready=2, timeout=30)
            after = {r["job_id"] for r in second.service_replicas("keep", project="ouh-liver")}
            print(f"\nrouted again {routed_s:.2f} s after the new broker's start")
            assert seen in before and after == before
            got = Counter(_who(second, "keep")[0] for _ in range(20))
            assert set(got) == before
            second.delete_service("keep", project="ouh-liver")
            wait_for(lambda: not second.services(project="ouh-liver"), timeout_s=30)
    finally:
        _release_all(ray_cluster)


def test_a_rollout_under_a_locust_load_of_20_users_loses_no_request(served_broker, tmp_path):
    """Locust (headless, 20 users, in its own process) on the entry point while a new revision
    rolls out: Locust counts 0 failures."""
    import csv
    import subprocess
    import sys
    from pathlib import Path

    from broker.bench import service as bench

    c, port, token = served_broker
    c.deploy_service(bench.service_spec())
    c.wait_service(bench.NAME, project=bench.PROJECT, ready=2, timeout=90)
    prefix = str(tmp_path / "locust")
    env = {**os.environ, "BROKER_TOKEN": token, "SERVICE_PATH": f"/svc/{bench.PROJECT}/{bench.NAME}/predict"}
    proc = subprocess.Popen([sys.executable, "-m", "locust", "-f", str(Path(__file__).with_name("service_locustfile.py")),
                             "--headless", "--host", f"http://127.0.0.1:{port}", "-u", "20", "-r", "20", "-t", "25s",
                             "--csv", prefix, "--only-summary", "--exit-code-on-error", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(6)  # the users are up and steady
        c.update_service(bench.NAME, project=bench.PROJECT, env={"MODEL": "v2"})
        wait_for(lambda: (s := c.service(bench.NAME, project=bench.PROJECT))["stable_revision"] == 2
                 and all(r["revision"] == 2 and r["ready"] for r in c.service_replicas(bench.NAME, project=bench.PROJECT)),
                 timeout_s=15, interval_s=0.2)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = {r["Name"]: r for r in csv.DictReader(open(prefix + "_stats.csv"))}
    agg = rows["Aggregated"]
    print(f"\nlocust: {agg['Request Count']} requests, {agg['Failure Count']} failures, "
          f"{float(agg['Requests/s']):.0f} req/s, p50 {agg['50%']} ms, p95 {agg['95%']} ms")
    assert int(agg["Request Count"]) > 500, out[-2000:]
    assert int(agg["Failure Count"]) == 0, out[-2000:]
