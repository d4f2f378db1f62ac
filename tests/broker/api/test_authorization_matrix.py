"""Authorization matrix generated from the OpenAPI document.

Every operation of `app.openapi()` must have an entry in ROUTES (a new route without one fails
`test_every_route_has_an_authorization_entry`: authorization is decided for each route, never
forgotten). Each entry names the policy action and how to build an own and a foreign object;
the expected status of every (route, role, own/foreign) cell is computed from the *pure*
policy (`broker.auth.policy.authorize`) with principals built here, so the test checks
that the HTTP layer implements the policy: ALLOW -> the route's success status, HIDE -> 404
(422 for a project named in a submit body, like a missing one), DENY -> 403. Without a token
every non-public route answers 401; agent tokens get 403 on every user route. List routes
must not return a foreign row, and no response may contain a foreign job's id or command.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Callable

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from broker.models import ApiToken
from broker.auth.policy import (
    Action, Decision, Grant, Principal, Ref, Resource, Role, authorize, can_grant, list_scope,
)
from tests.broker.conftest import job_body

OWN = {"project": "ouh-liver", "department": "ouh"}
FOREIGN = {"project": "slb-cardio", "department": "slb"}
SECRET_CMD = "secret-command-{}"


# ------------------------------------------------------------------ the cast


@dataclass
class Actor:
    name: str
    client: TestClient | None
    principal: Principal | None  # what the policy should see (None: anonymous / agent)
    user: str | None = None


@pytest.fixture(scope="module")
def cast(app, client):
    root_id = _token_id(app, client.headers["authorization"].split()[1])
    actors = {"platform-admin": Actor("platform-admin", client, Principal(f"token:{root_id}", (Grant(Role.PLATFORM_ADMIN),)))}
    specs = [
        ("member", "m-alice", "member", OWN),
        ("project-admin", "m-pat", "project-admin", OWN),
        ("department-admin", "m-dora", "department-admin", OWN),
    ]
    for role_name, uid, role, scope in specs:
        assert client.post("/api/v1/admin/users", json={"id": uid}).status_code in (201, 409)
        if role in ("member", "project-admin"):
            r = client.post(f"/api/v1/projects/{scope['project']}/members", json={"user": uid, "role": role})
            grant = Grant(Role(role), department=scope["department"], project=scope["project"])
        else:
            r = client.post(f"/api/v1/departments/{scope['department']}/members", json={"user": uid, "role": role})
            grant = Grant(Role(role), department=scope["department"])
        assert r.status_code == 201, r.text
        tok = client.post("/api/v1/admin/tokens", json={"name": uid, "user": uid}).json()["token"]
        actors[role_name] = Actor(role_name, _client(app, tok), Principal(uid, (grant,)), user=uid)
    r = client.post("/api/v1/admin/tokens", json={"name": "ops", "role": "ops-viewer"}).json()
    actors["ops-viewer"] = Actor("ops-viewer", _client(app, r["token"]), Principal(f"token:{r['id']}", (Grant(Role.OPS_VIEWER),)))
    r = client.post("/api/v1/admin/tokens", json={"name": "agent", "kind": "agent", "node": "inno-1"}).json()
    actors["agent"] = Actor("agent", _client(app, r["token"]), None)
    actors["anonymous"] = Actor("anonymous", _client(app, None), None)
    for u in ("m-eve", "m-sam"):
        assert client.post("/api/v1/admin/users", json={"id": u}).status_code in (201, 409)
    yield actors
    for a in actors.values():
        if a.client is not client:
            a.client.__exit__(None, None, None)


def _client(app, token):
    c = TestClient(app, headers={"Authorization": f"Bearer {token}"} if token else {})
    c.__enter__()
    return c


def _token_id(app, plaintext):
    with Session(app.state.services.engine) as s:
        prefix = "_".join(plaintext.split("_")[:2])
        return s.exec(select(ApiToken).where(ApiToken.prefix == prefix)).one().id


# ------------------------------------------------------------------ cases


@dataclass
class Call:
    path: str
    json: dict | None = None
    headers: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    ref: Ref | None = None  # the object (None: non-object action)
    grant: Grant | None = None  # for membership routes: the grant given / taken


@dataclass
class Route:
    method: str
    path: str
    action: Action | None  # None: public or custom (see `expect`)
    ok: tuple[int, ...]
    prepare: Callable  # (root, scope, actor) -> Call
    hide_status: int = 404
    public: bool = False
    list_of: Resource | None = None  # list route: rows must be within list_scope
    agent_ok: bool = False  # the one route agents may call (telemetry push)


def _job(root, scope, actor=None):
    j = root.post("/api/v1/jobs", json=job_body(project=scope["project"], command=["run", SECRET_CMD.format(scope["project"])]))
    assert j.status_code == 201, j.text
    return j.json()["id"], Ref(Resource.JOB, department=scope["department"], project=scope["project"],
                               owner=_root_subject(root))


def _root_subject(root):
    return f"token:{_token_id(root.app, root.headers['authorization'].split()[1])}"


def _project_ref(scope):
    return Ref(Resource.PROJECT, department=scope["department"], project=scope["project"])


def _dept_ref(scope):
    return Ref(Resource.DEPARTMENT, department=scope["department"])


def job_call(suffix=""):
    def prep(root, scope, actor):
        jid, ref = _job(root, scope)
        return Call(f"/api/v1/jobs/{jid}{suffix}", ref=ref)
    return prep


def _secret(root, scope) -> str:
    name = "s-" + uuid.uuid4().hex[:8]
    r = root.put(f"/api/v1/projects/{scope['project']}/secrets/{name}", json={"value": "value-" + name})
    assert r.status_code == 201, r.text
    return name


def _dataset_body(scope) -> dict:
    name = "ds-" + uuid.uuid4().hex[:8]
    return {"name": name, "department": scope["department"], "path": f"/data/{name}", "shared": True}


def _dataset(root, scope, grant: bool = False) -> str:
    body = _dataset_body(scope)
    r = root.post("/api/v1/datasets", json=body)
    assert r.status_code == 201, r.text
    if grant:
        r = root.put(f"/api/v1/datasets/{body['name']}/grants/{scope['project']}", json={"mode": "ro"})
        assert r.status_code == 200, r.text
    return body["name"]


def quota_of(root, scope):
    items = root.get("/api/v1/quotas", params={"owner_kind": "project", "owner_id": scope["project"]}).json()["items"]
    return next(q for q in items if q["resource"] == "gpus" and q["pool"] == "innovation")


def fresh_quota(root, scope):
    r = root.post("/api/v1/quotas", json={"owner_kind": "project", "owner_id": scope["project"], "pool": "innovation",
                                          "gpu_model": "m-" + uuid.uuid4().hex[:8], "resource": "gpus", "nominal": 0})
    assert r.status_code == 201, r.text
    return r.json()


def idle_policy_delete(root, scope, actor):
    assert root.put("/api/v1/admin/idle-policies/operation", json={}).status_code == 200
    return Call("/api/v1/admin/idle-policies/operation")


def own_subscription(root, scope, actor):
    from broker.models import NotifySubscription

    row = NotifySubscription(owner=actor.principal.subject, events=["job.failed"], channel="email", target="a@b.test",
                             project_id=scope["project"])
    with Session(root.app.state.services.engine) as s:
        s.add(row)
        s.commit()
        return Call(f"/api/v1/notifications/subscriptions/{row.id}")


def own_token(root, scope, actor):
    owner = actor.user if (actor.user and scope is OWN) else "m-sam"
    t = root.post("/api/v1/admin/tokens", json={"name": "victim", "user": owner}).json()
    return Call(f"/api/v1/tokens/{t['id']}", ref=Ref(Resource.TOKEN, owner=owner))


def proj_member_del(root, scope, actor):
    r = root.post(f"/api/v1/projects/{scope['project']}/members", json={"user": "m-eve", "role": "member"})
    assert r.status_code == 201
    g = Grant(Role.MEMBER, department=scope["department"], project=scope["project"])
    return Call(f"/api/v1/projects/{scope['project']}/members/m-eve", params={"role": "member"}, grant=g)


def dept_member_del(root, scope, actor):
    r = root.post(f"/api/v1/departments/{scope['department']}/members", json={"user": "m-eve", "role": "ops-viewer"})
    assert r.status_code == 201
    g = Grant(Role.OPS_VIEWER, department=scope["department"])
    return Call(f"/api/v1/departments/{scope['department']}/members/m-eve", params={"role": "ops-viewer"}, grant=g)


def simple(path, ref=None):
    return lambda root, scope, actor: Call(path.format(**scope), ref=ref(scope) if ref else None)


def etagged(path, ref, body):
    def prep(root, scope, actor):
        p = path.format(**scope)
        etag = root.get(p).headers["etag"]
        return Call(p, json=body(root, scope), headers={"If-Match": etag}, ref=ref(scope))
    return prep


def quota_patch(root, scope, actor):
    q = quota_of(root, scope)
    return Call(f"/api/v1/quotas/{q['id']}", json={"nominal": q["nominal"]}, headers={"If-Match": q["etag"]},
                ref=_project_ref(scope))


def quota_delete(root, scope, actor):
    q = fresh_quota(root, scope)
    return Call(f"/api/v1/quotas/{q['id']}", headers={"If-Match": q["etag"]}, ref=_project_ref(scope))


def _tele_job(root, scope, suffix):
    jid, ref = _job(root, scope)
    return Call(f"/api/v1/telemetry/jobs/{jid}{suffix}", ref=ref)


def setting_put(root, scope, actor):
    items = root.get("/api/v1/admin/settings").json()["items"]
    cur = next(x for x in items if x["key"] == "max_runtime_s.operation")
    return Call("/api/v1/admin/settings/max_runtime_s.operation", json={"value": {"seconds": None}},
                headers={"If-Match": cur["etag"]})


def whatif_run(root, scope, actor):
    runs = root.get("/api/v1/capacity/whatif").json()["items"]
    if not runs:
        root.post("/api/v1/capacity/whatif", json={"weeks": 1})
        runs = root.get("/api/v1/capacity/whatif").json()["items"]
    return Call(f"/api/v1/capacity/whatif/{runs[0]['id']}")


def _service(root, scope):
    """A service of `scope`'s project deployed by root (its owner), with replica 0 submitted."""
    body = {"name": "s-" + uuid.uuid4().hex[:8], "project": scope["project"], "image": "localhost/busybox:test",
            "command": ["/bin/busybox", "httpd", "-f"], "resources": {"gpus": 0, "cpus": 0.5, "memory_gb": 0.5},
            "replicas": {"min": 1, "max": 2}}
    r = root.post("/api/v1/services", json=body)
    assert r.status_code == 201, r.text
    root.app.state.services.service_controller.tick()
    return r.json()["id"], Ref(Resource.JOB, department=scope["department"], project=scope["project"],
                               owner=_root_subject(root))


