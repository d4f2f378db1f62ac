"""Services API on SQLite and PostgreSQL: deploy, read, change, scale, delete; validation with
codes; the operation guarantee check; tenancy (a foreign user gets 404, on the API and the
entry point); replicas are jobs the scheduling core admits; non-preemptible min replicas.

The controller and the scheduling loop are driven by hand (`tick()` / `schedule()`): no
sleeps, no background tasks.
"""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from broker.models import Job, ServiceReplica
from broker.services.scheduling import TickReport


def body(**over) -> dict:
    b = {"name": "echo-" + uuid.uuid4().hex[:6], "project": "ouh-liver", "class": "innovation",
         "image": "localhost/busybox:test", "command": ["/bin/busybox", "httpd", "-f", "-p", "8080"],
         "resources": {"gpus": 0, "cpus": 0.5, "memory_gb": 0.5}, "replicas": {"min": 2, "max": 3}, "port": 8080,
         "readiness": {"path": "/", "period_s": 1, "failure_threshold": 2}}
    b.update(over)
    return b


@pytest.fixture(scope="module")
def ctl(app):
    return app.state.services.service_controller


def _schedule(app) -> TickReport:
    loop = app.state.services.loop
    rep = TickReport()
    loop.schedule(rep)
    loop.launch_admitted(rep)
    return rep


def _replicas(engine, sid) -> list[Job]:
    with Session(engine) as s:
        return list(s.exec(select(Job).where(Job.service_id == sid).order_by(Job.created_at)).all())


@pytest.fixture(scope="module")
def stranger(app, client):
    """A member of slb-cardio only."""
    uid = "u-" + uuid.uuid4().hex[:8]
    assert client.post("/api/v1/admin/users", json={"id": uid}).status_code == 201
    assert client.post("/api/v1/projects/slb-cardio/members", json={"user": uid, "role": "member"}).status_code == 201
    tok = client.post("/api/v1/admin/tokens", json={"name": uid, "user": uid}).json()["token"]
    with TestClient(app, headers={"Authorization": f"Bearer {tok}"}) as c:
        yield c


# ------------------------------------------------------------------ validation
BAD = [
    ("name not a slug", {"name": "Echo Service"}, 422, "VALIDATION_ERROR"),
    ("min above max", {"replicas": {"min": 3, "max": 2}}, 422, "VALIDATION_ERROR"),
    ("PORT is the broker's", {"env": {"PORT": "1"}}, 422, "VALIDATION_ERROR"),
    ("BROKER_SERVICE is the broker's", {"env": {"BROKER_SERVICE": "x/y"}}, 422, "VALIDATION_ERROR"),
    ("reserved job env", {"env": {"RANK": "1"}}, 422, "VALIDATION_ERROR"),
    ("probe both http and tcp", {"readiness": {"path": "/", "tcp": True}}, 422, "VALIDATION_ERROR"),
    ("port out of range", {"port": 70000}, 422, "VALIDATION_ERROR"),
    ("container without image", {"image": ""}, 422, "VALIDATION_ERROR"),
    ("unknown field", {"status": "READY"}, 422, "VALIDATION_ERROR"),
    ("unknown project", {"project": "no-such-project"}, 422, "UNKNOWN_PROJECT"),
    ("rate limit zero", {"rate_limit": {"per_s": 0}}, 422, "VALIDATION_ERROR"),
    ("rate limit not a number", {"rate_limit": {"per_caller_per_s": "fast"}}, 422, "VALIDATION_ERROR"),
    ("image not allowed", {"image": "docker.io/evil:latest"}, 422, None),
    ("process runtime not allowed", {"runtime": "process", "image": ""}, 403, None),
]


@pytest.mark.parametrize("name,over,status,code", BAD, ids=[b[0] for b in BAD])
def test_bad_specs_are_refused_with_a_code(client, name, over, status, code):
    r = client.post("/api/v1/services", json=body(**over))
    assert r.status_code in (status, 422) and r.status_code < 500, r.text
    assert r.json()["error"]["code"] and (code is None or r.json()["error"]["code"] == code)


