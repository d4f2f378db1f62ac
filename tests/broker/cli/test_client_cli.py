"""Python client, CLI, and the submit fast path against the FastAPI route."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session
from typer.testing import CliRunner

from broker.app import create_app
from broker.client import BrokerAPIError, BrokerClient
from broker.models import Job
from tests.broker.conftest import job_body


@pytest.fixture
def api(client, admin_token):
    return BrokerClient("http://testserver", admin_token, http=client)


def test_client_submit_get_list_cancel_events(api, new_project):
    p = new_project()
    j = api.submit(job_body(project=p), idempotency_key="k-client-1")
    assert api.submit(job_body(project=p), idempotency_key="k-client-1")["id"] == j["id"]
    assert api.get(j["id"])["status"] == "PENDING"
    assert [x["id"] for x in api.iter_jobs(project=p, limit=1)] == [j["id"]]
    assert api.cancel(j["id"])["status"] == "CANCELLED"
    assert [e["kind"] for e in api.events(j["id"])] == ["submitted", "transition"]
    assert api.wait(j["id"], timeout=1)["status"] == "CANCELLED"
    with pytest.raises(BrokerAPIError) as ei:
        api.cancel(j["id"])
    assert (ei.value.status, ei.value.code) == (409, "JOB_TERMINAL")
    assert {"ouh-liver"} <= {x["id"] for x in api.projects()} and api.pools() and api.nodes()


def test_client_wait_times_out_on_a_pending_job(api):
    j = api.submit(job_body())
    with pytest.raises(TimeoutError):
        api.wait(j["id"], timeout=0, poll_s=0)


def test_cli_jobs_commands(monkeypatch, client, admin_token, new_project, engine):
    from broker.cli import app, common

    monkeypatch.setattr(common, "client", lambda url, token: BrokerClient("http://testserver", admin_token, http=client))
    monkeypatch.setattr(BrokerClient, "close", lambda self: None)  # the shared TestClient stays open
    run = CliRunner().invoke
    p = new_project()
    r = run(app, ["jobs", "submit", "-o", "json", "-p", p, "--image", "localhost/img:1", "--gpus", "1", "-e", "A=1", "--", "python", "t.py"])
    assert r.exit_code == 0, r.output
    job = json.loads(r.output)
    assert (job["command"], job["env"], job["name"], job["resources"]["gpus"]) == (["python", "t.py"], {"A": "1"}, "python", 1)
    r = run(app, ["jobs", "list", "-p", p])
    assert r.exit_code == 0 and job["id"] in r.output and "PENDING" in r.output
    assert json.loads(run(app, ["jobs", "get", job["id"], "--json"]).output)["id"] == job["id"]
    assert json.loads(run(app, ["jobs", "cancel", job["id"], "-o", "json"]).output)["status"] == "CANCELLED"
    r = run(app, ["jobs", "events", job["id"]])
    assert "PENDING -> CANCELLED" in r.output
    bad = run(app, ["jobs", "submit", "-p", p, "--gpus", "9", "--image", "localhost/img", "--", "x"])
    assert bad.exit_code == 2 and "NEVER_FITS" in bad.output


BODIES = [
    ("ok", job_body()),
    ("unknown-field", job_body(node="x")),
    ("missing-command", {k: v for k, v in job_body().items() if k != "command"}),
    ("never-fits", job_body(gpus=9)),
    ("unknown-project", job_body(project="nope")),
    ("bad-env", job_body(env={"A-B": "1"})),
]


@pytest.mark.parametrize("body", [b for _, b in BODIES], ids=[n for n, _ in BODIES])
def test_fast_path_and_fastapi_route_answer_alike(settings, engine, admin_token, body):
    auth = {"Authorization": f"Bearer {admin_token}"}
    answers = []
    for fast in (True, False):
        st = settings.model_copy(update={"submit_fast_path": fast})
        with TestClient(create_app(st, engine=engine, start_background=False), headers=auth) as c:
            r = c.post("/api/v1/jobs", json=body)
            answers.append((r.status_code, r.json().get("error", {}).get("code"), sorted(r.json())))
            if r.status_code == 201:
                assert c.get(f"/api/v1/jobs/{r.json()['id']}").status_code == 200
    assert answers[0] == answers[1]


def test_fast_path_refuses_missing_token_and_agent_tokens(anon):
    r = anon.post("/api/v1/jobs", json=job_body())
    assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"


def test_submit_survives_a_db_error_for_one_row_only(client, engine, new_project):
    """A project deleted after the cache saw it: that submit fails alone with 422."""
    from broker.models import Project

    p = new_project()
    client.post("/api/v1/jobs", json=job_body(project=p))  # warm the project cache with p
    from sqlalchemy import delete, select

    from broker.models import JobEvent

    with Session(engine) as s:
        ids = select(Job.id).where(Job.project_id == p)
        s.execute(delete(JobEvent).where(JobEvent.job_id.in_(ids)))
        s.execute(delete(Job).where(Job.project_id == p))
        s.delete(s.get(Project, p))
        s.commit()
    r = client.post("/api/v1/jobs", json=job_body(project=p))
    assert r.status_code == 422 and r.json()["error"]["code"] == "UNKNOWN_PROJECT"
    assert client.post("/api/v1/jobs", json=job_body()).status_code == 201


def test_cli_nodes_commands(monkeypatch, client, admin_token):
    """`broker nodes`: list, cordon with a reason, uncordon, move and back, bad usage."""
    from broker.cli import app, common

    monkeypatch.setattr(common, "client", lambda url, token: BrokerClient("http://testserver", admin_token, http=client))
    monkeypatch.setattr(BrokerClient, "close", lambda self: None)
    run = CliRunner().invoke
    r = run(app, ["nodes", "list"])
    assert r.exit_code == 0 and "inno-1" in r.output and "NODE" in r.output, r.output
    r = run(app, ["nodes", "cordon", "inno-1", "-r", "firmware", "-o", "json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["state"] == "cordoned" and json.loads(r.output)["state_reason"] == "admin: firmware"
    assert "admin: firmware" in run(app, ["nodes", "list"]).output
    assert json.loads(run(app, ["nodes", "uncordon", "inno-1", "-o", "json"]).output)["state"] == "ready"
    moved = json.loads(run(app, ["nodes", "move", "inno-1", "operation", "-o", "json"]).output)
    assert (moved["pool"], moved["pool_source"]) == ("operation", "admin")
    assert "operation*" in run(app, ["nodes", "list"]).output
    back = json.loads(run(app, ["nodes", "move", "inno-1", "--to-label", "-o", "json"]).output)
    assert back["pool_source"] == "executor"
    bad = run(app, ["nodes", "move", "inno-1"])
    assert bad.exit_code == 2 and "POOL or --to-label" in bad.output
    unknown = run(app, ["nodes", "cordon", "nope"])
    assert unknown.exit_code == 2 and "NODE_NOT_FOUND" in unknown.output


def test_up_says_where_everything_is_without_printing_the_token(tmp_path):
    from broker.cli.up import _ready_lines

    token_path = tmp_path / "admin-token"
    text = _ready_lines("0.0.0.0", 8000, token_path)
    assert "http://127.0.0.1:8000/dashboard" in text and "http://127.0.0.1:8000/docs" in text
    assert f"paste the token from {token_path}" in text and f"#token=$(cat {token_path})" in text


def test_client_commands_do_not_import_the_server():
    """`broker jobs list` talks HTTP: importing the CLI must not pull in uvicorn or SQLAlchemy."""
    import subprocess
    import sys

    code = ("import sys, broker.cli; from typer.main import get_command; "
            "get_command(broker.cli.app).get_command(None, 'jobs'); "
            "print(sorted(m for m in ('uvicorn', 'sqlalchemy', 'sqlmodel', 'broker.app', 'ray') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
