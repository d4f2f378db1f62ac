"""A real Prometheus scrapes two real brokers (uvicorn, one database, one of them the leader) and
a node agent's exporter; every dashboard query and alert expression then runs against it.

What it proves that the unit tests cannot: /metrics is scrapeable as deployed (bearer token,
text format), each broker is its own `instance`, the leader-only totals come from exactly one
of them (so `sum()` counts them once), and no dashboard query is rejected by Prometheus.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import uvicorn
import yaml

from agents.exporter import DcgmExporter
from agents.fake import FakeReader
from broker.app import create_app
from broker.db import make_engine, migrate
from broker.services.bootstrap import ensure_admin_token
from broker.settings import Settings
from tests.broker.test_monitoring_names import dashboard_exprs, rule_exprs

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian: apt-get install prometheus)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout_s: float = 30.0, interval_s: float = 0.2):
    end = time.monotonic() + timeout_s
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(interval_s)


@pytest.fixture(scope="module")
def brokers(tmp_path_factory):
    """Two brokers on one SQLite database; the first leads. Yields (ports, token)."""
    data = tmp_path_factory.mktemp("data")
    settings = Settings(data_dir=data)
    migrate(settings)
    engine = make_engine(settings)
    token = Path(ensure_admin_token(settings, engine)).read_text().strip()
    servers, threads, ports = [], [], []
    for _ in range(2):
        port = free_port()
        app = create_app(settings, engine=engine, start_background=False)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        t = threading.Thread(target=server.run, daemon=True)
        t.start()
        wait_for(lambda: server.started, 20)
        servers.append(server)
        threads.append(t)
        ports.append(port)
        if len(servers) == 1:
            app.state.services.leader.start()
            leader = app.state.services.leader
    yield ports, token
    leader.stop()
    for s, t in zip(servers, threads):
        s.should_exit = True
        t.join(timeout=10)
    engine.dispose()


@pytest.fixture(scope="module")
def agent():
    exp = DcgmExporter("node-1", "550.54.15")
    reader = FakeReader(2, node_seed="node-1")
    reader.init()
    exp.update(reader.read(time.time()))
    port = free_port()
    server = exp.serve(port, "127.0.0.1")
    yield port
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def prometheus(brokers, agent, tmp_path_factory):
    ports, token = brokers
    d = tmp_path_factory.mktemp("prom")
    (d / "token").write_text(token)
    (d / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "compute-broker", "authorization": {"credentials_file": str(d / "token")},
             "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}]},
            {"job_name": "gpu-agent", "static_configs": [{"targets": [f"127.0.0.1:{agent}"]}]},
        ]}))
    port = free_port()
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=open(d / "prometheus.log", "w"), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(url) == 3, 60, 0.5)  # every target scraped successfully
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def query(url: str, expr: str) -> dict:
    with urllib.request.urlopen(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}), timeout=10) as r:
        return json.loads(r.read())


def _up(url: str) -> int:
    try:
        res = query(url, "up == 1")["data"]["result"]
    except OSError:
        return 0
    return len(res)


def test_each_broker_is_its_own_instance_and_totals_come_from_the_leader(prometheus):
    def counted():  # each broker counts the scrapes it served (from its second scrape on)
        got = {r["metric"]["instance"] for r in query(
            prometheus, 'broker_http_requests_total{route="/metrics", code="200"}')["data"]["result"]}
        return got if len(got) == 2 else None

    assert len(wait_for(counted)) == 2
    leaders = query(prometheus, "broker_leader == 1")["data"]["result"]
    assert len(leaders) == 1
    totals = query(prometheus, "count by (instance) (broker_jobs_submitted_total)")["data"]["result"]
    assert [r["metric"]["instance"] for r in totals] == [leaders[0]["metric"]["instance"]]


def test_every_dashboard_query_and_alert_runs(prometheus):
    exprs = [e.replace("$__rate_interval", "1m").replace("$pool", ".*") for e in dashboard_exprs()
             if not e.startswith("label_values(")] + rule_exprs()
    for e in exprs:
        r = query(prometheus, e)
        assert r["status"] == "success", (e, r)
    # the agents' names and the broker's reach the same Prometheus
    assert query(prometheus, "avg by (Hostname) (DCGM_FI_DEV_GPU_UTIL)")["data"]["result"]
    assert query(prometheus, "max by (pool) (broker_pool_gpus)")["status"] == "success"
