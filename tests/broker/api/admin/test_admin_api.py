"""Admin API on SQLite and PostgreSQL: users, memberships (no escalation), tokens (shown once,
expiry, revocation, agent scope), departments/projects with ETag, quotas with If-Match and
validation, project usage, and audit entries for each admin action."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from broker.app import create_app
from broker.models import ApiToken, Job
from broker.services.admin import audit as admin_audit


@pytest.fixture(scope="module")
def sec_app(settings, engine, fake_executor):
    app = create_app(settings, executor=fake_executor, start_background=False, engine=engine)
    return app


@pytest.fixture(scope="module")
def root(sec_app, admin_token):
    with TestClient(sec_app, headers={"Authorization": f"Bearer {admin_token}"}) as c:
        yield c


class People:
    """Users with one role each and a client per user (tokens created through the API)."""

    def __init__(self, app, root):
        self.app, self.root, self.clients, self.tokens = app, root, {}, {}

    def add(self, uid: str, *, project: str | None = None, dept: str | None = None, role: str = "member") -> TestClient:
        r = self.root.post("/api/v1/admin/users", json={"id": uid, "display_name": uid.title()})
        assert r.status_code in (201, 409), r.text
        if role in ("member", "project-admin"):
            r = self.root.post(f"/api/v1/projects/{project}/members", json={"user": uid, "role": role})
            assert r.status_code == 201, r.text
        elif role in ("department-admin", "ops-viewer") and dept:
            r = self.root.post(f"/api/v1/departments/{dept}/members", json={"user": uid, "role": role})
            assert r.status_code == 201, r.text
        r = self.root.post("/api/v1/admin/tokens", json={"name": f"{uid}-cli", "user": uid})
        assert r.status_code == 201, r.text
        self.tokens[uid] = r.json()
        c = TestClient(self.app, headers={"Authorization": f"Bearer {r.json()['token']}"})
        c.__enter__()
        self.clients[uid] = c
        return c

    def close(self):
        for c in self.clients.values():
            c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def people(sec_app, root):
    p = People(sec_app, root)
    p.add("alice", project="ouh-liver")
    p.add("bob", project="ouh-liver")
    p.add("pat", project="ouh-liver", role="project-admin")
    p.add("dora", dept="ouh", role="department-admin")
    p.add("sam", project="slb-cardio")
    assert root.post("/api/v1/admin/users", json={"id": "eve"}).status_code in (201, 409)  # grant target
    # ops-viewer is global: granted by a platform token scoped as ops-viewer
    r = root.post("/api/v1/admin/users", json={"id": "olga"})
    assert r.status_code in (201, 409)
    r = root.post("/api/v1/admin/tokens", json={"name": "olga-ops", "role": "ops-viewer"})
    assert r.status_code == 201, r.text
    c = TestClient(sec_app, headers={"Authorization": f"Bearer {r.json()['token']}"})
    c.__enter__()
    p.clients["olga"] = c
    yield p
    p.close()


def audit_actions(engine, **filters) -> list[str]:
    from broker.auth.policy import EVERYTHING

    with Session(engine) as s:
        return [e["action"] for e in admin_audit.query(s, EVERYTHING, **filters)["items"]]


# ------------------------------------------------------------------ tokens


def test_token_plaintext_shown_once_and_never_listed(people, root):
    alice = people.clients["alice"]
    r = alice.post("/api/v1/tokens", json={"name": "laptop", "ttl_days": 1})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["token"].startswith(body["prefix"] + "_") and body["owner"] == "alice"
    assert r.headers["cache-control"] == "no-store"
    listing = alice.get("/api/v1/tokens")
    assert listing.status_code == 200
    text = listing.text
    assert body["token"] not in text and "hash" not in text
    assert {t["owner"] for t in listing.json()["items"]} == {"alice"}


def test_token_expiry_is_bounded(people):
    r = people.clients["alice"].post("/api/v1/tokens", json={"name": "forever", "ttl_days": 10_000})
    assert r.status_code == 422


def test_revoked_token_gets_401_at_once(people, sec_app):
    alice = people.clients["alice"]
    created = alice.post("/api/v1/tokens", json={"name": "short"}).json()
    with TestClient(sec_app, headers={"Authorization": f"Bearer {created['token']}"}) as c:
        assert c.get("/api/v1/projects").status_code == 200
        assert alice.delete(f"/api/v1/tokens/{created['id']}").status_code == 200
        assert c.get("/api/v1/projects").status_code == 401


def test_expired_token_gets_401(people, sec_app, engine):
    created = people.clients["alice"].post("/api/v1/tokens", json={"name": "old"}).json()
    with Session(engine) as s:
        row = s.get(ApiToken, created["id"])
        row.expires_at = time.time() - 1
        s.add(row)
        s.commit()
    with TestClient(sec_app, headers={"Authorization": f"Bearer {created['token']}"}) as c:
        assert c.get("/api/v1/projects").status_code == 401


def test_other_users_token_is_hidden(people):
    bob_token = people.tokens["bob"]["id"]
    assert people.clients["alice"].delete(f"/api/v1/tokens/{bob_token}").status_code == 404
    assert people.clients["alice"].delete("/api/v1/tokens/does-not-exist").status_code == 404


def test_only_platform_admins_mint_tokens_for_others(people):
    r = people.clients["dora"].post("/api/v1/admin/tokens", json={"name": "x", "user": "alice"})
    assert r.status_code == 403


def test_agent_token_cannot_use_user_routes(root, sec_app):
    r = root.post("/api/v1/admin/tokens", json={"name": "agent-inno-1", "kind": "agent", "node": "inno-1"})
    assert r.status_code == 201, r.text
    assert r.json()["token"].startswith("cba_")
    with TestClient(sec_app, headers={"Authorization": f"Bearer {r.json()['token']}"}) as c:
        assert c.get("/api/v1/projects").status_code == 403
        assert c.get("/api/v1/jobs").status_code == 403
        assert c.post("/api/v1/tokens", json={"name": "x"}).status_code == 403


def test_agent_token_needs_a_node(root):
    assert root.post("/api/v1/admin/tokens", json={"name": "a", "kind": "agent"}).status_code == 422


# ------------------------------------------------------------------ memberships


@pytest.mark.parametrize(
    "name, who, path, body, status",
    [
        ("member cannot add members", "alice", "/api/v1/projects/ouh-liver/members", {"user": "sam", "role": "member"}, 403),
        ("project-admin adds a member", "pat", "/api/v1/projects/ouh-liver/members", {"user": "eve", "role": "member"}, 201),
        ("project-admin: foreign project hidden", "pat", "/api/v1/projects/slb-cardio/members", {"user": "pat", "role": "member"}, 404),
        ("project-admin cannot make dept-admins", "pat", "/api/v1/departments/ouh/members", {"user": "pat", "role": "department-admin"}, 403),
        ("dept-admin adds in its department", "dora", "/api/v1/projects/ouh-radiology/members", {"user": "eve", "role": "project-admin"}, 201),
        ("dept-admin: other department hidden", "dora", "/api/v1/projects/slb-cardio/members", {"user": "dora", "role": "member"}, 404),
        ("dept-admin cannot make dept-admins", "dora", "/api/v1/departments/ouh/members", {"user": "eve", "role": "department-admin"}, 403),
        ("ops-viewer cannot add members", "olga", "/api/v1/projects/ouh-liver/members", {"user": "olga", "role": "member"}, 403),
        ("unknown user", "pat", "/api/v1/projects/ouh-liver/members", {"user": "nobody-here", "role": "member"}, 422),
        ("unknown role", "pat", "/api/v1/projects/ouh-liver/members", {"user": "eve", "role": "owner"}, 422),
    ],
)
def test_membership_escalation(people, name, who, path, body, status):
    r = people.clients[who].post(path, json=body)
    assert r.status_code == status, r.text


def test_grant_applies_immediately_and_revoke_removes_access(people, root):
    sam = people.clients["sam"]
    assert sam.get("/api/v1/projects/ouh-heart-x/usage").status_code == 404  # unknown
    assert sam.get("/api/v1/projects/svs-pathology/usage").status_code == 404  # foreign
    assert root.post("/api/v1/projects/svs-pathology/members", json={"user": "sam", "role": "member"}).status_code == 201
    assert sam.get("/api/v1/projects/svs-pathology/usage").status_code == 200
    assert root.delete("/api/v1/projects/svs-pathology/members/sam", params={"role": "member"}).status_code == 204
    assert sam.get("/api/v1/projects/svs-pathology/usage").status_code == 404


def test_disabled_user_loses_all_grants(people, root):
    root.post("/api/v1/admin/users", json={"id": "carl"})
    root.post("/api/v1/projects/ouh-liver/members", json={"user": "carl", "role": "member"})
    tok = root.post("/api/v1/admin/tokens", json={"name": "carl", "user": "carl"}).json()["token"]
    with TestClient(people.app, headers={"Authorization": f"Bearer {tok}"}) as c:
        assert c.get("/api/v1/projects/ouh-liver/usage").status_code == 200
        assert root.patch("/api/v1/admin/users/carl", json={"disabled": True}).status_code == 200
        assert c.get("/api/v1/projects/ouh-liver/usage").status_code == 404


# ------------------------------------------------------------------ departments and projects


def test_project_update_needs_if_match_and_refuses_stale(people):
    dora = people.clients["dora"]
    g = dora.get("/api/v1/projects/ouh-radiology")
    assert g.status_code == 200
    etag = g.headers["etag"]
    assert dora.patch("/api/v1/projects/ouh-radiology", json={"max_running": 5}).status_code == 428
    ok = dora.patch("/api/v1/projects/ouh-radiology", json={"max_running": 5}, headers={"If-Match": etag})
    assert ok.status_code == 200, ok.text
    assert ok.json()["max_running"] == 5 and ok.headers["etag"] != etag
    stale = dora.patch("/api/v1/projects/ouh-radiology", json={"max_running": 6}, headers={"If-Match": etag})
    assert stale.status_code == 412 and stale.json()["error"]["code"] == "STALE_ETAG"


def test_project_fields_are_validated(people):
    dora = people.clients["dora"]
    etag = dora.get("/api/v1/projects/ouh-radiology").headers["etag"]
    for bad in ({"max_running": -1}, {"status": "x"}, {"department": "slb"}, {"weight": 0}):
        r = dora.patch("/api/v1/projects/ouh-radiology", json=bad, headers={"If-Match": etag})
        assert r.status_code == 422, (bad, r.text)


def _process_job(**over):
    body = {"name": "host-1", "project": "ouh-liver", "image": "", "runtime": "process",
            "command": ["sh", "-c", "echo hi"], "resources": {"gpus": 0, "cpus": 1, "memory_gb": 1}}
    body.update(over)
    return body


def _set_process_runtime(client, project: str, allowed: bool):
    etag = client.get(f"/api/v1/projects/{project}").headers["etag"]
    return client.patch(f"/api/v1/projects/{project}", json={"allow_process_runtime": allowed},
                        headers={"If-Match": etag})


def test_process_runtime_is_a_platform_admins_decision_per_project(people, root, settings, engine):
    """runtime 'process' is host code execution: only for projects a platform-admin enabled,
    on a deployment that allows it at all; refusals are 403 with a code, foreign projects stay
    hidden, and a revocation takes effect on the next submit."""
    alice, dora, sam = people.clients["alice"], people.clients["dora"], people.clients["sam"]
    settings.allow_process_runtime = True
    try:
        r = alice.post("/api/v1/jobs", json=_process_job())
        assert r.status_code == 403 and r.json()["error"]["code"] == "PROCESS_RUNTIME_NOT_ALLOWED", r.text
        assert alice.get("/api/v1/projects/ouh-liver").json()["allow_process_runtime"] is False
        # a department-admin manages the project, but not this
        r = _set_process_runtime(dora, "ouh-liver", True)
        assert r.status_code == 403, r.text
        r = dora.post("/api/v1/departments/ouh/projects", json={"id": "ouh-hostly", "allow_process_runtime": True})
        assert r.status_code == 403, r.text
        r = _set_process_runtime(root, "ouh-liver", True)
        assert r.status_code == 200 and r.json()["allow_process_runtime"] is True, r.text
        assert "project.update" in audit_actions(engine, target_id="ouh-liver")
        listed = {p["id"]: p for p in alice.get("/api/v1/projects").json()["items"]}
        assert listed["ouh-liver"]["allow_process_runtime"] is True  # shown to the project's members
        assert alice.post("/api/v1/jobs", json=_process_job()).status_code == 201
        # still never a host-steering variable, and a foreign project is still "unknown"
        r = alice.post("/api/v1/jobs", json=_process_job(env={"LD_PRELOAD": "/tmp/x.so", "PATH": "/tmp"}))
        assert r.status_code == 422 and r.json()["error"]["code"] == "ENV_NAME_UNSAFE", r.text
        assert {p["field"] for p in r.json()["error"]["details"]["problems"]} == {"env.LD_PRELOAD", "env.PATH"}
        r = sam.post("/api/v1/jobs", json=_process_job())
        assert r.status_code == 422 and r.json()["error"]["code"] == "UNKNOWN_PROJECT"
        # the switch of the whole deployment wins over the project's permission
        settings.allow_process_runtime = False
        r = alice.post("/api/v1/jobs", json=_process_job())
        assert r.status_code == 403 and r.json()["error"]["code"] == "PROCESS_RUNTIME_DISABLED"
        settings.allow_process_runtime = True
        assert _set_process_runtime(root, "ouh-liver", False).status_code == 200
        r = alice.post("/api/v1/jobs", json=_process_job())
        assert r.status_code == 403 and r.json()["error"]["code"] == "PROCESS_RUNTIME_NOT_ALLOWED"
    finally:
        settings.allow_process_runtime = False
        _set_process_runtime(root, "ouh-liver", False)


def test_container_env_may_set_any_name_but_no_line_breaks(people):
    alice = people.clients["alice"]
    body = {"name": "c-1", "project": "ouh-liver", "image": "localhost/busybox:test",
            "command": ["/bin/busybox", "true"], "env": {"PATH": "/opt/x/bin", "LD_LIBRARY_PATH": "/opt/x/lib"}}
    assert alice.post("/api/v1/jobs", json=body).status_code == 201  # inside the container: ordinary
    body["env"] = {"A": "x\nCUDA_VISIBLE_DEVICES=0"}
    r = alice.post("/api/v1/jobs", json=body)
    assert r.status_code == 422 and r.json()["error"]["code"] == "ENV_VALUE_INVALID", r.text


def test_dept_admin_creates_projects_only_in_its_department(people):
    dora = people.clients["dora"]
    assert dora.post("/api/v1/departments/ouh/projects", json={"id": "ouh-new-1"}).status_code == 201
    assert dora.post("/api/v1/departments/slb/projects", json={"id": "slb-new-1"}).status_code == 404
    assert people.clients["alice"].post("/api/v1/departments/ouh/projects", json={"id": "ouh-new-2"}).status_code == 403


def test_department_lists_are_scoped(people, root):
    ids = lambda c: {d["id"] for d in c.get("/api/v1/departments").json()["items"]}  # noqa: E731
    assert ids(people.clients["alice"]) == {"ouh"}
    assert ids(people.clients["sam"]) == {"slb"}
    assert ids(people.clients["olga"]) >= {"ouh", "slb", "svs"}
    assert ids(root) >= {"ouh", "slb", "svs", "shs", "rit"}


def test_only_platform_admins_create_departments(people, root):
    assert people.clients["dora"].post("/api/v1/departments", json={"id": "xyz", "name": "X"}).status_code == 403
    assert root.post("/api/v1/departments", json={"id": "xyz", "name": "X"}).status_code == 201


# ------------------------------------------------------------------ quotas


def _quota(client, owner_kind, owner_id, resource="gpus", pool="innovation"):
    items = client.get("/api/v1/quotas", params={"owner_kind": owner_kind, "owner_id": owner_id}).json()["items"]
    return next(q for q in items if q["resource"] == resource and q["pool"] == pool)


def test_quota_update_with_etag(people):
    dora = people.clients["dora"]
    q = _quota(dora, "project", "ouh-radiology")
    url = f"/api/v1/quotas/{q['id']}"
    assert dora.patch(url, json={"nominal": 1}).status_code == 428
    ok = dora.patch(url, json={"nominal": 1}, headers={"If-Match": q["etag"]})
    assert ok.status_code == 200, ok.text
    assert ok.json()["version"] == q["version"] + 1 and ok.headers["etag"] == ok.json()["etag"]
    stale = dora.patch(url, json={"nominal": 2}, headers={"If-Match": q["etag"]})
    assert stale.status_code == 412
    assert stale.json()["error"]["details"]["current_etag"] == ok.json()["etag"]


@pytest.mark.parametrize(
    "name, change, code",
    [
        ("guarantee above nominal", {"guaranteed": 3, "nominal": 2}, "GUARANTEE_ABOVE_NOMINAL"),
        ("nominal above limit", {"nominal": 3, "limit": 2}, "NOMINAL_ABOVE_LIMIT"),
        ("children's guarantees exceed department nominal", {"guaranteed": 5, "nominal": 5}, "GUARANTEES_EXCEED_PARENT"),
    ],
)
def test_quota_validation_explains(people, name, change, code):
    dora = people.clients["dora"]
    q = _quota(dora, "project", "ouh-liver")
    r = dora.patch(f"/api/v1/quotas/{q['id']}", json=change, headers={"If-Match": q["etag"]})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "QUOTA_INVALID"
    assert code in {p["code"] for p in err["details"]["problems"]}
    assert all(p["message"] for p in err["details"]["problems"])


def test_quota_write_permissions(people, root):
    dept_q = _quota(root, "department", "ouh")
    # department quota: platform only
    r = people.clients["dora"].patch(f"/api/v1/quotas/{dept_q['id']}", json={"nominal": 5},
                                     headers={"If-Match": dept_q["etag"]})
    assert r.status_code == 403
    # foreign project quota: hidden
    slb_q = _quota(root, "project", "slb-cardio")
    r = people.clients["dora"].patch(f"/api/v1/quotas/{slb_q['id']}", json={"nominal": 1},
                                     headers={"If-Match": slb_q["etag"]})
    assert r.status_code == 404
    # a member cannot change its own project's quota
    own = _quota(root, "project", "ouh-liver")
    r = people.clients["alice"].patch(f"/api/v1/quotas/{own['id']}", json={"nominal": 1},
                                      headers={"If-Match": own["etag"]})
    assert r.status_code == 403


def test_quota_lists_never_show_foreign_rows(people):
    items = people.clients["sam"].get("/api/v1/quotas").json()["items"]
    owners = {(q["owner_kind"], q["owner_id"]) for q in items}
    assert owners and owners <= {("project", "slb-cardio"), ("department", "slb")}


def test_quota_create_and_delete(root):
    r = root.post("/api/v1/quotas", json={"owner_kind": "project", "owner_id": "rit-platform", "pool": "innovation",
                                          "resource": "cpus", "guaranteed": 0, "nominal": 4, "limit": 8})
    assert r.status_code == 201, r.text
    q = r.json()
    dup = root.post("/api/v1/quotas", json={"owner_kind": "project", "owner_id": "rit-platform", "pool": "innovation",
                                            "resource": "cpus", "nominal": 1})
    assert dup.status_code == 409
    assert root.delete(f"/api/v1/quotas/{q['id']}").status_code == 428
    assert root.delete(f"/api/v1/quotas/{q['id']}", headers={"If-Match": q["etag"]}).status_code == 204
    assert root.get(f"/api/v1/quotas/{q['id']}").status_code == 404


def test_pool_admin(people, root):
    assert people.clients["dora"].put("/api/v1/pools/innovation", json={"description": "x"}).status_code == 403
    r = root.put("/api/v1/pools/innovation", json={"description": "shared by innovation teams"})
    assert r.status_code == 200 and r.json()["class"] == "innovation"


# ------------------------------------------------------------------ usage


def test_usage_shows_entitlement_usage_borrowing_and_budget(people, root, engine):
    with Session(engine) as s:
        for i, (project, gpus) in enumerate([("ouh-liver", 3), ("slb-cardio", 0)]):
            if gpus:
                s.add(Job(id=f"usage-{i}", name="u", project_id=project, status="RUNNING", gpus=gpus, workers=1,
                          flavor_pool="innovation", flavor_gpu_model="A100", started_at=time.time() - 3600,
                          max_runtime_s=7200))
        s.commit()
    r = people.clients["alice"].get("/api/v1/projects/ouh-liver/usage")
    assert r.status_code == 200, r.text
    u = r.json()
    assert u["project"] == "ouh-liver" and u["department"] == "ouh"
    assert any(e["resource"] == "gpus" for e in u["entitlement"])
    gpus = [x for x in u["usage"] if x["resource"] == "gpus"]
    assert gpus and gpus[0]["in_use"] >= 3
    assert u["borrowing"] and u["borrowing"][0]["amount"] > 0
    assert u["budget"]["reserved"] > 0
    lent = people.clients["sam"].get("/api/v1/projects/slb-cardio/usage").json()["lending"]
    assert any(b["project"] == "ouh-liver" for entry in lent for b in entry["to"])


@pytest.mark.parametrize("who, status", [("alice", 200), ("olga", 200), ("dora", 200), ("sam", 404)])
def test_usage_visibility(people, who, status):
    assert people.clients[who].get("/api/v1/projects/ouh-liver/usage").status_code == status


# ------------------------------------------------------------------ audit


def _latest(engine, action):
    from broker.auth.policy import EVERYTHING

    with Session(engine) as s:
        items = admin_audit.query(s, EVERYTHING, action=action, limit=1)["items"]
    return items[0] if items else None


def _do_user_create(root, tag):
    assert root.post("/api/v1/admin/users", json={"id": f"u-{tag}"}).status_code == 201
    return f"u-{tag}"


def _do_grant(root, tag):
    uid = _do_user_create(root, tag)
    r = root.post("/api/v1/projects/rit-platform/members", json={"user": uid, "role": "member"})
    assert r.status_code == 201
    return r.json()["id"]


def _do_revoke(root, tag):
    mid = _do_grant(root, tag)
    assert root.delete(f"/api/v1/projects/rit-platform/members/u-{tag}", params={"role": "member"}).status_code == 204
    return mid


def _do_token_create(root, tag):
    uid = _do_user_create(root, tag)
    r = root.post("/api/v1/admin/tokens", json={"name": "t", "user": uid})
    assert r.status_code == 201
    return r.json()["id"]


def _do_token_revoke(root, tag):
    tid = _do_token_create(root, tag)
    assert root.delete(f"/api/v1/tokens/{tid}").status_code == 200
    return tid


def _do_project_update(root, tag):
    etag = root.get("/api/v1/projects/rit-platform").headers["etag"]
    r = root.patch("/api/v1/projects/rit-platform", json={"name": f"n-{tag}"}, headers={"If-Match": etag})
    assert r.status_code == 200
    return "rit-platform"


def _do_department_create(root, tag):
    assert root.post("/api/v1/departments", json={"id": f"d-{tag}", "name": "D"}).status_code == 201
    return f"d-{tag}"


def _do_quota_update(root, tag):
    q = _quota(root, "project", "rit-platform")
    r = root.patch(f"/api/v1/quotas/{q['id']}", json={"limit": 7}, headers={"If-Match": q["etag"]})
    assert r.status_code == 200, r.text
    return str(q["id"])


def _do_pool_update(root, tag):
    assert root.put("/api/v1/pools/innovation", json={"description": f"d-{tag}"}).status_code == 200
    return "innovation"


@pytest.mark.parametrize(
    "action, do",
    [
        ("user.create", _do_user_create),
        ("membership.grant", _do_grant),
        ("membership.revoke", _do_revoke),
        ("token.create", _do_token_create),
        ("token.revoke", _do_token_revoke),
        ("project.update", _do_project_update),
        ("department.create", _do_department_create),
        ("quota.update", _do_quota_update),
        ("pool.update", _do_pool_update),
    ],
)
def test_admin_action_writes_an_audit_entry(root, engine, action, do):
    import uuid

    target = do(root, uuid.uuid4().hex[:8])
    e = _latest(engine, action)
    assert e is not None and e["target_id"] == target and e["outcome"] == "ok"
    assert e["actor"].startswith("token:") and e["source"] and e["changes"]


def test_audit_entries_carry_who_where_and_diff_without_secrets(people, root, engine):
    created = people.clients["alice"].post("/api/v1/tokens", json={"name": "audited"}).json()
    with Session(engine) as s:
        e = admin_audit.query(s, __import__("broker.auth.policy", fromlist=["EVERYTHING"]).EVERYTHING,
                              action="token.create", target_id=created["id"])["items"][0]
    assert e["actor"] == "alice" and e["source"] and e["token_prefix"] == people.tokens["alice"]["prefix"]
    assert created["token"] not in str(e)
    assert any(c["path"] == "name" and c["after"] == "audited" for c in e["changes"])


def test_audit_query_is_scoped(people, root):
    assert people.clients["alice"].get("/api/v1/audit").status_code == 403
    assert people.clients["olga"].get("/api/v1/audit").status_code == 403
    dora = people.clients["dora"].get("/api/v1/audit", params={"limit": 500})
    assert dora.status_code == 200
    assert {e["department"] for e in dora.json()["items"]} == {"ouh"}
    full = root.get("/api/v1/audit", params={"limit": 2})
    assert full.status_code == 200 and len(full.json()["items"]) == 2 and full.json()["next_cursor"]
    nxt = root.get("/api/v1/audit", params={"limit": 2, "cursor": full.json()["next_cursor"]}).json()
    assert nxt["items"][0]["id"] < full.json()["items"][-1]["id"]


def test_audit_chain_is_intact_and_detects_edits(root, engine):
    from broker.models import AuditEntry

    from broker.services.admin.audit import Caller

    with Session(engine) as s:
        for i in range(2):
            admin_audit.record(s, Caller(token_id="t", subject="token:t"), action="test.chain", target_kind="x",
                               target_id=str(i))
        s.commit()
    with Session(engine) as s:
        assert admin_audit.verify(s) is None
        from sqlmodel import select as _select

        e = s.exec(_select(AuditEntry).order_by(AuditEntry.id.desc())).first()
        original = e.actor
        e.actor = "mallory"
        s.add(e)
        s.flush()
        assert admin_audit.verify(s) == e.id
        e.actor = original
        s.rollback()


def test_audit_chain_survives_concurrent_writers(engine):
    """Writers serialize on the chain (advisory lock on PostgreSQL, one writer on SQLite)."""
    import threading

    from broker.services.admin.audit import Caller

    caller = Caller(token_id="t-conc", subject="token:t-conc")
    errors = []

    def write(i):
        try:
            with Session(engine) as s:
                admin_audit.record(s, caller, action="test.concurrent", target_kind="x", target_id=str(i),
                                   after={"i": i})
                s.commit()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=write, args=(i,)) for i in range(12)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not errors
    with Session(engine) as s:
        assert admin_audit.verify(s) is None


# ------------------------------------------------------------------ job submits in the audit chain


def test_job_submits_are_sealed_into_the_audit_chain_once(people, root, engine):
    """A submit commits with its job event; the audit log shows it (who, from where, what,
    request id) as a chained `job.submit` entry, exactly once however often sealing runs,
    and the job's own events do not expose the caller's address."""
    alice = people.clients["alice"]
    r = alice.post("/api/v1/jobs", json=_job_body("ouh-liver"), headers={"X-Request-Id": "req-audit-1"})
    assert r.status_code == 201, r.text
    jid = r.json()["id"]
    items = root.get("/api/v1/audit", params={"action": "job.submit", "target_id": jid}).json()["items"]
    assert len(items) == 1, items
    e = items[0]
    assert (e["actor"], e["project"], e["department"], e["request_id"]) == ("alice", "ouh-liver", "ouh", "req-audit-1")
    assert e["source"] and e["token_prefix"] == people.tokens["alice"]["prefix"]
    assert e["after"]["resources"]["gpus"] == 1 and e["after"]["image"]
    assert admin_audit.seal_pending(engine) == 0  # nothing left: sealing again adds nothing
    assert len(root.get("/api/v1/audit", params={"action": "job.submit", "target_id": jid}).json()["items"]) == 1
    with Session(engine) as s:
        assert admin_audit.verify(s) is None
    events = alice.get(f"/api/v1/jobs/{jid}/events").json()["items"]
    assert all("audit" not in ev["details"] for ev in events)


def test_concurrent_submits_and_admin_changes_keep_one_intact_chain(people, root, engine):
    import threading

    alice = people.clients["alice"]
    ids, errors = [], []

    def submit(n):
        for _ in range(n):
            r = alice.post("/api/v1/jobs", json=_job_body("ouh-liver"))
            (ids.append(r.json()["id"]) if r.status_code == 201 else errors.append(r.text))

    ts = [threading.Thread(target=submit, args=(10,)) for _ in range(3)]
    [t.start() for t in ts]
    for i in range(5):
        _do_pool_update(root, f"conc{i}")
        admin_audit.seal_pending(engine)
    [t.join() for t in ts]
    assert not errors and len(ids) == 30
    admin_audit.seal_pending(engine)
    with Session(engine) as s:
        from sqlmodel import select as _select

        from broker.models import AuditEntry

        sealed = s.exec(_select(AuditEntry.target_id).where(AuditEntry.action == "job.submit",
                                                            AuditEntry.target_id.in_(ids))).all()
        assert sorted(sealed) == sorted(ids)  # each once
        assert admin_audit.verify(s) is None


def _job_body(project: str) -> dict:
    from tests.broker.conftest import job_body

    return job_body(project=project)


def test_audit_verify_route_walks_the_whole_chain_and_finds_an_edit(people, root, engine):
    from sqlmodel import select as _select

    from broker.models import AuditEntry

    _do_pool_update(root, "verify")
    r = root.get("/api/v1/audit/verify")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["intact"] is True and body["first_broken_id"] is None and body["entries"] > 1
    with Session(engine) as s:
        assert admin_audit.verify_report(s, batch=3) == body  # batching changes nothing
    assert people.clients["dora"].get("/api/v1/audit/verify").status_code == 403  # spans every department
    with Session(engine) as s:
        middle = s.exec(_select(AuditEntry).order_by(AuditEntry.id).offset(body["entries"] // 2)).first()
        mid_id, original = middle.id, middle.after
        middle.after = {"forged": True}
        s.add(middle)
        s.commit()
    try:
        broken = root.get("/api/v1/audit/verify").json()
        assert broken == {"intact": False, "entries": broken["entries"], "first_broken_id": mid_id}
    finally:
        with Session(engine) as s:
            e = s.get(AuditEntry, mid_id)
            e.after = original
            s.add(e)
            s.commit()
    assert root.get("/api/v1/audit/verify").json()["intact"] is True
