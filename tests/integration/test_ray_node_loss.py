"""A Ray node dies under a running job: the broker notices, requeues the job, and runs it again
elsewhere. Real API + scheduling loop + RayExecutor on the shared local cluster, which gets one
extra node (innovation-9) for this test; that node is then killed (its raylet and workers,
no graceful drain), as when a machine loses power.

Last module of the integration run on purpose (it leaves a dead node in Ray's node table).
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import GPUS_PER_NODE, wait_for
from tests.integration.test_e2e_ray import TERMINAL, _release_all, broker_settings, running_broker  # noqa: F401

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

LOST_NODE = "innovation-9"


def test_a_lost_node_requeues_its_job_which_runs_again_elsewhere(ray_cluster, broker_settings):
    from broker.adapters.ray.local import NODE_LABEL, POOL_LABEL

    assert ray_cluster.add_node is not None
    handle = ray_cluster.add_node({NODE_LABEL: LOST_NODE, POOL_LABEL: "innovation"}, gpus=GPUS_PER_NODE)
    with running_broker(broker_settings, ray_cluster.address, expect_nodes=4) as client:
        try:
            # keep the other innovation nodes out so the job lands on the node we will kill
            for nid in ("innovation-0", "innovation-1"):
                assert client.update_node(nid, state="cordoned", reason="test: steer the job")["state"] == "cordoned"
            created = client.submit(name="survivor", project="ouh-liver", workload_class="innovation", pool="innovation",
                                    image="", command=["sh", "-c", "echo attempt=$BROKER_ATTEMPT; sleep 300"],
                                    resources={"gpus": 1, "cpus": 0.5, "memory_gb": 0.1}, runtime="process",
                                    max_runtime_s=600, max_retries=2)
            jid = created["id"]
            job = wait_for(lambda: (j := client.get(jid))["status"] == "RUNNING" and j, 60)
            assert {p["node"] for p in job["placements"] if p["attempt"] == 1} == {LOST_NODE}

            ray_cluster.remove_node(handle)  # the machine is gone

            def requeued():
                j = client.get(jid)
                return j if j["attempt"] >= 2 else None

            job = wait_for(requeued, 120, interval_s=0.5)
            assert job["status"] not in TERMINAL, job
            lost = [e for e in client.events(jid) if e.get("to_status") == "LOST"]
            assert lost and lost[0]["attempt"] == 1, client.events(jid)
            node = next(n for n in client.nodes() if n["id"] == LOST_NODE)
            assert node["state"] == "unhealthy", node  # held out at once, before Ray declares it dead
            # Ray's health checks then declare it dead, and it stays out
            wait_for(lambda: next(n for n in client.nodes() if n["id"] == LOST_NODE)["state_reason"].endswith("dead"), 90)

            # capacity comes back elsewhere: the job runs again, on another node, as attempt 2
            assert client.update_node("innovation-0", state="ready")["state"] == "ready"
            job = wait_for(lambda: (j := client.get(jid))["status"] == "RUNNING" and j, 60)
            assert job["attempt"] == 2
            assert {p["node"] for p in job["placements"] if p["attempt"] == 2} == {"innovation-0"}
            assert "attempt=2" in wait_for(lambda: client.logs(jid), 30)
            client.cancel(jid)
            wait_for(lambda: client.get(jid)["status"] == "CANCELLED", 60)
        finally:  # whatever happened, leave no attempt running on the shared cluster
            _release_all(ray_cluster)
