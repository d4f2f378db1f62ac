"""Secrets and datasets end to end: REST -> scheduling loop -> RayExecutor on the session's
multi-node Ray cluster -> podman. One broker for the module (its loop launches both jobs)."""

from __future__ import annotations

import pytest

from tests.integration.test_e2e_ray import TERMINAL, _release_all, job, running_broker, wait_status

pytestmark = [pytest.mark.ray, pytest.mark.container, pytest.mark.timeout(240)]

SECRET = "pacs-token-7f3a9c1e55"


@pytest.fixture(scope="module")
def broker(ray_cluster, busybox_image, tmp_path_factory):
    from broker.db import migrate
    from broker.settings import Settings

    s = Settings(data_dir=tmp_path_factory.mktemp("data-e2e") / "broker", grace_period_s=2.0,
                 cycle_interval_s=0.5, reconcile_interval_s=2.0)
    s.ensure_data_dir()
    migrate(s)
    with running_broker(s, ray_cluster.address) as client:
        yield client
    _release_all(ray_cluster)


def api(broker, method, path, **kw):
    r = broker._http.request(method, path, **kw)  # the client's TestClient (routes it has no method for)
    assert r.status_code < 300, r.text
    return r.json() if r.content else None


def test_secret_reaches_the_container_only(broker):
    r = api(broker, "PUT", "/api/v1/projects/ouh-liver/secrets/pacs-token", json={"value": SECRET})
    assert r["version"] >= 1
    created = broker.submit(job("cat /run/secrets/pacs-token; echo; echo also=$(cat $BROKER_SECRETS_DIR/pacs-token)",
                                gpus=0, secrets=["pacs-token"]))
    done = wait_status(broker, created["id"], TERMINAL)
    assert done["status"] == "SUCCEEDED", done["message"]
    log = broker.logs(created["id"], worker=0)
    assert "[MASKED]" in log and "also=[MASKED]" in log
    seen = [str(broker.get(created["id"])), str(api(broker, "GET", f"/api/v1/jobs/{created['id']}/events")),
            str(api(broker, "GET", "/api/v1/jobs", params={"project": "ouh-liver"})), log,
            str(api(broker, "GET", "/api/v1/audit", params={"limit": 500})),
            str(api(broker, "GET", "/api/v1/projects/ouh-liver/secrets"))]
    for text in seen:
        assert SECRET not in text
    reads = api(broker, "GET", "/api/v1/audit", params={"action": "secret.read"})["items"]
    assert any(e["after"]["job"] == created["id"] for e in reads)
    assert api(broker, "GET", "/api/v1/audit/verify")["intact"] is True


def test_dataset_is_mounted_read_only_where_it_lives(broker, tmp_path):
    data = tmp_path / "ct"
    data.mkdir()
    (data / "scan-001.txt").write_text("voxels\n")
    ds = api(broker, "POST", "/api/v1/datasets", json={"name": "ct-e2e", "department": "ouh", "path": str(data),
                                                          "nodes": ["innovation-1"]})
    api(broker, "PUT", f"/api/v1/datasets/{ds['id']}/grants/ouh-liver", json={"mode": "ro"})
    cmd = "cat /data/scan-001.txt; echo x > /data/new 2>/dev/null && echo write=ok || echo write=refused"
    created = broker.submit(job(cmd, gpus=1, mounts=[{"dataset": "ct-e2e", "path": "/data"}]))
    done = wait_status(broker, created["id"], TERMINAL)
    assert done["status"] == "SUCCEEDED", done["message"]
    assert [p["node"] for p in done["placements"]] == ["innovation-1"]
    log = broker.logs(created["id"], worker=0)
    assert "voxels" in log and "write=refused" in log and not (data / "new").exists()
    access = api(broker, "GET", f"/api/v1/datasets/{ds['id']}/access")["items"]
    assert [a["job"] for a in access] == [created["id"]]
    # a project without a grant: as if the dataset did not exist
    r = broker._http.post("/api/v1/jobs", json=job("true", gpus=0, project="ouh-radiology",
                                                   mounts=[{"dataset": "ct-e2e", "path": "/data"}]))
    assert r.status_code == 404 and r.json()["error"]["code"] == "DATASET_NOT_FOUND"
