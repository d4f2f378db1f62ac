"""Bad input -> 4xx with a machine-readable code and a clear message; never 500, never a traceback."""

from __future__ import annotations

import pytest

from tests.broker.conftest import job_body


def _without(key):
    b = job_body()
    del b[key]
    return b


def _with(**kw):
    return job_body(**kw)


BAD_BODIES = [
    ("missing-project", _without("project"), "VALIDATION_ERROR", "project: field required"),
    ("missing-command", _without("command"), "VALIDATION_ERROR", "command: field required"),
    ("missing-name", _without("name"), "VALIDATION_ERROR", "name: field required"),
    ("gpus-wrong-type", _with(gpus="two"), "VALIDATION_ERROR", "resources.gpus"),
    ("workers-wrong-type", _with(workers=[1]), "VALIDATION_ERROR", "workers"),
    ("command-not-a-list", _with(command="echo hi"), "VALIDATION_ERROR", "command"),
    ("unknown-field", _with(colour="blue"), "VALIDATION_ERROR", "colour: unknown or server-owned field"),
    ("server-owned-status", _with(status="RUNNING"), "VALIDATION_ERROR", "status: unknown or server-owned field"),
    ("server-owned-node", _with(node="inno-1"), "VALIDATION_ERROR", "node: unknown or server-owned field"),
    ("server-owned-gpu-ids", {**job_body(), "resources": {"gpus": 1, "gpu_indices": [0]}}, "VALIDATION_ERROR",
     "resources.gpu_indices: unknown or server-owned field"),
    ("negative-gpus", _with(gpus=-1), "VALIDATION_ERROR", "resources.gpus"),
    ("zero-cpus", _with(cpus=0), "VALIDATION_ERROR", "resources.cpus"),
    ("zero-workers", _with(workers=0), "VALIDATION_ERROR", "workers"),
    ("bad-env-name", _with(env={"1BAD": "x"}), "VALIDATION_ERROR", "not a valid variable name"),
    ("env-name-with-dash", _with(env={"MY-VAR": "x"}), "VALIDATION_ERROR", "not a valid variable name"),
    ("reserved-env", _with(env={"CUDA_VISIBLE_DEVICES": "0"}), "VALIDATION_ERROR", "set by the broker"),
    ("env-value-not-string", _with(env={"A": 1}), "VALIDATION_ERROR", "env.A"),
    ("empty-command", _with(command=[]), "VALIDATION_ERROR", "command"),
    ("blank-program", _with(command=[" "]), "VALIDATION_ERROR", "must not be empty"),
    ("too-many-args", _with(command=["x"] * 300), "VALIDATION_ERROR", "command"),
    ("too-long-command", _with(command=["x" * 4000] * 5), "VALIDATION_ERROR", "limit is 16384"),
    ("too-long-arg", _with(command=["x" * 5000]), "VALIDATION_ERROR", "longer than 4096"),
    ("unknown-class", _with(**{"class": "urgent"}), "VALIDATION_ERROR", "class"),
    ("unknown-runtime", _with(runtime="vm"), "VALIDATION_ERROR", "runtime"),
    ("container-without-image", _with(image=""), "VALIDATION_ERROR", "image is required"),
    ("bad-image", _with(image="bad image!"), "VALIDATION_ERROR", "not a valid image"),
    ("bad-project-slug", _with(project="Not A Slug"), "VALIDATION_ERROR", "project"),
    ("unknown-project", _with(project="no-such-project"), "UNKNOWN_PROJECT", "does not exist"),
    ("unknown-pool", _with(pool="gpu-heaven"), "UNKNOWN_POOL", "does not exist"),
    ("pool-not-for-class", _with(pool="innovation", **{"class": "operation"}), "POOL_NOT_ALLOWED", "may not run"),
    ("negative-max-runtime", _with(max_runtime_s=-5), "VALIDATION_ERROR", "max_runtime_s"),
    ("body-not-object", ["a"], "VALIDATION_ERROR", "invalid request"),
]


