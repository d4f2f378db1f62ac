"""What a newcomer's first `broker up` decides: demo quotas in proportion to the machine, the
local nodes' GPU split, and container jobs refused up front on a machine without podman.

The demo quotas run through the real submit path and scheduling loop (SQLite, the fake executor
standing in for Ray); `broker up` itself is exercised in tests/e2e/test_broker_up*.py.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from broker.adapters.fake import FakeExecutor, node
from broker.app import create_app
from broker.cli.up import split_gpus
from broker.db import make_engine, migrate
from broker.models import Node
from broker.services.bootstrap import QuotaRow
from broker.services.bootstrap import demo_ratios, ensure_admin_token, seed_demo
from broker.services.scheduling import SchedulingLoop
from broker.settings import Settings
from tests.broker.conftest import job_body

# one machine as `broker up` sees it: two local nodes, one per pool, 4 GPUs, 8 CPUs and 64 GiB each
NODES = [dict(id=f"{p}-0", hostname=f"{p}-0", pool=p, gpu_model="", gpus=4, cpus=8, memory_gb=64)
         for p in ("innovation", "operation")]


@pytest.mark.parametrize("count,nodes,want", [
    (0, 2, None), (4, 1, None), (4, 2, ["0,1", "2,3"]), (8, 2, ["0,1,2,3", "4,5,6,7"]),
    (3, 2, ["0,1", "2"]), (1, 2, ["0", ""]), (5, 3, ["0,1", "2,3", "4"])])
def test_the_machines_gpus_are_split_between_the_local_nodes(count, nodes, want):
    assert split_gpus(count, nodes) == want


def test_demo_ratios_follow_the_machine():
    assert demo_ratios(8, 16, 128) == (2.0, 16.0)
    assert demo_ratios(0, 2, 8) == (2.0, 8.0)  # no GPU: one GPU's worth, the same proportions


def _world(tmp_path, *, cpus_per_gpu: float, memory_gb_per_gpu: float, **settings_over):
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'b.db'}", **settings_over)
    migrate(settings)
    engine = make_engine(settings)
    with Session(engine) as s:
        seed_demo(s, process_runtime=True, cpus_per_gpu=cpus_per_gpu, memory_gb_per_gpu=memory_gb_per_gpu)
        for n in NODES:
            s.add(Node(**n))
        s.commit()
    token = open(ensure_admin_token(settings, engine)).read().strip()
    executor = FakeExecutor([node(n["id"], pool=n["pool"], gpus=n["gpus"], cpus=n["cpus"], memory_gb=n["memory_gb"],
                                  gpu_model=n["gpu_model"]) for n in NODES])
    app = create_app(settings, executor=executor, start_background=False, engine=engine)
    return settings, engine, executor, app, token


def test_demo_quotas_give_cpu_and_memory_in_proportion_to_gpus(tmp_path):
    _, engine, _, _, _ = _world(tmp_path, cpus_per_gpu=2.0, memory_gb_per_gpu=16.0)
    with Session(engine) as s:
        rows = {(q.owner_id, q.pool, q.resource): q for q in s.exec(select(QuotaRow)).all()}
    liver = [rows[("ouh-liver", "innovation", r)].nominal for r in ("gpus", "cpus", "memory_gb")]
    assert liver == [2, 4, 32]
    ops = rows[("shs-ops-triage", "operation", "cpus")]
    assert (ops.guaranteed, ops.nominal) == (4, 4)  # operation guarantees cover CPU too


@pytest.mark.parametrize("cpus,borrowing", [(2, False), (4, False), (6, True)])
def test_a_job_within_its_share_per_gpu_is_no_borrower(tmp_path, cpus, borrowing):
    """The first-run complaint: with CPU nominal 0 every job borrowed CPU, so a 1-GPU job within
    its GPU quota was a preemption victim "above its quota". With the machine's proportions
    (ouh-liver: 2 GPUs, 4 CPUs) a 1-GPU job borrows nothing up to the project's CPU nominal, and
    only a job that asks for more CPU than that borrows (and is told so)."""
    settings, engine, executor, app, token = _world(tmp_path, cpus_per_gpu=2.0, memory_gb_per_gpu=16.0)
    loop = SchedulingLoop(settings, engine, executor)
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as c:
        r = c.post("/api/v1/jobs", json=job_body(project="ouh-liver", gpus=1, cpus=cpus, memory_gb=16,
                                                 pool="innovation"))
        assert r.status_code == 201, r.text
        loop.tick()
        job = c.get(f"/api/v1/jobs/{r.json()['id']}").json()
    assert job["status"] in ("STARTING", "RUNNING"), job
    assert job["borrowing"] is borrowing, job


def test_container_jobs_are_refused_where_no_node_has_a_container_runtime(tmp_path):
    _, _, _, app, token = _world(tmp_path, cpus_per_gpu=2.0, memory_gb_per_gpu=16.0,
                                 container_runtime_available=False, allow_process_runtime=True)
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as c:
        r = c.post("/api/v1/jobs", json=job_body())
        err = r.json()["error"]
        assert r.status_code == 422 and err["code"] == "CONTAINER_RUNTIME_UNAVAILABLE", r.text
        assert "podman" in err["message"]
        assert c.get("/api/v1/jobs").json()["items"] == []  # nothing stored
        ok = c.post("/api/v1/jobs", json=job_body(runtime="process", image="", command=["true"], env={}))
        assert ok.status_code == 201, ok.text
        nodes = c.get("/api/v1/nodes").json()["items"]
        assert nodes and all(n["runtimes"] == ["process"] for n in nodes), nodes


@pytest.mark.parametrize("podman,ray_address,available", [
    (None, None, False), ("/usr/bin/podman", None, True), (None, "10.0.0.5:6379", True)])
def test_broker_up_marks_the_local_nodes_process_only_without_podman(monkeypatch, podman, ray_address, available):
    from broker.cli import up

    monkeypatch.setattr(up.shutil, "which", lambda name: podman if name == "podman" else None)
    overrides: dict = {}
    note = up._container_runtime(overrides, ray_address)
    assert overrides.get("container_runtime_available", True) is available
    assert ("podman was not found" in note) is (not available)


def test_nodes_list_says_which_nodes_run_process_jobs_only():
    from broker.cli.nodes import nodes_table

    base = dict(id="innovation-0", pool="innovation", gpu_model="", state="ready", gpus=2, cpus=1, memory_gb=8)
    assert "process jobs only" in nodes_table([{**base, "runtimes": ["process"]}])
    assert "process jobs only" not in nodes_table([{**base, "runtimes": ["container", "process"]}])
