"""The service controller over the fake executor with real HTTP servers as replicas.

Each replica job the controller submits gets a real `http.server` on its host port (what the
runner would start), so probes, the proxy's balancing and its retries are real; the executor,
the clock and the scheduler ticks are driven by the test. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
import tracemalloc
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlmodel import Session, select

from broker.adapters.fake import FakeExecutor, node
from broker.models import Job, QuotaRow, Service
from broker.app import create_app
from broker.models import ServiceLoad
from broker.services.service_controller import ServiceController
from broker.services.service_load import FRESH_S, RemoteLoad


@pytest.fixture(scope="module")
def fake_executor():
    return FakeExecutor([node("inno-1"), node("inno-2"), node("op-1", pool="operation", gpus=8, gpu_model="H100")])


class Clock:
    def __init__(self) -> None:
        import time
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


class Replica:
    """A real HTTP server on a replica's port answering with its name (the runner's process)."""

    def __init__(self, port: int, name: str, healthy: bool = True) -> None:
        outer = self
        self.healthy = healthy

        self.release = threading.Event()  # /slow requests wait for it (requests held in flight)

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.startswith("/slow"):
                    outer.release.wait(20)
                code = 200 if outer.healthy else 500
                body = name.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # echoes the body and the headers the replica got
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) + b"|" + ",".join(sorted(k.lower() for k in self.headers)).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self):  # reads the body in pieces (either framing): its length and sha256
                h, n = hashlib.sha256(), 0
                if self.headers.get("Content-Length") is not None:
                    left = int(self.headers["Content-Length"])
                    while left:
                        data = self.rfile.read(min(65536, left))
                        h.update(data)
                        n, left = n + len(data), left - len(data)
                else:  # chunked
                    while (size := int(self.rfile.readline().strip(), 16)):
                        h.update(self.rfile.read(size))
                        self.rfile.readline()
                        n += size
                    self.rfile.readline()
                body = f"{n} {h.hexdigest()}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):  # no access log on the test's stderr
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", port), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kill(self) -> None:
        """Stop serving (idempotent: a test may have killed this replica already)."""
        if self.server is None:
            return
        self.server.shutdown()
        self.server.server_close()
        self.server = None


@pytest.fixture
def world(app, engine, client, fake_executor):
    clock = Clock()
    services = app.state.services
    ctl = ServiceController(engine, executor=fake_executor, router=services.service_router, clock=clock)
    servers: dict[str, Replica] = {}

    def step(serve: bool = True, healthy: bool = True) -> None:
        """One controller tick, one scheduling tick; serve every RUNNING replica's port."""
        ctl.tick()
        services.loop.tick()
        with Session(engine) as s:
            for j in s.exec(select(Job).where(Job.service_id.is_not(None), Job.status == "RUNNING")).all():
                if serve and j.id not in servers and j.cancel_requested_at is None:
                    servers[j.id] = Replica(j.port, f"{j.replica_index}:{j.service_revision}:{j.id}", healthy)
        ctl.tick()

    yield ctl, clock, servers, step
    with Session(engine) as s:  # the next test's controller must not see this test's services
        for svc in s.exec(select(Service)).all():
            client.delete(f"/api/v1/services/{svc.id}")
    for _ in range(3):
        ctl.tick()
        services.loop.tick()
    for r in servers.values():
        r.kill()
    ctl.close()


def _deploy(client, **over) -> dict:
    b = {"name": "svc-" + uuid.uuid4().hex[:6], "project": "ouh-liver", "image": "localhost/busybox:test",
         "command": ["/bin/busybox", "httpd", "-f"], "resources": {"gpus": 0, "cpus": 0.5, "memory_gb": 0.5},
         "replicas": {"min": 2, "max": 2}, "readiness": {"path": "/", "period_s": 1, "failure_threshold": 2},
         "restart": {"backoff_initial_s": 0, "backoff_max_s": 0, "progress_deadline_s": 30}}
    b.update(over)
    r = client.post("/api/v1/services", json=b)
    assert r.status_code == 201, r.text
    return r.json()


def _get(client, svc) -> dict:
    return client.get(f"/api/v1/services/{svc['id']}").json()


def _hits(client, svc, n: int = 20) -> Counter:
    got = Counter()
    for _ in range(n):
        r = client.get(f"/svc/{svc['project']}/{svc['name']}/x?y=1")
        assert r.status_code == 200, r.text
        got[r.text.split(":")[0]] += 1
    return got