def service_call(suffix="", json=None):
    def prep(root, scope, actor):
        sid, ref = _service(root, scope)
        return Call(f"/api/v1/services/{sid}{suffix}", ref=ref, json=json)
    return prep


ROUTES = [
    Route("GET", "/healthz", None, (200,), simple("/healthz"), public=True),
    Route("GET", "/readyz", None, (200,), simple("/readyz"), public=True),
    Route("POST", "/api/v1/jobs", Action.JOB_SUBMIT, (201,),
          lambda root, scope, actor: Call("/api/v1/jobs", json=job_body(project=scope["project"]), ref=_project_ref(scope)),
          hide_status=422),
    Route("GET", "/api/v1/jobs", Action.NODE_READ, (200,), simple("/api/v1/jobs"), list_of=Resource.JOB),
    Route("GET", "/api/v1/jobs/{job_id}", Action.JOB_READ, (200,), job_call()),
    Route("POST", "/api/v1/jobs/{job_id}/cancel", Action.JOB_CANCEL, (200,), job_call("/cancel")),
    Route("GET", "/api/v1/jobs/{job_id}/events", Action.JOB_READ, (200,), job_call("/events")),
    Route("GET", "/api/v1/jobs/{job_id}/logs", Action.JOB_LOGS, (200,), job_call("/logs")),
    Route("GET", "/api/v1/projects", Action.NODE_READ, (200,), simple("/api/v1/projects"), list_of=Resource.PROJECT),
    Route("GET", "/api/v1/nodes", Action.NODE_READ, (200,), simple("/api/v1/nodes")),
    Route("GET", "/api/v1/pools", Action.POOL_READ, (200,), simple("/api/v1/pools")),
    Route("GET", "/api/v1/tokens", Action.TOKEN_CREATE_OWN, (200,), simple("/api/v1/tokens")),
    # ownerless tokens (bootstrap admin, scoped ops token) cannot own new tokens: 422 NO_TOKEN_OWNER
    Route("POST", "/api/v1/tokens", Action.TOKEN_CREATE_OWN, (201, 422),
          lambda root, scope, actor: Call("/api/v1/tokens", json={"name": "t", "ttl_days": 1})),
    Route("DELETE", "/api/v1/tokens/{token_id}", Action.TOKEN_REVOKE, (200,), own_token),
    Route("POST", "/api/v1/admin/tokens", Action.TOKEN_ADMIN, (201,),
          lambda root, scope, actor: Call("/api/v1/admin/tokens", json={"name": "x", "user": "m-eve", "ttl_days": 1})),
    Route("GET", "/api/v1/admin/users", Action.USER_ADMIN, (200,), simple("/api/v1/admin/users")),
    Route("POST", "/api/v1/admin/users", Action.USER_ADMIN, (201,),
          lambda root, scope, actor: Call("/api/v1/admin/users", json={"id": "u-" + uuid.uuid4().hex[:10]})),
    Route("PATCH", "/api/v1/admin/users/{user_id}", Action.USER_ADMIN, (200,),
          lambda root, scope, actor: Call("/api/v1/admin/users/m-sam", json={"disabled": False})),
    Route("GET", "/api/v1/departments", Action.NODE_READ, (200,), simple("/api/v1/departments"),
          list_of=Resource.DEPARTMENT),
    Route("POST", "/api/v1/departments", Action.DEPARTMENT_CREATE, (201,),
          lambda root, scope, actor: Call("/api/v1/departments", json={"id": "d-" + uuid.uuid4().hex[:8], "name": "D"})),
    Route("GET", "/api/v1/departments/{dept}", Action.DEPARTMENT_READ, (200,),
          simple("/api/v1/departments/{department}", _dept_ref)),
    Route("PATCH", "/api/v1/departments/{dept}", Action.DEPARTMENT_UPDATE, (200,),
          etagged("/api/v1/departments/{department}", _dept_ref, lambda root, scope: {"weight": 1.0})),
    Route("POST", "/api/v1/departments/{dept}/projects", Action.PROJECT_CREATE, (201,),
          lambda root, scope, actor: Call(f"/api/v1/departments/{scope['department']}/projects",
                                          json={"id": "p-" + uuid.uuid4().hex[:8]}, ref=_dept_ref(scope))),
    Route("GET", "/api/v1/departments/{dept}/members", Action.DEPARTMENT_USAGE_READ, (200,),
          simple("/api/v1/departments/{department}/members", _dept_ref)),
    Route("POST", "/api/v1/departments/{dept}/members", None, (201,),
          lambda root, scope, actor: Call(f"/api/v1/departments/{scope['department']}/members",
                                          json={"user": "m-eve", "role": "ops-viewer"},
                                          grant=Grant(Role.OPS_VIEWER, department=scope["department"]))),
    Route("DELETE", "/api/v1/departments/{dept}/members/{user}", None, (204,), dept_member_del),
    Route("GET", "/api/v1/projects/{project}", Action.PROJECT_READ, (200,),
          simple("/api/v1/projects/{project}", _project_ref)),
    Route("PATCH", "/api/v1/projects/{project}", Action.PROJECT_UPDATE, (200,),
          etagged("/api/v1/projects/{project}", _project_ref, lambda root, scope: {"weight": 1.0})),
    Route("GET", "/api/v1/projects/{project}/members", Action.PROJECT_MEMBERS_READ, (200,),
          simple("/api/v1/projects/{project}/members", _project_ref)),
    Route("POST", "/api/v1/projects/{project}/members", None, (201,),
          lambda root, scope, actor: Call(f"/api/v1/projects/{scope['project']}/members",
                                          json={"user": "m-eve", "role": "member"},
                                          grant=Grant(Role.MEMBER, department=scope["department"], project=scope["project"]))),
    Route("DELETE", "/api/v1/projects/{project}/members/{user}", None, (204,), proj_member_del),
    Route("GET", "/api/v1/projects/{project}/usage", Action.PROJECT_USAGE_READ, (200,),
          simple("/api/v1/projects/{project}/usage", _project_ref)),
    Route("GET", "/api/v1/quotas", Action.NODE_READ, (200,), simple("/api/v1/quotas"), list_of=Resource.PROJECT),
    Route("POST", "/api/v1/quotas", Action.PROJECT_QUOTA_UPDATE, (201,),
          lambda root, scope, actor: Call("/api/v1/quotas", ref=_project_ref(scope), json={
              "owner_kind": "project", "owner_id": scope["project"], "pool": "innovation",
              "gpu_model": "m-" + uuid.uuid4().hex[:8], "resource": "gpus", "nominal": 0})),
    Route("GET", "/api/v1/quotas/validation", Action.AGGREGATES_READ, (200,), simple("/api/v1/quotas/validation")),
    Route("GET", "/api/v1/quotas/{quota_id}", Action.PROJECT_READ, (200,),
          lambda root, scope, actor: Call(f"/api/v1/quotas/{quota_of(root, scope)['id']}", ref=_project_ref(scope))),
    Route("PATCH", "/api/v1/quotas/{quota_id}", Action.PROJECT_QUOTA_UPDATE, (200,), quota_patch),
    Route("DELETE", "/api/v1/quotas/{quota_id}", Action.PROJECT_QUOTA_UPDATE, (204,), quota_delete),
    Route("PUT", "/api/v1/pools/{name}", Action.POOL_ADMIN, (200,),
          lambda root, scope, actor: Call("/api/v1/pools/innovation", json={"lend_to_innovation": False})),
    Route("PATCH", "/api/v1/nodes/{node_id}", Action.POOL_ADMIN, (200,),
          lambda root, scope, actor: Call("/api/v1/nodes/inno-1", json={"pool": "innovation"})),
    Route("GET", "/api/v1/audit", None, (200,), simple("/api/v1/audit")),
    Route("GET", "/api/v1/audit/verify", None, (200,), simple("/api/v1/audit/verify")),
    Route("GET", "/api/v1/admin/settings", Action.NODE_READ, (200,), simple("/api/v1/admin/settings")),
    # operations view (aggregates; per-project rows narrowed to the caller's scope)
    Route("GET", "/api/v1/overview", Action.AGGREGATES_READ, (200,), simple("/api/v1/overview")),
    Route("GET", "/metrics", Action.AGGREGATES_READ, (200,), simple("/metrics")),
    # dashboards (aggregates for every user with a grant; project rows narrowed; a job's page is the job's)
    Route("GET", "/api/v1/dashboards/overview", Action.AGGREGATES_READ, (200,), simple("/api/v1/dashboards/overview")),
    Route("GET", "/api/v1/dashboards/nodes", Action.AGGREGATES_READ, (200,), simple("/api/v1/dashboards/nodes")),
    Route("GET", "/api/v1/dashboards/queue", Action.AGGREGATES_READ, (200,), simple("/api/v1/dashboards/queue")),
    Route("GET", "/api/v1/dashboards/projects", Action.AGGREGATES_READ, (200,), simple("/api/v1/dashboards/projects")),
    Route("GET", "/api/v1/dashboards/jobs/{job_id}", Action.JOB_READ, (200,),
          lambda root, scope, actor: (lambda jid, ref: Call(f"/api/v1/dashboards/jobs/{jid}", ref=ref))(
              *_job(root, scope))),
    # telemetry (agents push for their node; users read)
    Route("POST", "/api/v1/telemetry", Action.TELEMETRY_PUSH, (200, 202),
          lambda root, scope, actor: Call("/api/v1/telemetry", json={}, ref=Ref(Resource.NODE, node="inno-1")),
          agent_ok=True),
    Route("GET", "/api/v1/telemetry/nodes", Action.NODE_READ, (200,), simple("/api/v1/telemetry/nodes")),
    Route("GET", "/api/v1/telemetry/nodes/{node_id}", Action.NODE_READ, (200,),
          simple("/api/v1/telemetry/nodes/inno-1")),
    Route("GET", "/api/v1/telemetry/jobs/{job_id}", Action.JOB_READ, (200,),
          lambda root, scope, actor: _tele_job(root, scope, "")),
    Route("GET", "/api/v1/telemetry/jobs/{job_id}/usage", Action.JOB_READ, (200,),
          lambda root, scope, actor: _tele_job(root, scope, "/usage")),
    Route("GET", "/api/v1/telemetry/projects/{project_id}", Action.PROJECT_USAGE_READ, (200,),
          simple("/api/v1/telemetry/projects/{project}", _project_ref)),
    Route("PUT", "/api/v1/admin/settings/{key}", Action.SETTINGS_ADMIN, (200,), setting_put),
    # usage reports (a report narrowed to one project or department is about that object)
    Route("GET", "/api/v1/reports/usage", Action.PROJECT_USAGE_READ, (200,),
          lambda root, scope, actor: Call("/api/v1/reports/usage", params={"project": scope["project"]},
                                          ref=_project_ref(scope))),
    Route("GET", "/api/v1/reports/statement", Action.DEPARTMENT_USAGE_READ, (200,),
          lambda root, scope, actor: Call("/api/v1/reports/statement", params={
              "department": scope["department"], "month": "2026-11"}, ref=_dept_ref(scope))),
    Route("GET", "/api/v1/reports/prices", Action.POOL_READ, (200,), simple("/api/v1/reports/prices")),
    Route("PUT", "/api/v1/reports/prices/{pool}", Action.POOL_ADMIN, (200,),
          lambda root, scope, actor: Call("/api/v1/reports/prices/innovation", json={"gpu_hour": 1.0})),
    # capacity planning (trace export, what-if runs)
    Route("GET", "/api/v1/capacity/trace", None, (200,), simple("/api/v1/capacity/trace")),
    Route("POST", "/api/v1/capacity/whatif", None, (202, 409),
          lambda root, scope, actor: Call("/api/v1/capacity/whatif", json={"weeks": 1})),
    Route("GET", "/api/v1/capacity/whatif", None, (200,), simple("/api/v1/capacity/whatif")),
    Route("GET", "/api/v1/capacity/whatif/{run_id}", None, (200,), whatif_run),

    # idle allocations (narrowed to the caller's projects) and the per-pool idle policies
    Route("GET", "/api/v1/idle-allocations", Action.AGGREGATES_READ, (200,), simple("/api/v1/idle-allocations")),
    Route("GET", "/api/v1/admin/idle-policies", Action.POOL_READ, (200,), simple("/api/v1/admin/idle-policies")),
    Route("PUT", "/api/v1/admin/idle-policies/{pool}", Action.POOL_ADMIN, (200,),
          lambda root, scope, actor: Call("/api/v1/admin/idle-policies/innovation", json={"window_s": 3600})),
    Route("DELETE", "/api/v1/admin/idle-policies/{pool}", Action.POOL_ADMIN, (204,), idle_policy_delete),
    # notification subscriptions: one's own (every user); a project's events need its read right.
    # This app configures no channel, so an allowed subscribe reaches the target check (422).
    Route("GET", "/api/v1/notifications/subscriptions", Action.NODE_READ, (200,),
          simple("/api/v1/notifications/subscriptions")),
    Route("POST", "/api/v1/notifications/subscriptions", Action.PROJECT_READ, (422,),
          lambda root, scope, actor: Call("/api/v1/notifications/subscriptions", ref=_project_ref(scope), json={
              "events": ["job.failed"], "channel": "email", "target": "a@b.test", "project": scope["project"]})),
    Route("DELETE", "/api/v1/notifications/subscriptions/{sub_id}", Action.NODE_READ, (204,), own_subscription),

    Route("GET", "/api/v1/projects/{project}/secrets", Action.PROJECT_SECRETS_READ, (200,),
          simple("/api/v1/projects/{project}/secrets", _project_ref)),
    Route("GET", "/api/v1/projects/{project}/secrets/{name}", Action.PROJECT_SECRETS_READ, (200,),
          lambda root, scope, actor: Call(f"/api/v1/projects/{scope['project']}/secrets/{_secret(root, scope)}",
                                          ref=_project_ref(scope))),
    Route("PUT", "/api/v1/projects/{project}/secrets/{name}", Action.PROJECT_SECRETS_MANAGE, (200, 201),
          lambda root, scope, actor: Call(f"/api/v1/projects/{scope['project']}/secrets/n-{uuid.uuid4().hex[:8]}",
                                          json={"value": "value-1234"}, ref=_project_ref(scope))),
    Route("DELETE", "/api/v1/projects/{project}/secrets/{name}", Action.PROJECT_SECRETS_MANAGE, (204,),
          lambda root, scope, actor: Call(f"/api/v1/projects/{scope['project']}/secrets/{_secret(root, scope)}",
                                          ref=_project_ref(scope))),
    Route("POST", "/api/v1/datasets", Action.DATASET_ADMIN, (201,),
          lambda root, scope, actor: Call("/api/v1/datasets", json=_dataset_body(scope), ref=_dept_ref(scope)),
          hide_status=422),
    Route("GET", "/api/v1/datasets", Action.NODE_READ, (200,), simple("/api/v1/datasets")),
    Route("PUT", "/api/v1/datasets/{dataset}/grants/{project}", Action.DATASET_ADMIN, (200,),
          lambda root, scope, actor: Call(f"/api/v1/datasets/{_dataset(root, scope)}/grants/{scope['project']}",
                                          json={"mode": "ro"}, ref=_dept_ref(scope))),
    Route("DELETE", "/api/v1/datasets/{dataset}/grants/{project}", Action.DATASET_ADMIN, (204,),
          lambda root, scope, actor: Call(f"/api/v1/datasets/{_dataset(root, scope, grant=True)}/grants/"
                                          f"{scope['project']}", ref=_dept_ref(scope))),
    Route("GET", "/api/v1/datasets/{dataset}/access", Action.DATASET_ADMIN, (200,),
          lambda root, scope, actor: Call(f"/api/v1/datasets/{_dataset(root, scope)}/access", ref=_dept_ref(scope))),
    # inference services (a job-like object: the deployer owns it; changes need job.cancel's roles)
    Route("POST", "/api/v1/services", Action.JOB_SUBMIT, (201,),
          lambda root, scope, actor: Call("/api/v1/services", ref=_project_ref(scope), json={
              "name": "s-" + uuid.uuid4().hex[:8], "project": scope["project"], "image": "localhost/busybox:test",
              "command": ["/bin/busybox", "httpd"], "resources": {"gpus": 0, "cpus": 0.5, "memory_gb": 0.5}}),
          hide_status=422),
    Route("GET", "/api/v1/services", Action.NODE_READ, (200,), simple("/api/v1/services"), list_of=Resource.JOB),
    Route("GET", "/api/v1/services/{service_id}", Action.JOB_READ, (200,), service_call()),
    Route("PATCH", "/api/v1/services/{service_id}", Action.JOB_CANCEL, (200,), service_call("", {"env": {"A": "b"}})),
    Route("DELETE", "/api/v1/services/{service_id}", Action.JOB_CANCEL, (200,), service_call()),
    Route("POST", "/api/v1/services/{service_id}/scale", Action.JOB_CANCEL, (200,),
          service_call("/scale", {"replicas": 2})),
    Route("GET", "/api/v1/services/{service_id}/revisions", Action.JOB_READ, (200,), service_call("/revisions")),
    Route("GET", "/api/v1/services/{service_id}/replicas", Action.JOB_READ, (200,), service_call("/replicas")),
    Route("GET", "/api/v1/services/{service_id}/events", Action.JOB_READ, (200,), service_call("/events")),
    Route("GET", "/api/v1/services/{service_id}/replicas/{replica}/logs", Action.JOB_LOGS, (200, 409, 410),
          service_call("/replicas/0/logs")),
    Route("POST", "/api/v1/services/{service_id}/keys", Action.JOB_CANCEL, (201,), service_call("/keys")),
    Route("DELETE", "/api/v1/services/{service_id}/keys", Action.JOB_CANCEL, (200,), service_call("/keys")),
]
ROUTE_KEYS = {(r.method, r.path) for r in ROUTES}
ROLES = ["member", "project-admin", "department-admin", "platform-admin", "ops-viewer"]