@pytest.mark.parametrize("body,code,fragment", [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES])
def test_bad_bodies_are_422_with_code_and_message(client, body, code, fragment):
    r = client.post("/api/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == code and fragment in err["message"], err
    assert "Traceback" not in r.text and "File \"" not in r.text


BAD_JSON = [  # (id, path, raw body): the submit fast path and a plain FastAPI body route
    ("jobs-malformed", "/api/v1/jobs", b"{not json"),
    ("jobs-not-utf8", "/api/v1/jobs", b"\xff\xfe{"),
    ("departments-malformed", "/api/v1/departments", b"{not json"),
    ("departments-not-utf8", "/api/v1/departments", b"\xff\xfe{"),  # FastAPI's own 400, made a 422
]


@pytest.mark.parametrize("path,raw", [c[1:] for c in BAD_JSON], ids=[c[0] for c in BAD_JSON])
def test_malformed_json_is_422(client, path, raw):
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "VALIDATION_ERROR" and err["message"].startswith("invalid request: body"), err


NEVER_FITS = [
    ("more-gpus-than-any-node", dict(gpus=9), "9 gpus (largest node has 8)"),
    ("innovation-pool-only-4", dict(gpus=5, pool="innovation"), "5 gpus (largest node has 4)"),
    ("operation-class-memory", dict(memory_gb=600, **{"class": "operation"}), "600 memory_gb (largest node has 512)"),
    ("gpu-model-absent", dict(gpu_model="B200"), "has GPU model B200"),
    ("gang-larger-than-pools", dict(gpus=4, workers=5, pool="innovation"), "the gang asks for 20 GPUs"),
]


@pytest.mark.parametrize("over,fragment", [c[1:] for c in NEVER_FITS], ids=[c[0] for c in NEVER_FITS])
def test_job_that_can_never_fit_is_422_never_fits(client, over, fragment):
    r = client.post("/api/v1/jobs", json=job_body(**over))
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "NEVER_FITS" and fragment in err["message"], err
    assert err["details"]["requested"]


def test_largest_job_that_fits_is_accepted(client):
    assert client.post("/api/v1/jobs", json=job_body(gpus=8, **{"class": "operation"})).status_code == 201
    assert client.post("/api/v1/jobs", json=job_body(gpus=4, workers=2, pool="innovation")).status_code == 201


def test_process_runtime_refused_unless_enabled(client, settings):
    """Host processes need the deployment's switch and the project's permission: 403 with a
    code saying which is missing (the full flow is in tests/broker/api/admin/test_admin_api.py)."""
    r = client.post("/api/v1/jobs", json=job_body(runtime="process", image=""))
    assert r.status_code == 403 and r.json()["error"]["code"] == "PROCESS_RUNTIME_DISABLED"
    settings.allow_process_runtime = True
    try:
        r = client.post("/api/v1/jobs", json=job_body(runtime="process", image=""))
        assert r.status_code == 403 and r.json()["error"]["code"] == "PROCESS_RUNTIME_NOT_ALLOWED"
        assert "platform-admin" in r.json()["error"]["message"]
    finally:
        settings.allow_process_runtime = False


def test_body_larger_than_the_limit_is_413(client, settings):
    big = job_body(env={f"V{i}": "x" * 8000 for i in range(40)})
    r = client.post("/api/v1/jobs", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic dXNlcjpwdw=="},
    {"Authorization": "Bearer cbk_aaaaaaaa_" + "A" * 43},
], ids=["no-token", "garbage-token", "basic-auth", "well-formed-unknown-token"])
@pytest.mark.parametrize("method,path", [
    ("POST", "/api/v1/jobs"), ("GET", "/api/v1/jobs"), ("GET", "/api/v1/jobs/x"), ("POST", "/api/v1/jobs/x/cancel"),
    ("GET", "/api/v1/jobs/x/logs"), ("GET", "/api/v1/jobs/x/events"), ("GET", "/api/v1/projects"),
    ("GET", "/api/v1/nodes"), ("GET", "/api/v1/pools"),
])
def test_requests_without_a_valid_token_are_401(anon, method, path, headers):
    r = anon.request(method, path, headers=headers, json=job_body() if method == "POST" else None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
    assert r.headers.get("www-authenticate") == "Bearer"


def test_revoked_and_expired_tokens_are_401(anon, engine):
    import time

    from sqlmodel import Session

    from broker.services.bootstrap import create_token

    with Session(engine) as s:
        revoked, row = create_token(s, name="r", role="member")
        row.revoked_at = time.time() - 1
        expired, row2 = create_token(s, name="e", role="member", expires_at=time.time() - 1)
        valid, _ = create_token(s, name="v", role="member", expires_at=time.time() + 3600)
        s.commit()
    for tok, want in ((revoked, 401), (expired, 401), (valid, 200)):
        assert anon.get("/api/v1/projects", headers={"Authorization": f"Bearer {tok}"}).status_code == want


def test_agent_tokens_cannot_use_user_routes(anon, engine):
    from sqlmodel import Session

    from broker.services.bootstrap import create_token

    with Session(engine) as s:
        tok, _ = create_token(s, name="agent-inno-1", role="agent", kind="agent", node_id="inno-1")
        s.commit()
    r = anon.get("/api/v1/jobs", headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "AGENT_TOKEN"


def test_health_endpoints_need_no_token(anon):
    assert anon.get("/healthz").json()["status"] == "ok"
    r = anon.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"]["database"] == "ok"


def test_unknown_route_and_method_use_the_error_shape(client):
    r = client.get("/api/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
    r = client.delete("/api/v1/jobs")
    assert r.status_code == 405 and r.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_unexpected_exception_is_a_bare_500_without_traceback(settings, engine):
    from fastapi.testclient import TestClient

    from broker.app import create_app

    app = create_app(settings, engine=engine, start_background=False)

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals /etc/passwd")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
    assert r.status_code == 500 and r.json()["error"]["code"] == "INTERNAL"
    assert "secret" not in r.text and "Traceback" not in r.text


def test_readyz_is_503_when_the_database_is_unreachable(tmp_path):
    from fastapi.testclient import TestClient

    from broker.app import create_app
    from broker.settings import Settings

    st = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=1")
    with TestClient(create_app(st, start_background=False)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "unavailable"
    assert r.json()["checks"] == {"database": "unreachable", "leadership": "follower"}


def test_unexpected_error_on_the_submit_fast_path_is_a_bare_500(settings, engine, admin_token, monkeypatch):
    from fastapi.testclient import TestClient

    from broker.app import create_app

    app = create_app(settings, engine=engine, start_background=False)

    async def broken(row, event):
        raise RuntimeError("connection to /var/run/secret failed")

    monkeypatch.setattr(app.state.services.jobs, "submit_rows", broken)
    with TestClient(app, raise_server_exceptions=False, headers={"Authorization": f"Bearer {admin_token}"}) as c:
        r = c.post("/api/v1/jobs", json=job_body())
    assert r.status_code == 500 and r.json()["error"]["code"] == "INTERNAL"
    assert "secret" not in r.text and "Traceback" not in r.text
