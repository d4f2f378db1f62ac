"""One node agent per Ray node, started as pinned Ray actors, pushing to a live broker.

Real Ray cluster (the session's three nodes), real broker API on loopback; the agents use
scripted fake GPUs (no NVML here) but the real push path, tokens bound to their node, and
the real ingestion endpoint.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn
from sqlmodel import Session, select

from broker.app import create_app
from broker.db import make_engine, migrate
from broker.settings import Settings
from broker.models import AgentState
from broker.services.bootstrap import issue_agent_token
from tests.integration.conftest import NAMESPACE, wait_for


@pytest.fixture
def broker_api(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    migrate(settings)
    engine = make_engine(settings)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings, engine=engine, start_background=False),
                                           host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    wait_for(lambda: server.started, timeout_s=20)
    yield f"http://127.0.0.1:{port}", engine
    server.should_exit = True
    t.join(timeout=10)
    engine.dispose()


def test_one_pinned_agent_per_ray_node_reports_for_its_node(ray_executor, broker_api):
    import ray

    from broker.adapters.ray.node_agents import actor_name, start_node_agents, stop_node_agents

    url, engine = broker_api
    nodes = [n for n in ray_executor.nodes() if n.alive]
    assert len(nodes) == 3
    started = start_node_agents(nodes, broker_url=url, token_for=lambda nid: issue_agent_token(engine, nid),
                                namespace=NAMESPACE,
                                extra_args=["--fake-gpus", "2", "--sample-interval", "0.5", "--push-interval", "1"])
    try:
        assert sorted(started) == sorted(n.id for n in nodes)
        # Starting again finds the running actors instead of adding a second agent per node.
        assert sorted(start_node_agents(nodes, broker_url=url, token_for=lambda nid: pytest.fail("new token"),
                                        namespace=NAMESPACE)) == sorted(started)

        def reported():
            with Session(engine) as s:
                rows = s.execute(select(AgentState)).scalars().all()
                return {r.node_id: r for r in rows if r.samples > 0} if len(rows) == 3 else None

        rows = wait_for(reported, timeout_s=60, interval_s=0.5)
        assert set(rows) == set(started)
        assert all(r.device_count == 2 and r.gpu_backend == "fake" for r in rows.values())
        # Each actor runs on the node it reports for.
        for n in nodes:
            h = ray.get_actor(actor_name(n.id), namespace=NAMESPACE)
            assert ray.get(h.ray_node_id.remote(), timeout=10) == n.labels["ray.io/node-id"]
            assert ray.get(h.alive.remote(), timeout=10)
    finally:
        stop_node_agents(started, namespace=NAMESPACE)
    for nid in started:
        wait_for(lambda nid=nid: _gone(actor_name(nid)), timeout_s=20)


def _gone(name: str) -> bool:
    import ray

    try:
        ray.get_actor(name, namespace=NAMESPACE)
        return False
    except ValueError:
        return True