def expected(route: Route, actor: Actor, call: Call) -> int | tuple[int, ...]:
    p = actor.principal
    if route.method == "DELETE" and "members" in route.path or (route.method == "POST" and "members" in route.path):
        d = can_grant(p, call.grant)
    elif route.path == "/api/v1/audit":
        d = Decision.DENY if list_scope(p, Resource.AUDIT).empty else Decision.ALLOW
    elif route.path.startswith("/api/v1/capacity/"):  # names every project: admins and global ops-viewers
        d = Decision.ALLOW if list_scope(p, Resource.PROJECT).all else Decision.DENY
    elif route.path == "/api/v1/audit/verify":  # the whole chain: platform-admins only
        d = Decision.ALLOW if list_scope(p, Resource.AUDIT).all else Decision.DENY
    else:
        d = authorize(p, route.action, call.ref)
    return {Decision.ALLOW: route.ok, Decision.HIDE: (route.hide_status,), Decision.DENY: (403,)}[d]


def _row_ref(app, route, item) -> Ref:
    """The Ref of one row of a list response (jobs, projects, departments, quotas)."""
    if "owner_kind" in item:  # a quota row
        if item["owner_kind"] == "department":
            return Ref(Resource.DEPARTMENT, department=item["owner_id"])
        return Ref(Resource.PROJECT, department=app.state.services.authz.project_department(item["owner_id"]),
                   project=item["owner_id"])
    if route.list_of is Resource.DEPARTMENT:
        return Ref(Resource.DEPARTMENT, department=item["id"])
    if route.list_of is Resource.PROJECT:
        return Ref(Resource.PROJECT, department=item["department"], project=item["id"])
    return Ref(Resource.JOB, department=app.state.services.authz.project_department(item["project"]), project=item["project"])