def test_two_replicas_serve_and_requests_are_spread(client, world):
    ctl, clock, servers, step = world
    svc = _deploy(client)
    for _ in range(3):
        step()
        clock.advance(1.0)
    got = _get(client, svc)
    assert got["status"] == "READY" and got["replicas"]["ready"] == 2, got
    hits = _hits(client, svc)
    assert set(hits) == {"0", "1"} and min(hits.values()) >= 5, hits
    reps = client.get(f"/api/v1/services/{svc['id']}/replicas").json()["items"]
    assert all(r["health"] == "ready" and r["host"] == "127.0.0.1" for r in reps)
    # any body type reaches the replica; the broker's credentials do not
    r = client.post(f"/svc/ouh-liver/{svc['name']}/predict", content=b"\x00raw bytes", headers={
        "Content-Type": "application/octet-stream", "X-Service-Key": "k", "Cookie": "c=1"})
    assert r.status_code == 200 and r.content.startswith(b"\x00raw bytes|"), r.content
    seen = r.content.split(b"|", 1)[1].decode().split(",")
    assert "authorization" not in seen and "x-service-key" not in seen and "cookie" not in seen
    assert "x-forwarded-prefix" in seen and "content-type" in seen
    text = client.get("/metrics").text
    labels = f'project="ouh-liver",service="{svc["name"]}"'
    assert f'broker_service_requests_total{{code="200",{labels}}} 21.0' in text.replace(
        f'{{{labels},code="200"}}', f'{{code="200",{labels}}}'), [x for x in text.splitlines() if svc["name"] in x][:5]
    assert f"broker_service_request_duration_seconds_count{{{labels}}} 21.0" in text


@contextlib.contextmanager
def serving(app):
    """The app behind a real HTTP server (uvicorn in a thread): what a client of the entry point
    talks to, with the server's own flow control. Yields the port."""
    import uvicorn

    from broker.adapters.ray.local import free_port
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        t.join(10)


@pytest.fixture
def http_server(app):
    with serving(app) as port:
        yield port


