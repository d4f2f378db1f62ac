"""A PostgreSQL outage, for real: the broker talks to the database through a TCP proxy that the
test cuts (every open connection closed, every new one closed at once) and restores.

While cut, every endpoint that needs the database answers 503 DATABASE_UNAVAILABLE with
Retry-After (never a 500 or a reset connection), /readyz says 503, and nothing is acknowledged;
once restored everything works again without a restart, and every job acknowledged before,
during (none) and after the outage is stored exactly once.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import Session

from agents.agent import encode
from broker.app import create_app
from broker.db import make_engine, migrate
from broker.models import Node
from broker.services.bootstrap import ensure_admin_token, seed_demo
from broker.settings import Settings
from tests.broker.conftest import NODES, PG_URL, job_body, pg_schema, schema_url
from tests.broker.services.telemetry.builders import agent_token, gpu, report

pytestmark = pytest.mark.postgres


class CuttableProxy:
    """A TCP proxy to PostgreSQL on 127.0.0.1 that a test can cut and restore."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.target, self.up, self._closed = target, True, False
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen(128)
        self.port = self._srv.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                c, _ = self._srv.accept()
            except OSError:
                return
            if not self.up:
                c.close()
                continue
            try:
                u = socket.create_connection(self.target, timeout=3)
                u.settimeout(None)
            except OSError:
                c.close()
                continue
            with self._lock:
                self._socks.update((c, u))
            threading.Thread(target=self._pump, args=(c, u), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                self._drop(s)

    def _drop(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def cut(self) -> None:
        self.up = False
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            self._drop(s)

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._srv.close()


@pytest.fixture(scope="module", params=[True, False], ids=["submit-fast-path", "submit-route"])
def outage(request, tmp_path_factory):
    with pg_schema() as schema:
        yield from _outage(request, tmp_path_factory, schema)


def _outage(request, tmp_path_factory, schema: str):
    proxy = CuttableProxy()
    direct = Settings(data_dir=tmp_path_factory.mktemp("data"), database_url=schema_url(schema))
    via_proxy = direct.model_copy(update={
        "database_url": schema_url(schema, PG_URL.replace(':5432', f':{proxy.port}')),
        "db_connect_timeout_s": 2, "db_pool_timeout_s": 2.0, "submit_fast_path": request.param})
    migrate(direct)
    eng = make_engine(direct)
    with Session(eng) as s:
        seed_demo(s)
        for n in NODES:
            s.add(Node(**n))
        s.commit()
    token = Path(ensure_admin_token(direct, eng)).read_text().strip()
    agent = agent_token(eng, "inno-1")
    app = create_app(via_proxy, start_background=False)
    try:
        with TestClient(app, headers={"Authorization": f"Bearer {token}"}, raise_server_exceptions=False) as client:
            yield client, proxy, eng, agent
    finally:
        proxy.close()
        eng.dispose()


def _requests(client, agent: str, job_a: str, job_b: str, seq: int) -> dict:
    """name -> a thunk sending one request that needs the database."""
    telemetry = encode(report("inno-1", seq, [gpu(0, time.time())]))
    return {
        "submit": lambda: client.post("/api/v1/jobs", json=job_body(name="during")),
        "submit with Idempotency-Key": lambda: client.post("/api/v1/jobs", json=job_body(name="during-key"),
                                                           headers={"Idempotency-Key": f"k-{uuid.uuid4().hex}"}),
        "list": lambda: client.get("/api/v1/jobs"),
        "get": lambda: client.get(f"/api/v1/jobs/{job_a}"),
        "events": lambda: client.get(f"/api/v1/jobs/{job_a}/events"),
        "cancel": lambda: client.post(f"/api/v1/jobs/{job_b}/cancel"),
        "overview": lambda: client.get("/api/v1/overview"),
        "metrics": lambda: client.get("/metrics"),
        "projects": lambda: client.get("/api/v1/projects"),
        "telemetry push": lambda: client.post("/api/v1/telemetry", content=telemetry,
                                              headers={"Authorization": f"Bearer {agent}",
                                                       "Content-Type": "application/json"}),
        "telemetry read": lambda: client.get(f"/api/v1/telemetry/jobs/{job_a}"),
    }


def _stored(eng, ids: list[str]) -> dict[str, int]:
    with Session(eng) as s:
        rows = s.execute(text("SELECT id, COUNT(*) FROM jobs WHERE id = ANY(:ids) GROUP BY id"), {"ids": ids}).all()
    return {i: n for i, n in rows}


def test_outage_gives_503_with_retry_after_and_recovers_without_loss(outage):
    client, proxy, eng, agent = outage
    acked = []
    for name in ("before-a", "before-b"):
        r = client.post("/api/v1/jobs", json=job_body(name=name))
        assert r.status_code == 201, r.text
        acked.append(r.json()["id"])
    job_a, job_b = acked
    assert client.post("/api/v1/telemetry", content=encode(report("inno-1", 1, [gpu(0, time.time())])),
                       headers={"Authorization": f"Bearer {agent}", "Content-Type": "application/json"}).status_code == 200

    proxy.cut()
    time.sleep(6)  # past the catalog and overview caches: every request below must reach the database
    failed = {}
    for name, send in _requests(client, agent, job_a, job_b, seq=2).items():
        r = send()
        code = r.json().get("error", {}).get("code") if r.headers.get("content-type", "").startswith("application/json") else None
        if (r.status_code, code) != (503, "DATABASE_UNAVAILABLE") or int(r.headers.get("Retry-After", "0")) < 1:
            failed[name] = (r.status_code, r.text[:200], r.headers.get("Retry-After"))
        elif r.status_code == 201:
            acked.append(r.json()["id"])
    assert failed == {}
    ready = client.get("/readyz")
    assert ready.status_code == 503, ready.text

    proxy.restore()
    deadline = time.time() + 20
    while client.get("/readyz").status_code != 200:
        assert time.time() < deadline, "the broker did not recover within 20 s of the database coming back"
        time.sleep(0.2)
    after = {}
    for name, send in _requests(client, agent, job_a, job_b, seq=3).items():
        for _ in range(3):  # the first request on a pool of dead connections may still see one
            r = send()
            if r.status_code < 500:
                break
            time.sleep(0.5)
        after[name] = r.status_code
        if name.startswith("submit") and r.status_code == 201:
            acked.append(r.json()["id"])
    assert {n: s for n, s in after.items() if not 200 <= s < 300} == {}
    assert _stored(eng, acked) == {i: 1 for i in acked}
