"""Submit guard: authorization of the target project, env and image checks, max runtime per
class (admin setting), per-project pending cap; and the settings API (If-Match, validation)."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from broker.app import create_app
from broker.errors import Invalid
from broker.schemas import JobCreate
from broker.auth.authn import Principal as AuthPrincipal
from tests.broker.conftest import job_body


@pytest.fixture(scope="module")
def sapp(settings, engine, fake_executor):
    app = create_app(settings, executor=fake_executor, start_background=False, engine=engine)
    return app


@pytest.fixture(scope="module")
def root(sapp, admin_token):
    with TestClient(sapp, headers={"Authorization": f"Bearer {admin_token}"}) as c:
        yield c


def token_principal(role="member", project="ouh-liver", department="ouh"):
    return AuthPrincipal(token_id="t-" + uuid.uuid4().hex[:8], kind="user", role=role, project_id=project,
                         department_id=department)


def spec(**over):
    return JobCreate.model_validate(job_body(**over))


@pytest.fixture
def guard(sapp):
    g = sapp.state.services.guard
    g.invalidate()
    return g


@pytest.mark.parametrize(
    "name, over, code",
    [
        ("ok", {}, None),
        ("foreign project looks unknown", {"project": "slb-cardio"}, "UNKNOWN_PROJECT"),
        ("missing project", {"project": "no-such-project"}, "UNKNOWN_PROJECT"),
        ("unqualified image", {"image": "busybox:latest"}, "IMAGE_INVALID"),
        ("registry not allowed", {"image": "docker.io/library/busybox:1"}, "IMAGE_NOT_ALLOWED"),
        ("prefix trick", {"image": "localhost.evil.com/x:1"}, "IMAGE_NOT_ALLOWED"),
        ("transport trick", {"image": "docker-archive:/tmp/x.tar"}, "IMAGE_INVALID"),
        ("nvidia capabilities", {"env": {"NVIDIA_DRIVER_CAPABILITIES": "all"}}, "ENV_NAME_RESERVED"),
        ("cuda order", {"env": {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}}, "ENV_NAME_RESERVED"),
        ("broker var", {"env": {"BROKER_DATABASE_URL": "x"}}, "ENV_NAME_RESERVED"),
    ],
)
def test_guard(guard, name, over, code):
    p = token_principal()
    if code is None:
        guard.check(p, spec(**over))
        return
    with pytest.raises(Invalid) as e:
        guard.check(p, spec(**over))
    assert e.value.code == code
    if code.startswith(("IMAGE", "ENV")):
        assert e.value.details["problems"][0]["code"] == code


def test_foreign_and_missing_projects_answer_identically(guard):
    p = token_principal()
    errs = []
    for project in ("slb-cardio", "zz-nothing"):
        with pytest.raises(Invalid) as e:
            guard.check(p, spec(project=project))
        errs.append((e.value.status, e.value.code, e.value.message.replace(project, "X")))
    assert errs[0] == errs[1]


def test_ops_viewer_cannot_submit(guard):
    from broker.errors import Forbidden

    with pytest.raises(Forbidden):
        guard.check(token_principal(role="ops-viewer", project=None, department=None), spec())


# ------------------------------------------------------------------ settings API


def _setting(root, key):
    return next(x for x in root.get("/api/v1/admin/settings").json()["items"] if x["key"] == key)


def test_image_allow_list_is_admin_settable(root, guard):
    cur = _setting(root, "image_allow_prefixes")
    url = "/api/v1/admin/settings/image_allow_prefixes"
    new = {"prefixes": ["localhost/", "registry.region.dk/ai/"]}
    assert root.put(url, json={"value": new}).status_code == 428
    r = root.put(url, json={"value": new}, headers={"If-Match": cur["etag"]})
    assert r.status_code == 200, r.text
    assert root.put(url, json={"value": new}, headers={"If-Match": cur["etag"]}).status_code == 412
    p = token_principal()
    guard.check(p, spec(image="registry.region.dk/ai/seg:1"))
    with pytest.raises(Invalid):
        guard.check(p, spec(image="registry.region.dk/other/seg:1"))
    bad = root.put(url, json={"value": {"prefixes": ["library/"]}}, headers={"If-Match": r.json()["etag"]})
    assert bad.status_code == 422
    # put it back
    assert root.put(url, json={"value": {"prefixes": ["localhost/"]}},
                    headers={"If-Match": r.json()["etag"]}).status_code == 200


def test_max_runtime_per_class(root, guard):
    cur = _setting(root, "max_runtime_s.innovation")
    url = "/api/v1/admin/settings/max_runtime_s.innovation"
    r = root.put(url, json={"value": {"seconds": 600}}, headers={"If-Match": cur["etag"]})
    assert r.status_code == 200, r.text
    p = token_principal()
    guard.check(p, spec(max_runtime_s=600))
    with pytest.raises(Invalid) as e:
        guard.check(p, spec(max_runtime_s=601))
    assert e.value.code == "MAX_RUNTIME_EXCEEDED"
    assert root.put(url, json={"value": {"seconds": None}}, headers={"If-Match": r.json()["etag"]}).status_code == 200
    guard.check(p, spec(max_runtime_s=601))


@pytest.mark.parametrize(
    "key, value",
    [
        ("max_runtime_s.innovation", {"seconds": -1}),
        ("max_runtime_s.innovation", {"seconds": "1h"}),
        ("image_allow_prefixes", {"prefixes": "localhost/"}),
        ("image_allow_prefixes", {"prefixes": ["https://x.dk/"]}),
    ],
)
def test_bad_settings_refused(root, key, value):
    cur = _setting(root, key)
    r = root.put(f"/api/v1/admin/settings/{key}", json={"value": value}, headers={"If-Match": cur["etag"]})
    assert r.status_code == 422, r.text


def test_unknown_setting(root):
    assert root.put("/api/v1/admin/settings/nope", json={"value": {}}, headers={"If-Match": "*"}).status_code == 404
