"""Secrets and datasets through the API, the submit checks and the launch (fake executor):
values never come back, grants decide at submit, placement follows the data, and every secret
read and dataset mount is in the audit chain, which verifies."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from broker.adapters.fake import FakeExecutor, node
from broker.models import Job, ProjectSecret
from tests.broker.conftest import job_body

VALUE = "pg-pass-" + "x7Q!" * 4


@pytest.fixture(scope="module")
def setup(settings, engine, admin_token):
    from broker.app import create_app

    ex = FakeExecutor(nodes=[node("inno-a", gpus=2), node("inno-b", gpus=2)])
    app = create_app(settings, executor=ex, start_background=False, engine=engine)
    launched = []
    real_launch = ex.launch

    def launch(spec):
        launched.append(spec)
        real_launch(spec)

    ex.launch = launch
    with TestClient(app, headers={"Authorization": f"Bearer {admin_token}"}) as c:
        app.state.services.loop.sync_nodes()
        yield c, app, launched


def _tick(app):
    app.state.services.loop.tick()


def _secret(c, project="ouh-liver", value=VALUE) -> str:
    name = "db-" + uuid.uuid4().hex[:6]
    r = c.put(f"/api/v1/projects/{project}/secrets/{name}", json={"value": value})
    assert r.status_code == 201, r.text
    return name


def test_secret_values_are_write_only_versioned_and_encrypted(setup, engine):
    c, app, _ = setup
    name = _secret(c)
    r = c.put(f"/api/v1/projects/ouh-liver/secrets/{name}", json={"value": VALUE + "-v2"})
    assert r.status_code == 200 and r.json()["version"] == 2 and len(r.json()["versions"]) == 2
    bodies = [r.text, c.get(f"/api/v1/projects/ouh-liver/secrets/{name}").text,
              c.get("/api/v1/projects/ouh-liver/secrets").text,
              c.get("/api/v1/audit", params={"target_kind": "secret"}).text]
    assert all(VALUE not in b for b in bodies) and name in bodies[2]
    with Session(engine) as s:
        rows = s.exec(select(ProjectSecret).where(ProjectSecret.name == name)).all()
    assert rows and all(VALUE not in r.ciphertext for r in rows)  # encrypted at rest
    assert app.state.services.secrets.cipher().decrypt(rows[-1].ciphertext.encode()).decode() == VALUE + "-v2"
    assert c.delete(f"/api/v1/projects/ouh-liver/secrets/{name}").status_code == 204
    assert c.get(f"/api/v1/projects/ouh-liver/secrets/{name}").status_code == 404


@pytest.mark.parametrize("case, value, name, code", [
    ("too short to mask", "abc", "ok-name", "SECRET_VALUE_INVALID"),
    ("name with a slash", "value-1234", "a..b%2Fc", None),
])
def test_bad_secrets_are_refused(setup, case, value, name, code):
    c, _, _ = setup
    r = c.put(f"/api/v1/projects/ouh-liver/secrets/{name}", json={"value": value})
    assert r.status_code in (404, 422), r.text
    if code:
        assert r.json()["error"]["code"] == code


def test_a_job_names_secrets_that_exist_and_never_shows_their_values(setup, engine):
    c, app, launched = setup
    r = c.post("/api/v1/jobs", json=job_body(secrets=["no-such-secret"]))
    assert r.status_code == 422 and r.json()["error"]["code"] == "SECRET_NOT_FOUND"
    name = _secret(c)
    r = c.post("/api/v1/jobs", json=job_body(secrets=[name]))
    assert r.status_code == 201, r.text
    jid = r.json()["id"]
    _tick(app)
    spec = next(s for s in launched if s.job_id == jid)
    assert spec.secrets == {name: VALUE} and VALUE not in repr(spec)  # delivered, not printable
    texts = [c.get(f"/api/v1/jobs/{jid}").text, c.get(f"/api/v1/jobs/{jid}/events").text,
             c.get("/api/v1/jobs", params={"project": "ouh-liver"}).text, c.get("/api/v1/audit").text]
    assert all(VALUE not in t for t in texts)
    assert c.get(f"/api/v1/jobs/{jid}").json()["secrets"] == [name]
    reads = c.get("/api/v1/audit", params={"action": "secret.read"}).json()["items"]
    assert any(e["after"]["job"] == jid and e["target_id"] == f"ouh-liver/{name}" for e in reads)
    assert c.get("/api/v1/audit/verify").json()["intact"] is True




def _dataset(c, **over) -> dict:
    body = {"name": "ds-" + uuid.uuid4().hex[:8], "department": "ouh", "path": "/data/ct-scans",
            "description": "CT scans 2019-2024", "retention": "10 years", **over}
    r = c.post("/api/v1/datasets", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def test_mounts_need_a_grant_and_rw_needs_a_rw_grant(setup):
    c, _, _ = setup
    ds = _dataset(c, shared=True)
    mount = {"dataset": ds["name"], "path": "/data", "mode": "ro"}
    r = c.post("/api/v1/jobs", json=job_body(mounts=[mount]))
    assert r.status_code == 404 and r.json()["error"]["code"] == "DATASET_NOT_FOUND"  # no grant: as if absent
    assert c.put(f"/api/v1/datasets/{ds['id']}/grants/ouh-liver", json={"mode": "ro"}).status_code == 200
    r = c.post("/api/v1/jobs", json=job_body(mounts=[{**mount, "mode": "rw"}]))
    assert r.status_code == 403 and r.json()["error"]["code"] == "DATASET_READ_ONLY"
    r = c.post("/api/v1/jobs", json=job_body(runtime="process", image="", mounts=[mount]))
    assert r.status_code == 403 and r.json()["error"]["code"] in ("DATASET_PROCESS_NOT_ALLOWED",
                                                                   "PROCESS_RUNTIME_NOT_ALLOWED",
                                                                   "PROCESS_RUNTIME_DISABLED")
    r = c.post("/api/v1/jobs", json=job_body(mounts=[mount]))
    assert r.status_code == 201 and r.json()["mounts"][0]["path"] == "/data"
    r = c.put(f"/api/v1/datasets/{ds['id']}/grants/ouh-liver", json={"mode": "rw"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "DATASET_READ_ONLY"  # the dataset is ro


def test_placement_follows_the_data_and_mounts_are_audited(setup):
    c, app, launched = setup
    ds = _dataset(c, nodes=["inno-b"])
    c.put(f"/api/v1/datasets/{ds['id']}/grants/ouh-liver", json={"mode": "ro"})
    jid = c.post("/api/v1/jobs", json=job_body(gpus=1, mounts=[{"dataset": ds["name"], "path": "/data"}])).json()["id"]
    _tick(app)
    job = c.get(f"/api/v1/jobs/{jid}").json()
    assert [p["node"] for p in job["placements"]] == ["inno-b"], job
    spec = next(s for s in launched if s.job_id == jid)
    assert spec.mounts == (("/data/ct-scans", "/data", "ro"),)
    access = c.get(f"/api/v1/datasets/{ds['id']}/access").json()["items"]
    assert [(a["job"], a["mode"], a["path"]) for a in access] == [(jid, "ro", "/data")]
    mounts = c.get("/api/v1/audit", params={"action": "dataset.mount"}).json()["items"]
    assert any(e["after"]["job"] == jid for e in mounts)
    assert c.get("/api/v1/audit/verify").json()["intact"] is True
    # data on a node that is not there: the job waits and says where the data is
    gone = _dataset(c, nodes=["inno-z"])
    c.put(f"/api/v1/datasets/{gone['id']}/grants/ouh-liver", json={"mode": "ro"})
    jid2 = c.post("/api/v1/jobs", json=job_body(gpus=1, mounts=[{"dataset": gone["name"], "path": "/d"}])).json()["id"]
    _tick(app)
    j2 = c.get(f"/api/v1/jobs/{jid2}").json()
    assert j2["status"] == "PENDING" and j2["pending_reason"]["code"] == "DATA_UNAVAILABLE", j2
    assert "inno-z" in j2["pending_reason"]["message"]


def _secret_deleted(c) -> tuple[dict, str, str]:
    name = _secret(c)
    return {"secrets": [name]}, f"/api/v1/projects/ouh-liver/secrets/{name}", "SECRET_NOT_FOUND"


def _grant_revoked(c) -> tuple[dict, str, str]:
    ds = _dataset(c, shared=True)
    assert c.put(f"/api/v1/datasets/{ds['id']}/grants/ouh-liver", json={"mode": "ro"}).status_code == 200
    return ({"mounts": [{"dataset": ds["name"], "path": "/data"}]},
            f"/api/v1/datasets/{ds['id']}/grants/ouh-liver", "DATASET_GRANT_REVOKED")


@pytest.mark.parametrize("case, make", [
    ("secret deleted while the job waited", _secret_deleted),
    ("dataset grant revoked while the job waited", _grant_revoked),
])
def test_a_job_that_can_no_longer_start_fails_at_once_and_says_why(setup, case, make):
    c, app, launched = setup
    fields, remove, code = make(c)
    r = c.post("/api/v1/jobs", json=job_body(max_retries=3, **fields))
    assert r.status_code == 201, r.text
    jid = r.json()["id"]
    assert c.delete(remove).status_code == 204
    _tick(app)
    got = c.get(f"/api/v1/jobs/{jid}").json()
    assert got["status"] == "FAILED" and got["attempt"] == 1, got  # no retry: it can never start
    assert code in got["message"], got["message"]
    assert not any(s.job_id == jid for s in launched)


def test_foreign_department_cannot_see_or_grant_a_dataset(setup):
    c, app, _ = setup
    ds = _dataset(c, shared=True)
    r = c.post("/api/v1/admin/tokens", json={"name": "ops-x", "role": "ops-viewer"})
    with TestClient(app, headers={"Authorization": f"Bearer {r.json()['token']}"}) as ops:
        assert ops.get(f"/api/v1/datasets/{ds['id']}/access").status_code == 403
        assert ds["id"] not in ops.get("/api/v1/datasets").text


def test_results_size_is_reported_in_usage_and_a_full_project_gets_no_new_jobs(setup, settings, tmp_path):
    from broker.errors import Invalid
    from broker.services import storage
    from broker.settings import Settings

    c, _, _ = setup
    u = c.get("/api/v1/projects/ouh-liver/usage").json()["results_storage"]
    assert u["limit_bytes"] == int(settings.results_max_gb_per_project * storage.GIB) and u["bytes"] is not None
    small = Settings(data_dir=tmp_path, results_max_gb_per_project=1e-6)  # about 1 KiB
    d = small.results_dir("p1")
    d.mkdir(parents=True)
    (d / "model.bin").write_bytes(b"\0" * 4096)
    assert storage.measure(small, "p1")["full"] is True
    with pytest.raises(Invalid) as err:
        storage.check_room(small, "p1")
    assert err.value.code == "RESULTS_FULL"
    (d / "model.bin").unlink()
    assert storage.measure(small, "p1") == {**storage.usage(small, "p1"), "bytes": 0, "full": False}


def test_env_values_are_shown_to_the_jobs_project_only(setup):
    c, app, _ = setup
    uid = "u-" + uuid.uuid4().hex[:8]
    assert c.post("/api/v1/admin/users", json={"id": uid}).status_code == 201
    assert c.post("/api/v1/projects/ouh-liver/members", json={"user": uid, "role": "member"}).status_code == 201
    tok = c.post("/api/v1/admin/tokens", json={"name": uid, "user": uid}).json()["token"]
    jid = c.post("/api/v1/jobs", json=job_body(env={"API_KEY": "k-123456"})).json()["id"]
    listed = c.get("/api/v1/jobs", params={"project": "ouh-liver", "limit": 500}).json()["items"]
    assert c.get(f"/api/v1/jobs/{jid}").json()["env"] == {"API_KEY": "[REDACTED]"}  # a platform-admin
    assert next(j for j in listed if j["id"] == jid)["env"] == {"API_KEY": "[REDACTED]"}
    with TestClient(app, headers={"Authorization": f"Bearer {tok}"}) as member:
        assert member.get(f"/api/v1/jobs/{jid}").json()["env"] == {"API_KEY": "k-123456"}
