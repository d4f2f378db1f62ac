"""End-to-end fixtures: a real broker API served by uvicorn on a free loopback port.

`served` (module scope): a seeded SQLite broker (demo region, one innovation node with 4 GPUs,
one draining operation node with 8) without background tasks; yields (url, admin token, data dir).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from sqlmodel import Session

from broker.app import create_app
from broker.db import make_engine, migrate
from broker.models import Node
from broker.services.bootstrap import ensure_admin_token, seed_demo
from broker.settings import Settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data = tmp_path_factory.mktemp("dash")
    settings = Settings(data_dir=data)
    migrate(settings)
    engine = make_engine(settings)
    with Session(engine) as s:
        seed_demo(s)
        s.add(Node(id="inno-1", pool="innovation", gpu_model="A100", gpus=4, cpus=32, memory_gb=256))
        s.add(Node(id="op-1", pool="operation", gpu_model="H100", gpus=8, cpus=64, memory_gb=512,
                   state="draining", state_reason="Xid 79: GPU fell off the bus"))
        s.commit()
    token = Path(ensure_admin_token(settings, engine)).read_text().strip()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, engine=engine, start_background=False),
                                           host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", token, data
    server.should_exit = True
    t.join(timeout=10)
    engine.dispose()
