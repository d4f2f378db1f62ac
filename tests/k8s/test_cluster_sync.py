"""Cluster mode end to end inside one process: the broker (create_app, a real SQLite database,
the scheduling loop over the fake executor) wired to the real Kubernetes adapter, which talks
to the local server that answers like the Kubernetes API (tests/k8s/fake_api.py).

What a platform team would check: a cordon or NotReady in Kubernetes stops new work in the
broker with that reason and lifting it brings the node back; a broker drain puts the broker's
own taint on the node (never a cordon) and lifting it removes the taint; a job that waits for
capacity scales its worker group and its pending reason says so, a job over its own quota
scales nothing; node agents authenticate with their projected ServiceAccount token, bound to
their node."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from agents.agent import encode
from broker.adapters.fake import FakeExecutor
from broker.adapters.k8s import connect
from broker.adapters.k8s.nodes import BROKER_TAINT_KEY
from broker.app import create_app
from broker.db import make_engine, migrate
from broker.models import Node, QuotaRow
from broker.ports import HOST_LABEL, IMAGE_LABEL, SPENT_REASON, NodeObservation
from broker.services.bootstrap import ensure_admin_token, seed_demo
from broker.settings import Settings
from scheduler.model import Resources
from tests.broker.services.telemetry.builders import gpu, report
from tests.k8s.fake_api import FakeKube
from tests.k8s.kit import A100, group, node, pod, raycluster
from tests.k8s.test_api import _sa_token, review

T0 = dt.datetime(2026, 12, 4, 10, 2, tzinfo=dt.timezone.utc).timestamp()
INNO = {**A100, "compute-broker/pool": "innovation"}


def obs(name: str, ip: str) -> NodeObservation:
    return NodeObservation(id=name, hostname=name, address=ip, pool="innovation", gpu_model="A100",
                           capacity=Resources(gpus=4, cpus=32, memory_gb=256))


@pytest.fixture(scope="module")
def seeded_db(tmp_path_factory) -> Path:
    """A migrated, seeded SQLite file, copied for each test (migrations cost seconds)."""
    data = tmp_path_factory.mktemp("seed")
    settings = Settings(data_dir=data, seed_demo=False)
    migrate(settings)
    engine = make_engine(settings)
    with Session(engine) as s:
        seed_demo(s)
        s.commit()
    engine.dispose()
    return data / "broker.db"


@pytest.fixture
def world(tmp_path: Path, seeded_db: Path):
    fake = FakeKube()
    fake.raycluster = raycluster(group("innovation-a100", pool="innovation", replicas=2, max_r=6, gpus=4))
    for i, name in enumerate(("gpu-1", "gpu-2")):
        fake.add_node(node(name, INNO))
        fake.add_pod(pod(f"w-{name}", name, ip=f"10.0.0.{i + 5}"))
    yield from _world(fake, tmp_path, seeded_db, [obs("gpu-1", "10.0.0.5"), obs("gpu-2", "10.0.0.6")])


def _world(fake: FakeKube, tmp_path: Path, seeded_db: Path, observed, **settings_over):
    server = fake.serve()
    settings = Settings(data_dir=tmp_path, k8s_enabled=True, k8s_api_url=f"http://127.0.0.1:{server.server_address[1]}",
                        overview_max_age_s=0.0, seed_demo=False, **settings_over)
    shutil.copy(seeded_db, tmp_path / "broker.db")
    engine = make_engine(settings)
    kube = connect(settings, start=False)
    kube.node_informer.relist()
    kube.pod_informer.relist()
    executor = FakeExecutor(observed)
    from broker.adapters.k8s.executor import KubeRayExecutor

    app = create_app(settings, executor=KubeRayExecutor(executor, kube), start_background=False, engine=engine,
                     cluster=kube)
    token = Path(ensure_admin_token(settings, engine)).read_text().strip()
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        yield fake, kube, app.state.services, client, engine
    engine.dispose()
    server.shutdown()
    server.server_close()


def node_row(engine, nid: str) -> Node:
    with Session(engine) as s:
        return s.get(Node, nid)


def relist(fake, kube, name: str, n) -> None:
    fake.add_node(n)
    kube.node_informer.relist()


def test_kubernetes_cordon_and_not_ready_stop_new_work_with_the_reason(world):
    fake, kube, services, client, engine = world
    services.loop.sync_nodes()
    relist(fake, kube, "gpu-1", node("gpu-1", INNO, unschedulable=True))
    relist(fake, kube, "gpu-2", node("gpu-2", INNO, ready="False", ready_reason="KubeletNotReady"))
    services.cluster_sync.sync_states(kube.nodes(), T0)
    assert (node_row(engine, "gpu-1").state, node_row(engine, "gpu-1").state_reason) == ("cordoned", "kubernetes: cordoned")
    assert node_row(engine, "gpu-2").state == "unhealthy"
    assert node_row(engine, "gpu-2").state_reason.startswith("kubernetes: NotReady: Ready=False (KubeletNotReady")
    listed = {n["id"]: n for n in client.get("/api/v1/nodes").json()["items"]}
    assert listed["gpu-1"]["state"] == "cordoned" and listed["gpu-1"]["state_reason"] == "kubernetes: cordoned"
    relist(fake, kube, "gpu-1", node("gpu-1", INNO))
    services.cluster_sync.sync_states(kube.nodes(), T0)
    assert (node_row(engine, "gpu-1").state, node_row(engine, "gpu-1").state_reason) == ("ready", "")


def test_a_state_another_owner_set_is_left_alone(world):
    fake, kube, services, client, engine = world
    services.loop.sync_nodes()
    with Session(engine) as s:
        n = s.get(Node, "gpu-1")
        n.state, n.state_reason = "draining", "telemetry: GPU 2 reported Xid 79 (fell off the bus)"
        s.add(n)
        s.commit()
    services.cluster_sync.sync_states(kube.nodes(), T0)  # Kubernetes says ready: not ours to lift
    assert node_row(engine, "gpu-1").state == "draining"


def test_broker_drain_is_a_taint_and_lifting_it_removes_the_taint(world):
    fake, kube, services, client, engine = world
    services.loop.sync_nodes()
    fake.add_node(node("gpu-1", INNO, unschedulable=True))  # a human's cordon as well
    r = client.patch("/api/v1/nodes/gpu-1", json={"state": "draining", "reason": "fan"})
    assert r.status_code == 200, r.text
    kube.node_informer.relist()
    services.cluster_sync.sync_taints(kube.nodes())
    spec = fake.nodes["gpu-1"]["spec"]
    assert spec["taints"] == [{"key": BROKER_TAINT_KEY, "value": "admin-draining", "effect": "NoSchedule"}]
    assert spec["unschedulable"] is True  # the human's cordon, untouched
    client.patch("/api/v1/nodes/gpu-1", json={"state": "ready"})
    kube.node_informer.relist()
    services.cluster_sync.sync_taints(kube.nodes())
    assert "taints" not in fake.nodes["gpu-1"]["spec"] and fake.nodes["gpu-1"]["spec"]["unschedulable"] is True
    assert [r.content_type for r in fake.of("PATCH", "/api/v1/nodes")] == ["application/strategic-merge-patch+json"] * 2


def test_a_job_waiting_for_capacity_scales_its_worker_group_and_says_so(world):
    fake, kube, services, client, engine = world
    services.loop.clock = lambda: T0
    body = {"name": "big", "project": "ouh-liver", "class": "innovation", "image": "localhost/busybox:test",
            "command": ["/bin/busybox", "true"], "resources": {"gpus": 4, "cpus": 2, "memory_gb": 8}, "workers": 3,
            "max_runtime_s": 600}
    job = client.post("/api/v1/jobs", json=body).json()["id"]
    with Session(engine) as s:  # a project whose hard limit blocks it: never a reason to scale
        q = s.exec(select(QuotaRow).where(QuotaRow.owner_id == "slb-cardio", QuotaRow.pool == "innovation")).one()
        q.nominal, q.limit = 0, 0
        s.add(q)
        s.commit()
    blocked = client.post("/api/v1/jobs", json={**body, "name": "over-quota", "project": "slb-cardio"}).json()["id"]
    services.loop.tick()
    first = client.get(f"/api/v1/jobs/{job}").json()["pending_reason"]
    assert first["code"] == "NO_CAPACITY"
    assert client.get(f"/api/v1/jobs/{blocked}").json()["pending_reason"]["code"] == "QUOTA_LIMIT"
    services.cluster_sync.tick(T0)
    (patch,) = fake.of("PATCH", "/apis/ray.io")
    assert patch.body["spec"]["workerGroupSpecs"][0]["replicas"] == 3  # 3 nodes for 3 workers, 2 there, both idle: 1
    services.loop.tick()
    why = client.get(f"/api/v1/jobs/{job}").json()["pending_reason"]
    assert why["code"] == "NO_CAPACITY"
    assert why["message"].endswith("(scaling up: 1 node requested at 10:02 UTC)")
    assert "scaling" not in client.get(f"/api/v1/jobs/{blocked}").json()["pending_reason"]["message"]


def test_agents_push_telemetry_with_their_projected_token_for_their_node_only(world):
    fake, kube, services, client, engine = world
    services.loop.sync_nodes()
    tok = _sa_token("broker-agent-x7")
    fake.reviews[tok] = review("broker-agent-x7", "gpu-1")
    hdr = {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"}
    ok = client.post("/api/v1/telemetry", content=encode(report("gpu-1", 1, [gpu(0, T0)])), headers=hdr)
    assert ok.status_code == 200, ok.text
    other = client.post("/api/v1/telemetry", content=encode(report("gpu-2", 1, [gpu(0, T0)])), headers=hdr)
    assert other.status_code == 403, other.text
    assert client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {tok}"}).status_code == 403  # agents push only
    stranger = _sa_token("someone-else")
    fake.reviews[stranger] = review("someone-else", "gpu-2", user="system:serviceaccount:default:default")
    r = client.post("/api/v1/telemetry", content=encode(report("gpu-2", 1, [gpu(0, T0)])),
                    headers={**hdr, "Authorization": f"Bearer {stranger}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
    assert len(fake.of("POST", "/apis/authentication.k8s.io")) == 2  # one review per token: cached


def test_an_unreachable_api_server_is_a_503_to_retry_not_a_500(world):
    fake, kube, services, client, engine = world
    kube.api.configuration.host = "http://127.0.0.1:9"  # nothing listens there
    kube.api.rest_client.pool_manager.clear()
    r = client.post("/api/v1/telemetry", content=encode(report("gpu-1", 1, [gpu(0, T0)])),
                    headers={"Authorization": f"Bearer {_sa_token('agent-z')}", "Content-Type": "application/json"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "TOKEN_REVIEW_UNAVAILABLE"
    assert r.headers["Retry-After"] == "5"


TAINT_OF = [
    ("an admin's drain", dict(admin_state="draining"), "admin-draining"),
    ("an admin's cordon", dict(admin_state="cordoned"), "admin-cordoned"),
    ("a fatal GPU fault found by telemetry", dict(state="draining", state_reason="telemetry: Xid 79 on GPU 2"),
     "gpu-fault"),
    ("Kubernetes' own cordon is not echoed back", dict(state="cordoned", state_reason="kubernetes: cordoned"), None),
    ("a scale-down drain needs no taint", dict(state="draining", state_reason="kubernetes: scale-down: idle"), None),
    ("a lost node (the executor's)", dict(state="unhealthy", state_reason="executor: the node left"), None),
    ("ready", {}, None),
]


@pytest.mark.parametrize("name,fields,want", TAINT_OF, ids=[c[0] for c in TAINT_OF])
def test_which_broker_states_become_the_broker_taint(name, fields, want):
    from broker.services.cluster_sync import drain_taint

    assert drain_taint(Node(id="n", pool="innovation", **fields)) == want


def test_pools_a_job_may_scale_and_the_guarantee_floor():
    from broker.models import Job, Pool
    from broker.services.cluster_sync import guaranteed_gpus, job_pools

    pools = [Pool(name="operation", workload_class="operation", lend_to_innovation=True),
             Pool(name="innovation", workload_class="innovation"), Pool(name="op-b", workload_class="operation")]
    assert job_pools(Job(project_id="p", workload_class="innovation"), pools) == ("innovation", "operation")
    assert job_pools(Job(project_id="p", workload_class="operation"), pools) == ("operation", "op-b")
    assert job_pools(Job(project_id="p", workload_class="innovation", pool="innovation"), pools) == ("innovation",)
    rows = [QuotaRow(owner_kind="department", owner_id="ouh", pool="operation", resource="gpus", guaranteed=2),
            QuotaRow(owner_kind="department", owner_id="shs", pool="operation", resource="gpus", guaranteed=2),
            QuotaRow(owner_kind="project", owner_id="a", pool="operation", resource="gpus", guaranteed=6),
            QuotaRow(owner_kind="project", owner_id="a", pool="operation", resource="cpus", guaranteed=64)]
    assert guaranteed_gpus(rows) == {"operation": 6.0}  # departments' 4 or, larger, projects' 6


@pytest.fixture
def image_world(tmp_path: Path, seeded_db: Path):
    """One approved image (llm) with a worker group of 1-GPU pods on Kubernetes node gpu-1, and
    no podman anywhere (the manifests' broker): container jobs run only as pods of their image."""
    fake = FakeKube()
    g = group("img-llm", pool="innovation", replicas=1, min_r=1, max_r=4, gpus=1)
    g["rayStartParams"]["labels"] = "broker.io/pool=innovation,broker.io/image=llm"
    fake.raycluster = raycluster(g)
    fake.add_node(node("gpu-1", INNO))
    fake.add_pod(pod("llm-x", "gpu-1", group="img-llm", ip="10.0.0.7"))
    llm_x = NodeObservation(id="llm-x", hostname="llm-x", address="10.0.0.7", pool="innovation", gpu_model="A100",
                            capacity=Resources(gpus=1, cpus=8, memory_gb=64), labels={IMAGE_LABEL: "llm"})
    yield from _world(fake, tmp_path, seeded_db, [llm_x], k8s_images={"llm": "localhost/llm:1"},
                      container_runtime_available=False)


def test_an_image_pod_runs_one_job_and_is_replaced_by_a_fresh_one(image_world):
    fake, kube, services, client, engine = image_world
    services.loop.clock = lambda: T0
    services.loop.sync_nodes()
    assert node_row(engine, "llm-x").labels[HOST_LABEL] == "gpu-1"
    # a cordon of the Kubernetes node reaches its pods, and lifting it brings them back
    relist(fake, kube, "gpu-1", node("gpu-1", INNO, unschedulable=True))
    services.cluster_sync.sync_states(kube.nodes(), T0)
    assert node_row(engine, "llm-x").state == "cordoned"
    relist(fake, kube, "gpu-1", node("gpu-1", INNO))
    services.cluster_sync.sync_states(kube.nodes(), T0)
    assert node_row(engine, "llm-x").state == "ready"

    body = {"name": "infer", "project": "ouh-liver", "class": "innovation", "image": "localhost/llm:1",
            "command": ["python", "serve.py"], "resources": {"gpus": 1, "cpus": 2, "memory_gb": 8}, "max_runtime_s": 600}
    refused = client.post("/api/v1/jobs", json={**body, "image": "localhost/busybox:test"})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "IMAGE_NOT_APPROVED"
    first, second = (client.post("/api/v1/jobs", json=body).json()["id"] for _ in range(2))
    services.loop.tick()
    assert client.get(f"/api/v1/jobs/{first}").json()["status"] in ("STARTING", "RUNNING")
    assert node_row(engine, "llm-x").state_reason.startswith(SPENT_REASON)
    services.cluster_sync.tick(T0)  # the second job waits for a pod of its image: one more is asked for
    (up,) = fake.of("PATCH", "/apis/ray.io")
    assert up.body["spec"]["workerGroupSpecs"][0]["replicas"] == 2
    assert up.body["spec"]["workerGroupSpecs"][0]["scaleStrategy"]["workersToDelete"] == []

    services.executor.inner.finish(first, 1)
    services.loop.tick()
    assert client.get(f"/api/v1/jobs/{first}").json()["status"] == "SUCCEEDED"
    assert client.get(f"/api/v1/jobs/{second}").json()["status"] == "PENDING"  # never the spent pod
    fake.raycluster["spec"]["workerGroupSpecs"][0]["replicas"] = 2  # as KubeRay has it now
    services.cluster_sync.tick(T0 + 5)
    down = fake.of("PATCH", "/apis/ray.io")[-1].body["spec"]["workerGroupSpecs"][0]
    assert down["scaleStrategy"]["workersToDelete"] == ["llm-x"]  # the spent pod goes once idle
    # 2 replicas were llm-x and the fresh pod asked for above: llm-x goes, the fresh one (for the
    # second job) stays, no third is asked for
    assert down["replicas"] == 1