def _served(app, route) -> bool:
    return (route.method, route.path) in {(m.upper(), p) for p, i in app.openapi()["paths"].items() for m in i}


def _send(client, method, call):
    return client.request(method, call.path, json=call.json, headers=call.headers, params=call.params)


def test_every_route_has_an_authorization_entry(app):
    ops = {(m.upper(), path) for path, item in app.openapi()["paths"].items() for m in item}
    missing = sorted(ops - ROUTE_KEYS)
    assert not missing, f"routes without an authorization entry in ROUTES: {missing}"


def _cases():
    for r in ROUTES:
        for role in ROLES:
            for side in ("own", "foreign"):
                yield pytest.param(r, role, side, id=f"{r.method} {r.path} [{role}/{side}]")


@pytest.mark.parametrize("route, role, side", list(_cases()))
def test_matrix(app, client, cast, route, role, side):
    if not _served(app, route):
        pytest.skip("route not served by this app")
    actor = cast[role]
    scope = OWN if side == "own" else FOREIGN
    call = route.prepare(client, scope, actor)
    r = _send(actor.client, route.method, call)
    want = route.ok if route.public else expected(route, actor, call)
    assert r.status_code in want, f"{route.method} {call.path} as {role}: {r.status_code} {r.text[:300]}"
    if r.status_code >= 400:
        err = r.json()["error"]
        assert err["code"] and err["message"] and "Traceback" not in r.text
    if route.list_of is not None and r.status_code == 200:
        for item in r.json()["items"]:
            ref = _row_ref(app, route, item)
            assert list_scope(actor.principal, ref.resource).contains(ref), f"{role} sees foreign row {item}"
    if route.path == "/api/v1/overview" and r.status_code == 200:
        body = r.json()
        for row in body.get("projects", []) + body.get("idle_allocations", []):
            ref = Ref(Resource.PROJECT, department=app.state.services.authz.project_department(row["project"]),
                      project=row["project"])
            assert list_scope(actor.principal, Resource.PROJECT).contains(ref), f"{role} sees {row}"
    if role not in ("platform-admin",):
        secret = SECRET_CMD.format(FOREIGN["project"])
        if not (role == "ops-viewer"):
            assert secret not in r.text, f"{role} saw a foreign job's command"
    if role == "ops-viewer":
        assert "secret-command" not in r.text, "ops-viewers never see job commands"


@pytest.mark.parametrize("route", [r for r in ROUTES if not r.public], ids=lambda r: f"{r.method} {r.path}")
def test_anonymous_gets_401(app, client, cast, route):
    if not _served(app, route):
        pytest.skip("route not served by this app")
    call = route.prepare(client, OWN, cast["platform-admin"])
    r = _send(cast["anonymous"].client, route.method, call)
    assert r.status_code == 401, r.text


@pytest.mark.parametrize("route", [r for r in ROUTES if not r.public and not r.agent_ok],
                         ids=lambda r: f"{r.method} {r.path}")
def test_agent_token_gets_403(app, client, cast, route):
    if not _served(app, route):
        pytest.skip("route not served by this app")
    call = route.prepare(client, OWN, cast["platform-admin"])
    r = _send(cast["agent"].client, route.method, call)
    assert r.status_code == 403, r.text
