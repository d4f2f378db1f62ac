"""Authorization cannot be forgotten: every way the broker's app is assembled answers a foreign
job exactly like a missing one.

The builds: `broker up` (an executor and the periodic tasks running), the benchmark servers
(settings from the environment, no tasks), the test fixtures (an executor, no tasks) and a
bare `create_app(settings)`. Each goes through `create_app()` and `build_services()`, which
construct `Authz` first and hand it to every service as a required argument.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from broker.adapters.fake import FakeExecutor
from broker.app import create_app
from broker.bench.common import broker_app
from broker.services.bootstrap import create_token
from tests.broker.conftest import job_body


def _broker_up(settings, engine, monkeypatch):
    return create_app(settings, executor=FakeExecutor(), engine=engine)


def _bench_server(settings, engine, monkeypatch):
    monkeypatch.setenv("BROKER_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("BROKER_DATA_DIR", str(settings.data_dir))
    return broker_app()


def _fixture(settings, engine, monkeypatch):
    return create_app(settings, executor=FakeExecutor(), start_background=False, engine=engine)


def _bare(settings, engine, monkeypatch):
    return create_app(settings)


BUILDS = {"broker up": _broker_up, "benchmark server": _bench_server, "test fixture": _fixture,
          "bare create_app": _bare}


@pytest.fixture(scope="module")
def outsider(engine) -> str:
    """A member of another department's project (SLB cardiology)."""
    with Session(engine) as s:
        tok, _ = create_token(s, name="outsider", role="member", project_id="slb-cardio", department_id="slb")
        s.commit()
    return tok


@pytest.mark.parametrize("build", list(BUILDS), ids=list(BUILDS))
def test_a_foreign_job_is_not_found_in_every_build(build, settings, engine, admin_token, outsider, monkeypatch):
    app = BUILDS[build](settings, engine, monkeypatch)
    with TestClient(app, headers={"Authorization": f"Bearer {admin_token}"}) as admin, \
            TestClient(app, headers={"Authorization": f"Bearer {outsider}"}) as other:
        r = admin.post("/api/v1/jobs", json=job_body(project="ouh-liver", name=f"foreign-{build.replace(' ', '-')}"))
        assert r.status_code == 201, r.text
        job = r.json()["id"]
        missing = other.get("/api/v1/jobs/does-not-exist")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "JOB_NOT_FOUND"
        for method, path in [("GET", f"/api/v1/jobs/{job}"), ("GET", f"/api/v1/jobs/{job}/events"),
                             ("POST", f"/api/v1/jobs/{job}/cancel"), ("GET", f"/api/v1/telemetry/jobs/{job}/usage")]:
            r = other.request(method, path)
            assert r.status_code == 404, (method, path, r.text)
            assert r.json()["error"]["code"] == "JOB_NOT_FOUND" and job in r.json()["error"]["message"]
        listed = other.get("/api/v1/jobs", params={"project": "ouh-liver"}).json()["items"]
        assert listed == []
        assert admin.get(f"/api/v1/jobs/{job}").status_code == 200  # the owner's side still sees it
