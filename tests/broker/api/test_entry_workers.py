"""The service entry point's worker processes (`broker.entry`), on SQLite and PostgreSQL:
requests through the workers' port reach the replica from every worker; tenancy holds there
(a foreign user gets 404, no token 401); the port serves nothing but `/svc/...`; rate limits
are one set of buckets for the broker process and every worker; the broker's /metrics counts
the requests of every worker too, and a worker killed and started again takes nothing back
from the counters; the workers stop by PID.

The replica is a small HTTP server in this process; its row in `service_replicas` is written
ready by hand (the workers read the routing table from the database, as followers do).
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import threading
import time
import types
import uuid

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from broker.app import create_app
from broker.entry import EntryWorkers, write_samples
from broker.models import ServiceLoad, ServiceReplica

WORKERS = 2
SLOW_S = 4.0  # a slow answer of the replica: requests stay in flight that long


class _Replica(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.endswith("/slow"):
            time.sleep(SLOW_S)
        body = b"ok " + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        return


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ReplicaServer(http.server.ThreadingHTTPServer):
    # a real server's listen backlog (uvicorn: 2048), not socketserver's 5: with the accept
    # thread slow on a loaded machine, a full queue drops connection attempts, the entry point's
    # 2 s connect timeout passes and it answers 503 (seen under the whole suite's load)
    request_queue_size = 128


@pytest.fixture(scope="module")
def replica():
    srv = _ReplicaServer(("127.0.0.1", 0), _Replica)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def workers(settings, engine):
    w = EntryWorkers(settings.model_copy(update={"service_proxy_workers": WORKERS}), port=_free_port())
    w.start()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def shared_app(settings, engine, fake_executor, workers):
    """The broker process's app, with the workers' rate-limit buckets."""
    return create_app(settings, executor=fake_executor, start_background=False, engine=engine,
                      service_limiter=workers.limiter, service_metrics=workers.samples)


@pytest.fixture(scope="module")
def admin(shared_app, admin_token):
    with TestClient(shared_app, headers={"Authorization": f"Bearer {admin_token}"}) as c:
        yield c


def _service(admin, engine, replica_port: int, **over) -> dict:
    b = {"name": "entry-" + uuid.uuid4().hex[:6], "project": "ouh-liver", "class": "innovation",
         "image": "localhost/busybox:test", "command": ["/bin/busybox", "httpd", "-f", "-p", "8080"],
         "resources": {"gpus": 0, "cpus": 0.5, "memory_gb": 0.5}, "replicas": {"min": 1, "max": 1}, "port": 8080}
    b.update(over)
    r = admin.post("/api/v1/services", json=b)
    assert r.status_code == 201, r.text
    svc = r.json()
    with Session(engine) as s:
        s.add(ServiceReplica(job_id="r-" + uuid.uuid4().hex[:10], service_id=svc["id"], host="127.0.0.1",
                             port=replica_port, ready=True))
        s.commit()
    return svc


def _get(port: int, path: str, headers: dict | None = None, timeout: float = 30.0):
    """One request on a new connection: (status, body, the connection's local address)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read(), c.sock.getsockname(), c
    except BaseException:
        c.close()
        raise


def _server_pid(pids: list[int], client_addr) -> int | None:
    """The worker whose socket holds the server side of the connection from `client_addr`."""
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.raddr and (conn.raddr.ip, conn.raddr.port) == tuple(client_addr[:2]):
                return pid
    return None


def _wait_routed(port: int, url: str, headers: dict, timeout_s: float = 60.0) -> None:
    """Until a worker routes the new service (it reads the table at most every second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, body, _, c = _get(port, url, headers)
        c.close()
        if status == 200 or time.monotonic() > deadline:
            assert status == 200, body
            return
        time.sleep(0.2)


def _wait_routed_by_all(workers, url: str, headers: dict, timeout_s: float = 60.0) -> None:
    """Until every worker routes the new service: each reads the table on its own clock, so one
    worker's 200 says nothing of the other's (a test that then spread requests over both saw
    503 NO_READY_REPLICA from the one that had not read it yet)."""
    deadline = time.monotonic() + timeout_s
    routed: set[int] = set()
    while routed != set(workers.pids):
        status, body, addr, c = _get(workers.port, url, headers)
        try:
            if status == 200:
                pid = _server_pid(workers.pids, addr)
                if pid is not None:
                    routed.add(pid)
        finally:
            c.close()
        assert time.monotonic() < deadline, (routed, workers.pids, status, body)
        time.sleep(0.05)


def test_every_worker_proxies_to_the_replica(admin, engine, workers, replica, admin_token):
    svc = _service(admin, engine, replica)
    url = f"/svc/ouh-liver/{svc['name']}/predict?x=1"
    auth = {"Authorization": f"Bearer {admin_token}"}
    _wait_routed_by_all(workers, url, auth)
    served: dict[int, int] = {}
    for _ in range(40):  # new connections: the kernel spreads them over the workers
        status, body, addr, c = _get(workers.port, url, auth)
        try:
            assert status == 200 and body == b"ok /predict?x=1", (status, body)
            pid = _server_pid(workers.pids, addr)
            if pid is not None:
                served[pid] = served.get(pid, 0) + 1
        finally:
            c.close()
        if len(served) == WORKERS:
            break
    assert set(served) == set(workers.pids), served
    # the broker's own port serves the entry point too (same replica)
    assert admin.get(url).text == "ok /predict?x=1"


def test_tenancy_and_bad_input_hold_on_the_workers_port(admin, engine, workers, replica, admin_token):
    svc = _service(admin, engine, replica)
    url = f"/svc/ouh-liver/{svc['name']}/"
    _wait_routed_by_all(workers, url, {"Authorization": f"Bearer {admin_token}"})
    uid = "u-" + uuid.uuid4().hex[:8]
    assert admin.post("/api/v1/admin/users", json={"id": uid}).status_code == 201
    assert admin.post("/api/v1/projects/slb-cardio/members", json={"user": uid, "role": "member"}).status_code == 201
    tok = admin.post("/api/v1/admin/tokens", json={"name": uid, "user": uid}).json()["token"]
    cases = [  # (name, path, headers, status, code), each on several new connections (every worker)
        ("foreign user", url, {"Authorization": f"Bearer {tok}"}, 404, "SERVICE_NOT_FOUND"),
        ("no token", url, {}, 401, None),
        ("bad token", url, {"Authorization": "Bearer nope"}, 401, None),
        ("not a service path", "/api/v1/jobs", {"Authorization": f"Bearer {admin_token}"}, 404, "NOT_FOUND"),
        ("bad slug", "/svc/NOPE!/x/", {"Authorization": f"Bearer {admin_token}"}, 404, "SERVICE_NOT_FOUND"),
        ("no such service", "/svc/ouh-liver/no-such-svc/", {"Authorization": f"Bearer {admin_token}"}, 404,
         "SERVICE_NOT_FOUND"),
    ]
    for name, path, headers, status, code in cases:
        for _ in range(6):
            got, body, _, c = _get(workers.port, path, headers)
            c.close()
            assert got == status, (name, got, body)
            err = json.loads(body)["error"]
            assert err["code"] and (code is None or err["code"] == code), (name, err)


def test_rate_limits_are_shared_by_the_broker_and_every_worker(admin, engine, workers, replica, admin_token):
    svc = _service(admin, engine, replica, rate_limit={"per_caller_per_s": 0.01, "per_caller_burst": 5})
    url = f"/svc/ouh-liver/{svc['name']}/"
    auth = {"Authorization": f"Bearer {admin_token}"}
    codes = []
    for i in range(12):  # new connections (both workers) and the broker's own port, one caller
        if i % 3 == 2:
            codes.append(admin.get(url).status_code)
        else:
            status, _, _, c = _get(workers.port, url, auth)
            c.close()
            codes.append(status)
    # 5 allowed in all (the replica may not be routed yet on a worker: 503 is allowed too)
    assert sum(1 for s in codes if s != 429) == 5 and codes.count(429) == 7, codes


def _service_counts(admin, name: str) -> tuple[dict[str, float], float]:
    """(requests per status code, latency histogram count) of one service on /metrics."""
    codes, count = {}, 0.0
    for fam in text_string_to_metric_families(admin.get("/metrics").text):
        for s in fam.samples:
            if s.labels.get("service") != name:
                continue
            if s.name == "broker_service_requests_total":
                codes[s.labels["code"]] = codes.get(s.labels["code"], 0.0) + s.value
            elif s.name == "broker_service_request_duration_seconds_count":
                count += s.value
    return codes, count


def _wait_ok(admin, name: str, want: float, timeout_s: float = 30.0) -> tuple[dict, float]:
    """Until /metrics shows `want` answers 200 (the workers send their counts every second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        codes, count = _service_counts(admin, name)
        if codes.get("200") == want or time.monotonic() > deadline:
            return codes, count
        time.sleep(0.25)


def test_metrics_count_every_workers_requests_and_survive_a_worker_restart(admin, engine, workers, replica,
                                                                           admin_token):
    svc = _service(admin, engine, replica)
    url = f"/svc/ouh-liver/{svc['name']}/x"
    auth = {"Authorization": f"Bearer {admin_token}"}
    _wait_routed(workers.port, url, auth)  # one 200 (503s while a worker's table loads count too)
    ok, served = 1, set()
    for _ in range(200):  # new connections, until both workers served 200s (spread by the kernel)
        status, _, addr, c = _get(workers.port, url, auth)
        if status == 200:
            ok += 1
            served.add(_server_pid(workers.pids, addr))
        c.close()
        if ok >= 31 and served == set(workers.pids):
            break
    deadline = time.monotonic() + 30  # and one on the broker's own port (once its table has it)
    while admin.get(url).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    ok += 1
    assert served == set(workers.pids)
    codes, count = _wait_ok(admin, svc["name"], float(ok))
    assert codes.get("200") == ok, codes
    assert count >= ok, count  # every request's latency is in the histogram too
    before = count

    victim = workers.pids[0]
    old = set(workers.pids)
    os.kill(victim, signal.SIGKILL)  # by PID; the watcher starts it again
    deadline = time.monotonic() + 60
    while (len(workers.pids) < WORKERS or set(workers.pids) == old) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert victim not in workers.pids and len(workers.pids) == WORKERS
    codes, count = _service_counts(admin, svc["name"])
    assert codes.get("200") == ok and count >= before, (codes, count)  # nothing taken back
    for _ in range(10):
        _wait_routed(workers.port, url, auth)  # a 200 from either worker (the new one too)
    codes, count = _wait_ok(admin, svc["name"], float(ok + 10))
    assert codes.get("200") == ok + 10, codes


def test_stop_ends_every_worker_by_pid(settings, engine):
    w = EntryWorkers(settings.model_copy(update={"service_proxy_workers": 2}), port=_free_port())
    w.start()
    pids = w.pids
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    w.stop()
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    with pytest.raises(OSError):  # the port is free again: nothing listens
        socket.create_connection(("127.0.0.1", w.port), timeout=2).close()


def test_a_workers_requests_in_flight_reach_the_autoscaler_rows_and_the_brokers_gauge(admin, engine, workers,
                                                                                       replica, admin_token):
    """The leader's autoscaler counts a worker's load (`service_loads`, one row per broker
    process and service), and the broker's in-flight gauge shows it."""
    svc = _service(admin, engine, replica)
    base = f"/svc/ouh-liver/{svc['name']}"
    auth = {"Authorization": f"Bearer {admin_token}"}
    _wait_routed_by_all(workers, base + "/", auth)
    results: list[int] = []

    def slow() -> None:
        status, body, _, c = _get(workers.port, base + "/slow", auth)
        c.close()
        results.append(status if status == 200 else (status, body[:300]))
    threads = [threading.Thread(target=slow) for _ in range(4)]
    for th in threads:
        th.start()
    worker_pids = {str(p) for p in workers.pids}
    seen_rows, seen_gauge = 0.0, 0.0
    deadline = time.monotonic() + SLOW_S - 0.5
    while time.monotonic() < deadline and not (seen_rows > 0 and seen_gauge > 0):
        with Session(engine) as s:
            rows = s.exec(select(ServiceLoad).where(ServiceLoad.service_id == svc["id"])).all()
        seen_rows = max(seen_rows, sum(r.inflight for r in rows if r.broker_id.split(":")[1] in worker_pids))
        for fam in text_string_to_metric_families(admin.get("/metrics").text):
            for s_ in fam.samples:
                if s_.name == "broker_service_requests_in_flight" and s_.labels.get("service") == svc["name"]:
                    seen_gauge = max(seen_gauge, s_.value)
        time.sleep(0.2)
    for th in threads:
        th.join(30)
    assert results == [200] * 4, results
    assert seen_rows > 0, "no worker published its requests in flight to service_loads"
    assert seen_gauge > 0, "the broker's in-flight gauge never showed the workers' requests"


def test_an_ended_workers_counts_are_kept_and_its_gauges_dropped(settings):
    from broker.services.service_router import Sample, merge_samples

    w = EntryWorkers(settings.model_copy(update={"service_proxy_workers": 2}), port=_free_port())
    pids = [111, 222]  # stand-ins for the two workers' processes
    w._procs = [types.SimpleNamespace(pid=p) for p in pids]
    lab = (("code", "200"), ("project", "p"), ("service", "s"))
    gauge = Sample("broker_service_requests_in_flight", (("project", "p"), ("service", "s")), 3.0, False)
    write_samples(w.metrics_dir, 111, [Sample("broker_service_requests_total", lab, 5.0, True), gauge])
    write_samples(w.metrics_dir, 222, [Sample("broker_service_requests_total", lab, 2.0, True), gauge])
    total = merge_samples(w.samples())
    assert total[("broker_service_requests_total", lab)] == 7.0 and total[(gauge.name, gauge.labels)] == 6.0
    w._retire(111)  # ended: its count stays, its requests are no longer in flight
    w._procs[0] = types.SimpleNamespace(pid=333)  # its successor, counting from zero
    write_samples(w.metrics_dir, 333, [Sample("broker_service_requests_total", lab, 1.0, True)])
    total = merge_samples(w.samples())
    assert total[("broker_service_requests_total", lab)] == 8.0 and total[(gauge.name, gauge.labels)] == 3.0
    with open(os.path.join(w.metrics_dir, "222.json"), "wb") as f:
        f.write(b"[[not json")  # unreadable: that worker counts nothing this time, no error
    assert merge_samples(w.samples())[("broker_service_requests_total", lab)] == 6.0
    shutil.rmtree(w.metrics_dir)
