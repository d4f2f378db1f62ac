"""A tenant image on KubeRay, end to end without Kubernetes: REST -> the scheduling loop -> the
RayExecutor on the real local Ray cluster -> a Ray node that plays an image pod -> its `job`
container.

The pod (docs/KUBERNETES.md, "Tenant containers on KubeRay"): one more Ray node labelled
`broker.io/image=llm` whose processes have `BROKER_HANDOFF_DIR` (the `ray-worker` container of
the pod), and a real podman container of the approved image running k8s/base/launch.sh as user
20001 on the shared handoff directory (the `job` container; tests/integration/test_pod_handoff.py
plays it alone). The broker approves the busybox test image as `llm`. What a user sees: the job
runs in the pod's job container (its uid, nothing of the runner's environment), its output and
exit code are the job's, the pod is spent after it, and the next job of the image waits for a
fresh pod instead of running there; a job of another image never lands in the pod.
"""

from __future__ import annotations

import os

import pytest

from broker.adapters.ray.executor import NODE_LABEL, POOL_LABEL
from broker.adapters.ray.handoff import HANDOFF_ENV
from broker.ports import IMAGE_LABEL, SPENT_REASON
from tests.integration.conftest import NAMESPACE, NODE_POOLS, wait_for
from tests.integration.test_e2e_ray import (  # noqa: F401  (broker_settings: a fixture)
    TERMINAL, _release_all, broker_settings, job, running_broker, wait_status,
)
from tests.integration.test_pod_handoff import JOB_UID, Pod

pytestmark = [pytest.mark.ray, pytest.mark.container, pytest.mark.timeout(240)]

POD_NODE = "pod-llm-0"


@pytest.fixture
def image_pod(ray_cluster, tmp_path, busybox_image):
    pod = Pod(tmp_path, busybox_image)
    pod.start()
    before = os.environ.get(HANDOFF_ENV)
    os.environ[HANDOFF_ENV] = str(pod.dir)  # the node's processes inherit it, as in the ray-worker container
    try:
        node = ray_cluster.add_node({NODE_LABEL: POD_NODE, POOL_LABEL: "innovation", IMAGE_LABEL: "llm"}, gpus=1)
    finally:
        if before is None:
            os.environ.pop(HANDOFF_ENV, None)
        else:
            os.environ[HANDOFF_ENV] = before
    try:
        yield pod
    finally:
        _release_all(ray_cluster)
        ray_cluster.remove_node(node)
        pod.remove()
        wait_for(lambda: not _alive(ray_cluster, POD_NODE), 90, interval_s=0.5)  # the next tests see 3 nodes


def _alive(ray_cluster, node: str) -> bool:
    from broker.adapters.ray.executor import RayExecutor

    ex = RayExecutor(ray_cluster.address, namespace=NAMESPACE)
    try:
        return any(n.id == node and n.alive for n in ex.nodes())
    finally:
        ex.shutdown()


@pytest.fixture
def broker(ray_cluster, broker_settings, busybox_image, image_pod):
    settings = broker_settings.model_copy(update={"k8s_images": {"llm": busybox_image}})
    with running_broker(settings, ray_cluster.address, expect_nodes=len(NODE_POOLS) + 1) as client:
        yield client


def test_a_job_of_an_approved_image_runs_in_its_pod_once(broker, busybox_image):
    created = broker.submit(job("echo hello from the pod; id -u; env; exit 4", image=busybox_image,
                                env={"MODEL": "seg v3"}))
    done = wait_status(broker, created["id"], TERMINAL, timeout_s=90)
    assert (done["status"], done["exit_code"]) == ("FAILED", 4), done["message"]
    log = broker.logs(created["id"])
    assert "hello from the pod" in log, log
    assert f"\n{JOB_UID}\n" in log  # the pod's job container's user, not the runner's (root here)
    seen = dict(line.split("=", 1) for line in log.splitlines() if "=" in line)
    assert seen["MODEL"] == "seg v3" and seen["BROKER_JOB_ID"] == created["id"]
    assert not [k for k in seen if k.startswith("RAY_") or k == HANDOFF_ENV]  # nothing of the runner's
    placed = [e for e in broker.events(created["id"]) if e.get("details", {}).get("placements")]
    assert [p["node"] for p in placed[0]["details"]["placements"]] == [POD_NODE]
    pod_row = {n["id"]: n for n in broker.nodes()}[POD_NODE]
    assert pod_row["state"] == "draining" and pod_row["state_reason"].startswith(SPENT_REASON), pod_row

    # the pod ran its one attempt: the next job of the image waits for a fresh pod
    second = broker.submit(job("echo never here", image=busybox_image))
    why = wait_for(lambda: (broker.get(second["id"]).get("pending_reason") or {}).get("code"), 15)
    assert why == "NO_CAPACITY" and broker.get(second["id"])["status"] == "PENDING"
    broker.cancel(second["id"])