def test_operation_min_above_the_guarantee_is_refused_with_the_numbers(client):
    # ouh-radiology is guaranteed 2 GPUs in the operation pool
    r = client.post("/api/v1/services", json=body(project="ouh-radiology", **{"class": "operation"},
                                                  resources={"gpus": 1, "cpus": 1, "memory_gb": 1},
                                                  replicas={"min": 3, "max": 4}))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "GUARANTEE_EXCEEDED"
    assert err["details"] == {"resource": "gpus", "min_replicas": 3, "per_replica": 1, "requested": 3,
                              "guaranteed": 2.0, "project": "ouh-radiology"}
    assert "3 gpus" in err["message"] and "guaranteed 2 gpus" in err["message"]
    ok = client.post("/api/v1/services", json=body(project="ouh-radiology", **{"class": "operation"},
                                                   resources={"gpus": 1, "cpus": 1, "memory_gb": 1},
                                                   replicas={"min": 2, "max": 4}))
    assert ok.status_code == 201, ok.text


def test_a_name_is_unique_in_its_project(client):
    b = body()
    assert client.post("/api/v1/services", json=b).status_code == 201
    r = client.post("/api/v1/services", json=b)
    assert r.status_code == 409 and r.json()["error"]["code"] == "SERVICE_EXISTS"


# ------------------------------------------------------------------ life cycle
def test_replicas_are_jobs_admitted_by_the_scheduling_core(client, app, engine, ctl):
    r = client.post("/api/v1/services", json=body())
    assert r.status_code == 201, r.text
    svc = r.json()
    assert svc["status"] == "DEPLOYING" and svc["replicas"]["desired"] == 2 and svc["endpoint"].startswith("/svc/")
    ctl.tick()
    jobs = _replicas(engine, svc["id"])
    assert len(jobs) == 2 and {j.replica_index for j in jobs} == {0, 1}
    assert all(j.status == "PENDING" and j.service_revision == 1 and j.port and j.env["PORT"] == "8080"
               and j.env["BROKER_SERVICE"] == f"ouh-liver/{svc['name']}" for j in jobs)
    rep = _schedule(app)
    assert set(rep.admitted) >= {j.id for j in jobs}
    reps = client.get(f"/api/v1/services/{svc['id']}/replicas").json()["items"]
    assert len(reps) == 2 and all(x["node"] for x in reps) and all(not x["ready"] for x in reps)
    # a job's own API sees the replica too (it is an ordinary job)
    assert client.get(f"/api/v1/jobs/{jobs[0].id}").json()["status"] in ("ADMITTED", "STARTING", "RUNNING")


def test_a_replica_that_cannot_be_admitted_shows_the_core_reason(client, app, engine, ctl):
    # 64 GPUs per replica never fit a 4-GPU node: the submit checks refuse it as a job would be
    r = client.post("/api/v1/services", json=body(resources={"gpus": 64}))
    assert r.status_code == 422 and r.json()["error"]["code"] == "NEVER_FITS"