def _upload(port: int, path: str, token: str, size: int, *, chunked: bool, declared: int | None = None) -> bytes:
    """PUT `size` bytes made on the fly (never all in memory); the raw answer."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {declared or size}"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: broker\r\nAuthorization: Bearer {token}\r\n{framing}\r\n"
                     f"Connection: close\r\n\r\n".encode())
        if declared is None:
            sent = 0
            while sent < size:
                n = min(65536, size - sent)
                piece = bytes([sent // 65536 % 251]) * n
                sock.sendall(b"%x\r\n" % n + piece + b"\r\n" if chunked else piece)
                sent += n
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        out = b""
        while (data := sock.recv(65536)):
            out += data
    return out


BIG = 20 * 1024 * 1024


def _digest(size: int) -> str:
    h = hashlib.sha256()
    for sent in range(0, size, 65536):
        h.update(bytes([sent // 65536 % 251]) * min(65536, size - sent))
    return h.hexdigest()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_large_body_streams_through_the_entry_point_in_bounded_memory(client, world, http_server, admin_token,
                                                                         chunked):
    ctl, clock, servers, step = world
    svc = _deploy(client)
    for _ in range(3):
        step()
        clock.advance(1.0)
    url = f"/svc/ouh-liver/{svc['name']}/upload"
    tracemalloc.start()
    try:
        out = _upload(http_server, url, admin_token, BIG, chunked=chunked)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.startswith(b"HTTP/1.1 200"), out[:300]
    assert out.split(b"\r\n\r\n", 1)[1] == f"{BIG} {_digest(BIG)}".encode()
    # the whole process (server, proxy, replica, client) held at most a few chunks of the 20 MB
    assert peak < 6 * 1024 * 1024, peak
    # a body the service limit refuses is refused before anything is read or sent
    out = _upload(http_server, url, admin_token, 0, chunked=False, declared=2 * 1024 ** 3)
    assert out.startswith(b"HTTP/1.1 413") and b"PAYLOAD_TOO_LARGE" in out, out[:300]


def test_a_dead_replica_leaves_rotation_and_is_replaced(client, world, fake_executor, engine):
    ctl, clock, servers, step = world
    svc = _deploy(client)
    for _ in range(3):
        step()
        clock.advance(1.0)
    with Session(engine) as s:
        victim = s.exec(select(Job.id).where(Job.service_id == svc["id"])).first()
    servers[victim].kill()
    # the process is gone but the executor has not noticed: readiness fails twice -> out
    for _ in range(2):
        clock.advance(1.0)
        ctl.tick()
    assert victim not in {e.job_id for e in ctl.router.endpoints(svc["id"])}  # out within 2 probe periods
    assert all(r.status_code == 200 for r in (client.get(f"/svc/ouh-liver/{svc['name']}/") for _ in range(10)))
    with Session(engine) as s:
        job = s.get(Job, victim)
    fake_executor.finish(victim, job.attempt, exit_code=137)
    for _ in range(3):
        step()
        clock.advance(1.0)
    got = _get(client, svc)
    assert got["replicas"]["ready"] == 2, got
    kinds = [e["kind"] for e in client.get(f"/api/v1/services/{svc['id']}/events").json()["items"]]
    assert "replica_not_ready" in kinds and "replica_failed" in kinds


def test_a_rollout_replaces_replicas_one_at_a_time(client, world):
    ctl, clock, servers, step = world
    svc = _deploy(client)
    for _ in range(3):
        step()
        clock.advance(1.0)
    assert client.patch(f"/api/v1/services/{svc['id']}", json={"env": {"V": "2"}}).status_code == 200
    most = 0
    for _ in range(12):
        step()
        clock.advance(1.0)
        r = client.get(f"/api/v1/services/{svc['id']}/replicas").json()["items"]
        most = max(most, len(r))
        assert all(x.status_code == 200 for x in (client.get(f"/svc/ouh-liver/{svc['name']}/") for _ in range(5)))
    got = _get(client, svc)
    assert got["stable_revision"] == 2 and got["status"] == "READY", got
    reps = client.get(f"/api/v1/services/{svc['id']}/replicas").json()["items"]
    assert sorted(r["revision"] for r in reps) == [2, 2] and most <= 3  # surge of one at most


def test_a_revision_that_never_gets_ready_is_rolled_back(client, world):
    ctl, clock, servers, step = world
    svc = _deploy(client)
    for _ in range(3):
        step()
        clock.advance(1.0)
    client.patch(f"/api/v1/services/{svc['id']}", json={"command": ["/bin/busybox", "false"]})
    for _ in range(4):
        step(serve=False)  # the new revision's replicas never listen
        clock.advance(12.0)
        assert all(x.status_code == 200 for x in (client.get(f"/svc/ouh-liver/{svc['name']}/") for _ in range(3)))
    got = _get(client, svc)
    assert got["revision"] == 1 and "rolled back" in got["message"], got
    revs = client.get(f"/api/v1/services/{svc['id']}/revisions").json()["items"]
    assert revs[0]["number"] == 2 and revs[0]["status"] == "rolled_back"


def test_autoscaling_follows_requests_in_flight_and_cools_down(client, world, app):
    ctl, clock, servers, step = world
    svc = _deploy(client, replicas={"min": 1, "max": 3}, autoscale={"target_inflight": 2, "cooldown_s": 30})
    for _ in range(3):
        step()
        clock.advance(1.0)
    rt = app.state.services.service_router
    for _ in range(5):
        rt.begin(svc["id"], "load")  # five requests in flight
    step()
    assert _get(client, svc)["replicas"]["desired"] == 3
    for _ in range(5):
        rt.end(svc["id"], "load")
    clock.advance(5.0)
    step()
    assert _get(client, svc)["replicas"]["desired"] == 3  # within the cool-down
    clock.advance(40.0)
    step()
    clock.advance(1.0)
    step()
    assert _get(client, svc)["replicas"]["desired"] == 1
    with Session(app.state.services.engine) as s:
        assert s.get(Service, svc["id"]).scaled_at is not None


def test_an_operation_services_extra_replicas_are_preempted_its_min_ones_never(client, world, engine):
    """ouh-radiology (operation guarantee 2 GPUs) runs 4 replicas of 2 GPUs on the 8-GPU operation
    node, 3 of them borrowing; shs-ops-triage then claims its nominal (2 GPUs, made lendable
    here: guaranteed capacity is never lent): one extra replica is preempted, the min replica
    is not, and the service says why it lacks one."""
    ctl, clock, servers, step = world
    with Session(engine) as s:
        for q in s.exec(select(QuotaRow).where(QuotaRow.owner_id.in_(["shs", "shs-ops-triage"]),
                                               QuotaRow.pool == "operation")).all():
            q.guaranteed = 0.0
            s.add(q)
        s.commit()
    svc = _deploy(client, project="ouh-radiology", resources={"gpus": 2, "cpus": 1, "memory_gb": 1},
                  replicas={"min": 1, "max": 4}, **{"class": "operation"})
    client.post(f"/api/v1/services/{svc['id']}/scale", json={"replicas": 4})
    for _ in range(4):
        step()
        clock.advance(1.0)
    with Session(engine) as s:
        reps = s.exec(select(Job).where(Job.service_id == svc["id"])).all()
        assert sorted(j.status for j in reps) == ["RUNNING"] * 4, [(j.status, j.pending_message) for j in reps]
        protected = {j.id for j in reps if not j.preemptible}
    assert len(protected) == 1
    # pinned to the operation pool: unpinned, an operation job finding its pool full of operation
    # work starts on idle innovation capacity instead (Policy.operation_overflow), preempting nothing
    job = client.post("/api/v1/jobs", json={"name": "triage", "project": "shs-ops-triage", "class": "operation",
                                            "pool": "operation",
                                            "image": "localhost/busybox:test", "command": ["/bin/busybox", "true"],
                                            "resources": {"gpus": 2, "cpus": 1, "memory_gb": 1}})
    assert job.status_code == 201, job.text
    step()
    with Session(engine) as s:
        reps = s.exec(select(Job).where(Job.service_id == svc["id"])).all()
        hit = [j for j in reps if j.attempt > 1 or j.status in ("PREEMPTED", "PENDING")]
        assert len(hit) == 1 and hit[0].id not in protected, [(j.id, j.status, j.preemptible) for j in reps]
        assert all(j.status == "RUNNING" for j in reps if j.id in protected)
    for _ in range(3):
        step()
        clock.advance(1.0)
    got = _get(client, svc)
    assert got["replicas"]["ready"] == 3 and got["pending_reason"] is not None, got
    why = got["pending_reason"]
    assert why["details"]["replica"] is not None and why["details"]["job_id"] and "queue_position" in why["details"]


def test_an_innovation_service_scales_to_zero_when_the_next_period_is_not_covered(client, world, engine):
    ctl, clock, servers, step = world
    from broker.models import Project

    svc = _deploy(client, project="ouh-liver", resources={"gpus": 1, "cpus": 0.5, "memory_gb": 0.5},
                  replicas={"min": 1, "max": 1})
    for _ in range(3):
        step()
        clock.advance(1.0)
    assert _get(client, svc)["replicas"]["ready"] == 1
    with Session(engine) as s:
        p = s.get(Project, "ouh-liver")
        p.budget_gpu_hours = 0.5  # less than one more hour of one GPU
        s.add(p)
        s.commit()
    ctl._budget.clear()
    try:
        for _ in range(3):
            step()
            clock.advance(1.0)
        got = _get(client, svc)
        assert got["replicas"]["running"] == 0 and got["pending_reason"]["code"] == "BUDGET_EXHAUSTED", got
        assert "0.5" in got["pending_reason"]["message"]
        assert got["pending_reason"]["details"]["budget_gpu_hours"] == 0.5
        kinds = [e["kind"] for e in client.get(f"/api/v1/services/{svc['id']}/events").json()["items"]]
        assert "scaled_to_zero" in kinds
    finally:
        with Session(engine) as s:
            p = s.get(Project, "ouh-liver")
            p.budget_gpu_hours = None
            s.add(p)
            s.commit()


def test_a_rollout_without_room_for_a_surge_goes_one_down_one_up(client, world, engine):
    """svs-pathology may use at most 2 GPUs (limit): two 1-GPU replicas fill it, so the new
    revision's surge replica waits on quota; after SURGE_PENDING_S one old replica stops and the
    rollout goes on one down, one up, to the end."""
    ctl, clock, servers, step = world
    with Session(engine) as s:
        # no borrowing of the operation pool (lent to innovation) either: the surge must wait
        s.add(QuotaRow(owner_kind="project", owner_id="svs-pathology", pool="operation", gpu_model="",
                       resource="gpus", guaranteed=0, nominal=0, limit=0))
        q = s.exec(select(QuotaRow).where(QuotaRow.owner_id == "svs-pathology", QuotaRow.pool == "innovation",
                                          QuotaRow.resource == "gpus")).one()
        q.limit = 2.0
        s.add(q)
        s.commit()
    svc = _deploy(client, project="svs-pathology", resources={"gpus": 1, "cpus": 0.5, "memory_gb": 0.5})
    for _ in range(3):
        step()
        clock.advance(1.0)
    assert _get(client, svc)["replicas"]["ready"] == 2
    client.patch(f"/api/v1/services/{svc['id']}", json={"env": {"V": "2"}})
    step()
    with Session(engine) as s:
        surge = [j for j in s.exec(select(Job).where(Job.service_id == svc["id"], Job.service_revision == 2)).all()]
    assert len(surge) == 1 and surge[0].status == "PENDING" and surge[0].pending_code == "QUOTA_LIMIT"
    assert _get(client, svc)["pending_reason"]["code"] == "QUOTA_LIMIT"
    for _ in range(20):
        clock.advance(3.0)
        step()
        assert all(x.status_code == 200 for x in (client.get(f"/svc/svs-pathology/{svc['name']}/") for _ in range(3)))
    got = _get(client, svc)
    reps = client.get(f"/api/v1/services/{svc['id']}/replicas").json()["items"]
    assert got["stable_revision"] == 2 and sorted(r["revision"] for r in reps) == [2, 2], (got, reps)


def _events(client, svc) -> list[dict]:
    return client.get(f"/api/v1/services/{svc['id']}/events").json()["items"]


def test_the_autoscaler_counts_the_load_on_every_broker(client, world, app, engine, settings, fake_executor,
                                                         admin_token):
    """Two brokers on one database: this app (the leader: its controller autoscales) and a second
    app instance whose entry point holds the requests. The second publishes its in-flight
    count; the leader scales on the sum, and ignores a broker that stopped publishing."""
    if engine.dialect.name == "sqlite":
        pytest.skip("several brokers share only a PostgreSQL database")
    ctl, clock, servers, step = world
    leader = app.state.services
    ctl.remote_load = RemoteLoad(engine, leader.broker_id)
    svc = _deploy(client, replicas={"min": 1, "max": 4}, autoscale={"target_inflight": 2, "cooldown_s": 30})
    for _ in range(3):
        step()
        clock.advance(1.0)
    assert _get(client, svc)["replicas"]["ready"] == 1
    with Session(engine) as s:  # a broker that died with 100 requests in flight, FRESH_S + 1 s ago
        s.add(ServiceLoad(broker_id="dead-broker", service_id=svc["id"], inflight=100.0,
                          updated_at=clock() - FRESH_S - 1))
        s.commit()
    step()
    assert _get(client, svc)["replicas"]["desired"] == 1  # a stale row never counts

    other_app = create_app(settings, executor=fake_executor, start_background=False, engine=engine)
    other = other_app.state.services
    assert other.broker_id != leader.broker_id and other.service_load is not None
    other.service_load.clock = clock
    url = f"/svc/ouh-liver/{svc['name']}/slow"
    with serving(other_app) as port:
        import httpx

        def call():
            return httpx.get(f"http://127.0.0.1:{port}{url}", headers={"Authorization": f"Bearer {admin_token}"},
                             timeout=30).status_code

        with ThreadPoolExecutor(6) as pool:
            calls = [pool.submit(call) for _ in range(6)]
            deadline = time.monotonic() + 15
            while other.service_router.service_inflight(svc["id"]) < 6 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert other.service_router.service_inflight(svc["id"]) == 6
            assert leader.service_router.service_inflight(svc["id"]) == 0  # none on the leader's proxy
            assert other.service_load.tick()  # the other broker publishes its 6
            step()
            assert _get(client, svc)["replicas"]["desired"] == 3  # ceil(6 / 2)
            scaled = [e for e in _events(client, svc) if e["kind"] == "autoscaled"]
            assert scaled and "6 requests in flight" in scaled[-1]["message"], scaled
            for r in servers.values():
                r.release.set()
            assert [c.result() for c in calls] == [200] * 6
        clock.advance(1.0)
        assert other.service_load.tick()  # back to none: its row goes
    with Session(engine) as s:
        rows = s.exec(select(ServiceLoad).where(ServiceLoad.service_id == svc["id"])).all()
        assert {r.broker_id for r in rows} == {"dead-broker"}
