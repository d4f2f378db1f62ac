"""Tenant images on KubeRay, the broker's side: pods dedicated to one approved image.

A worker group per approved image (`k8s_images`) gives pods whose Ray node carries
`broker.io/image=<key>`. Through the real submit path and scheduling loop (the fake executor
stands in for Ray; SQLite and PostgreSQL): a job of an approved image is accepted where the nodes
have no podman, runs only in a pod of its image, one job per pod, and a pod never takes a second
job after its first (it is drained as spent); other images are refused with a code; general work
never lands in a pod. The pod side (the runner's handoff to the tenant container) is tested in
tests/integration/test_pod_handoff.py, the scaler's replacement of spent pods in tests/k8s.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from broker.adapters.fake import FakeExecutor, node
from broker.app import create_app
from broker.db import make_engine, migrate
from broker.models import Job, Node, Placement
from broker.ports import HOST_LABEL, IMAGE_LABEL, SPENT_REASON
from broker.services.bootstrap import ensure_admin_token, seed_demo
from broker.services.scheduling import SchedulingLoop
from broker.settings import Settings
from tests.broker.conftest import job_body, pg_schema, schema_url

LLM = "localhost/llm:1"


def pod(id: str, image: str = "llm", gpus: int = 2):
    n = node(id, pool="innovation", gpus=gpus, cpus=16, memory_gb=64, gpu_model="")
    return replace(n, labels={**n.labels, IMAGE_LABEL: image, HOST_LABEL: "k8s-gpu-1"})


GENERAL = node("gen-0", pool="innovation", gpus=4, cpus=16, memory_gb=64, gpu_model="")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request, tmp_path):
    if request.param == "sqlite":
        yield from _world(f"sqlite:///{tmp_path / 'b.db'}", tmp_path)
    else:
        with pg_schema() as schema:
            yield from _world(schema_url(schema), tmp_path)


def _world(db_url: str, tmp_path):
    settings = Settings(data_dir=tmp_path, database_url=db_url, k8s_images={"llm": LLM, "seg": "localhost/seg:2"},
                        container_runtime_available=False, allow_process_runtime=True, overview_max_age_s=0.0)
    migrate(settings)
    engine = make_engine(settings)
    with Session(engine) as s:
        seed_demo(s, process_runtime=True)
        s.commit()
    executor = FakeExecutor([GENERAL, pod("llm-a"), pod("llm-b"), pod("seg-a", "seg")])
    app = create_app(settings, executor=executor, start_background=False, engine=engine)
    loop = SchedulingLoop(settings, engine, executor)
    token = Path(ensure_admin_token(settings, engine)).read_text().strip()
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as c:
        yield c, loop, executor, engine
    engine.dispose()


def _submit(c, **over) -> str:
    r = c.post("/api/v1/jobs", json=job_body(**over))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _where(engine, jid: str) -> list[str]:
    with Session(engine) as s:
        return [p.node_id for p in s.exec(select(Placement).where(Placement.job_id == jid)).all()]


def _node(engine, nid: str) -> Node:
    with Session(engine) as s:
        return s.get(Node, nid)


def test_an_image_without_a_worker_group_is_refused_and_nothing_is_stored(world):
    c, _, _, _ = world
    r = c.post("/api/v1/jobs", json=job_body(image="localhost/busybox:test"))
    err = r.json()["error"]
    assert r.status_code == 422 and err["code"] == "IMAGE_NOT_APPROVED", r.text
    assert err["details"]["approved_images"] == sorted([LLM, "localhost/seg:2"])
    assert c.get("/api/v1/jobs").json()["items"] == []


def test_each_job_of_an_image_gets_a_fresh_pod_of_that_image(world):
    c, loop, executor, engine = world
    a, b, third = (_submit(c, image=LLM) for _ in range(3))
    loop.tick()
    on = {jid: _where(engine, jid) for jid in (a, b, third)}
    assert sorted(on[a] + on[b]) == ["llm-a", "llm-b"], on  # one job per pod, never gen-0 nor seg-a
    assert on[third] == []
    waiting = c.get(f"/api/v1/jobs/{third}").json()
    assert waiting["pending_reason"]["code"] == "NO_CAPACITY", waiting
    for pod_id in ("llm-a", "llm-b"):
        row = _node(engine, pod_id)
        assert row.state == "draining" and row.state_reason.startswith(SPENT_REASON), (row.state, row.state_reason)

    # the first job ends: its pod is not reused (another tenant ran there), the third job waits
    first = next(j for j in (a, b) if on[j] == ["llm-a"])
    executor.finish(first, 1)
    loop.tick()
    loop.tick()
    assert c.get(f"/api/v1/jobs/{first}").json()["status"] == "SUCCEEDED"
    assert _where(engine, third) == []
    assert _node(engine, "llm-a").state == "draining"

    # the scaler's replacement pod appears where llm-a was deleted: the third job starts there
    executor.set_nodes([GENERAL, pod("llm-b"), pod("seg-a", "seg"), pod("llm-c")])
    loop.tick()
    assert _where(engine, third) == ["llm-c"]
    assert _node(engine, "llm-a") is None  # a gone pod that holds nothing leaves the inventory
    assert _where(engine, first) == ["llm-a"]  # the job's history keeps its name

    # a pod lost while its job runs stays until the attempt has ended, then goes
    second = next(j for j in (a, b) if j != first)
    executor.set_nodes([GENERAL, pod("seg-a", "seg"), pod("llm-c")])
    loop.sync_nodes()
    assert _node(engine, "llm-b") is not None
    executor.lose(second, 1)
    loop.tick()
    loop.tick()
    assert _node(engine, "llm-b") is None


def test_a_gang_of_an_image_takes_one_pod_per_worker(world):
    c, loop, _, engine = world
    jid = _submit(c, image=LLM, workers=2, gpus=1)
    loop.tick()
    assert sorted(_where(engine, jid)) == ["llm-a", "llm-b"]


def test_general_work_never_lands_in_a_pod(world):
    c, loop, _, engine = world
    # 4 process jobs of 2 GPUs: gen-0 holds two; pods have 6 GPUs free but take none of them
    ids = [_submit(c, runtime="process", image="", command=["true"], env={}, gpus=2) for _ in range(4)]
    loop.tick()
    placed = [n for jid in ids for n in _where(engine, jid)]
    assert placed == ["gen-0", "gen-0"], placed
    assert all(_node(engine, p).state == "ready" for p in ("llm-a", "llm-b", "seg-a"))


def test_what_a_pod_cannot_take_is_refused_at_submit(world):
    c, _, _, _ = world
    r = c.post("/api/v1/jobs", json=job_body(image=LLM, secrets=["db-password"]))
    err = r.json()["error"]
    assert r.status_code == 422 and err["code"] == "NOT_SUPPORTED_IN_IMAGE_PODS", r.text
    assert err["details"] == {"image": LLM, "unsupported": ["secrets"]}
    assert c.get("/api/v1/jobs").json()["items"] == []


def test_a_checkpointable_job_in_a_pod_is_planned_as_losing_its_work(world):
    from broker.services.snapshot import to_job

    c, _, _, engine = world
    jid = _submit(c, image=LLM, checkpointable=True)
    with Session(engine) as s:
        row = s.get(Job, jid)
    # no checkpoint directory reaches a pod's job container: preempting it is not cheap
    assert to_job(row, images={LLM: "llm"}).checkpointable is False
    assert to_job(row).checkpointable is True  # under podman it resumes from its checkpoint