def test_patch_makes_a_revision_and_scale_and_delete(client, app, engine, ctl):
    svc = client.post("/api/v1/services", json=body(replicas={"min": 1, "max": 3})).json()
    ctl.tick()
    r = client.patch(f"/api/v1/services/{svc['id']}", json={"env": {"MODEL": "v2"}})
    assert r.status_code == 200 and r.json()["revision"] == 2 and r.json()["status"] == "ROLLING"
    revs = client.get(f"/api/v1/services/{svc['id']}/revisions").json()["items"]
    assert [x["number"] for x in revs] == [2, 1] and set(revs[0]["spec"]["env"]) == {"MODEL"}  # values redacted for admins, as for jobs
    # replica bounds alone: no new revision
    r = client.patch(f"/api/v1/services/{svc['id']}", json={"replicas": {"min": 1, "max": 4}})
    assert r.json()["revision"] == 2 and r.json()["replicas"]["max"] == 4
    assert client.post(f"/api/v1/services/{svc['id']}/scale", json={"replicas": 3}).json()["replicas"]["desired"] == 3
    bad = client.post(f"/api/v1/services/{svc['id']}/scale", json={"replicas": 9})
    assert bad.status_code == 422 and bad.json()["error"]["code"] in ("REPLICAS_OUT_OF_BOUNDS", "VALIDATION_ERROR")
    bad = client.patch(f"/api/v1/services/{svc['id']}", json={"replicas": {"min": 5, "max": 4}})
    assert bad.status_code == 422
    kinds = [e["kind"] for e in client.get(f"/api/v1/services/{svc['id']}/events").json()["items"]]
    assert kinds[0] == "created" and "revision" in kinds and "scaled" in kinds
    # delete: DELETING, the controller stops every replica, then the service is gone
    assert client.delete(f"/api/v1/services/{svc['id']}").json()["status"] == "DELETING"
    for _ in range(3):
        ctl.tick()
        _schedule(app)
    assert all(j.status in ("CANCELLED",) or j.cancel_requested_at for j in _replicas(engine, svc["id"]))


def test_list_and_get(client):
    svc = client.post("/api/v1/services", json=body()).json()
    items = client.get("/api/v1/services", params={"project": "ouh-liver"}).json()["items"]
    assert svc["id"] in {x["id"] for x in items}
    assert client.get(f"/api/v1/services/{svc['id']}").json()["name"] == svc["name"]
    r = client.get("/api/v1/services/does-not-exist")
    assert r.status_code == 404 and r.json()["error"]["code"] == "SERVICE_NOT_FOUND"


# ------------------------------------------------------------------ tenancy
def test_a_foreign_user_gets_404_on_the_service_and_its_endpoint(client, stranger):
    svc = client.post("/api/v1/services", json=body()).json()
    for path in ("", "/replicas", "/revisions", "/events"):
        r = stranger.get(f"/api/v1/services/{svc['id']}{path}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "SERVICE_NOT_FOUND", path
    assert stranger.patch(f"/api/v1/services/{svc['id']}", json={"env": {}}).status_code == 404
    assert stranger.delete(f"/api/v1/services/{svc['id']}").status_code == 404
    assert svc["id"] not in {x["id"] for x in stranger.get("/api/v1/services").json()["items"]}
    r = stranger.get(f"/svc/ouh-liver/{svc['name']}/")
    assert r.status_code == 404 and r.json()["error"]["code"] == "SERVICE_NOT_FOUND"
    # not even a deploy into a foreign project
    r = stranger.post("/api/v1/services", json=body())
    assert r.status_code == 422 and r.json()["error"]["code"] == "UNKNOWN_PROJECT"


def test_the_entry_point_needs_a_token_or_a_service_key(client, anon):
    svc = client.post("/api/v1/services", json=body()).json()
    assert anon.get(f"/svc/ouh-liver/{svc['name']}/").status_code == 401
    r = client.get(f"/svc/ouh-liver/{svc['name']}/")
    assert r.status_code == 503 and r.json()["error"]["code"] == "NO_READY_REPLICA"
    key = client.post(f"/api/v1/services/{svc['id']}/keys").json()["key"]
    assert anon.get(f"/svc/ouh-liver/{svc['name']}/", headers={"X-Service-Key": key}).status_code == 503
    assert anon.get(f"/svc/ouh-liver/{svc['name']}/", headers={"X-Service-Key": key + "x"}).status_code == 401
    client.delete(f"/api/v1/services/{svc['id']}/keys")
    assert anon.get(f"/svc/ouh-liver/{svc['name']}/", headers={"X-Service-Key": key}).status_code == 401


def test_the_entry_points_caches_never_outlive_a_revocation_or_a_removed_role(app, client):
    """The entry point remembers an allowed caller and a service briefly; a token revoked here,
    a membership removed here, or a deleted service take effect at the next request."""
    uid = "u-" + uuid.uuid4().hex[:8]
    assert client.post("/api/v1/admin/users", json={"id": uid}).status_code == 201
    assert client.post("/api/v1/projects/ouh-liver/members", json={"user": uid, "role": "member"}).status_code == 201
    t1 = client.post("/api/v1/admin/tokens", json={"name": uid, "user": uid}).json()
    t2 = client.post("/api/v1/admin/tokens", json={"name": uid + "-2", "user": uid}).json()
    svc = client.post("/api/v1/services", json=body()).json()
    url = f"/svc/ouh-liver/{svc['name']}/"
    with TestClient(app, headers={"Authorization": f"Bearer {t1['token']}"}) as c1, \
            TestClient(app, headers={"Authorization": f"Bearer {t2['token']}"}) as c2:
        assert c1.get(url).status_code == 503 and c2.get(url).status_code == 503  # allowed: no replica yet
        assert client.delete(f"/api/v1/tokens/{t1['id']}").status_code == 200
        r = c1.get(url)
        assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
        assert client.delete(f"/api/v1/projects/ouh-liver/members/{uid}?role=member").status_code == 204
        r = c2.get(url)
        assert r.status_code == 404 and r.json()["error"]["code"] == "SERVICE_NOT_FOUND"
    assert client.delete(f"/api/v1/services/{svc['id']}").status_code == 200
    r = client.get(url)
    assert r.status_code == 404 and r.json()["error"]["code"] == "SERVICE_NOT_FOUND"
    for _ in range(3):  # an unknown name: 404 every time (the miss is cached, the answer the same)
        r = client.get("/svc/ouh-liver/no-such-service/x")
        assert r.status_code == 404 and r.json()["error"]["code"] == "SERVICE_NOT_FOUND"


def test_the_entry_point_limits_each_caller_and_the_whole_service(client, anon):
    svc = client.post("/api/v1/services", json=body(rate_limit={"per_s": 0.01, "burst": 3, "per_caller_per_s": 0.01,
                                                                 "per_caller_burst": 2})).json()
    url = f"/svc/ouh-liver/{svc['name']}/"
    key = client.post(f"/api/v1/services/{svc['id']}/keys").json()["key"]
    assert [client.get(url).status_code for _ in range(2)] == [503, 503]  # allowed (no replica yet)
    r = client.get(url)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1, r.text
    err = r.json()["error"]
    assert err["code"] == "RATE_LIMITED" and err["details"]["scope"] == "caller"
    assert err["details"]["limit_per_s"] == 0.01 and err["details"]["retry_after_s"] > 0
    # another caller (the service's API key) has its own bucket; the service's holds one more
    k = {"X-Service-Key": key}
    assert anon.get(url, headers=k).status_code == 503
    r = anon.get(url, headers=k)
    assert r.status_code == 429 and r.json()["error"]["details"]["scope"] == "service", r.text
    # new limits apply at once, without a new revision
    p = client.patch(f"/api/v1/services/{svc['id']}", json={"rate_limit": {"per_caller_per_s": 1000}})
    assert p.status_code == 200 and p.json()["revision"] == svc["revision"], p.text
    assert client.get(url).status_code == 503
    assert "rate_limit" in {e["kind"] for e in client.get(f"/api/v1/services/{svc['id']}/events").json()["items"]}
    metrics = [x for x in client.get("/metrics").text.splitlines()
               if x.startswith("broker_service_errors_total") and svc["name"] in x and "rate_limited" in x]
    assert metrics and metrics[0].endswith(" 2.0"), metrics


# ------------------------------------------------------------------ protection
def test_an_operation_services_min_replicas_are_not_preemptible(client, app, engine, ctl):
    svc = client.post("/api/v1/services", json=body(project="ouh-radiology", **{"class": "operation"},
                                                    resources={"gpus": 1, "cpus": 1, "memory_gb": 1},
                                                    replicas={"min": 1, "max": 3})).json()
    client.post(f"/api/v1/services/{svc['id']}/scale", json={"replicas": 3})
    ctl.tick()
    ctl.tick()
    flags = sorted(j.preemptible for j in _replicas(engine, svc["id"]))
    assert flags == [False, True, True]
