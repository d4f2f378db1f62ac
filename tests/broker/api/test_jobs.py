"""Job API on SQLite and PostgreSQL: submit, get, list, cancel, events, logs."""

from __future__ import annotations

import pytest
from sqlmodel import Session

from broker import jobstate
from broker.models import Job, JobStatus
from broker.schemas import JobEventList, JobList, JobPublic
from tests.broker.conftest import job_body


def submit(client, **over) -> dict:
    r = client.post("/api/v1/jobs", json=job_body(**over))
    assert r.status_code == 201, r.text
    return r.json()


def test_submit_returns_201_with_the_stored_fields(client, engine):
    body = job_body(name="seg-a", gpus=2, cpus=4, memory_gb=16, gpu_model="A100", workers=2, priority=5,
                    env={"EPOCHS": "3"}, max_retries=2, **{"class": "innovation"})
    r = client.post("/api/v1/jobs", json=body)
    assert r.status_code == 201
    j = r.json()
    JobPublic.model_validate(j)
    assert j["status"] == "PENDING" and j["attempt"] == 1 and j["version"] == 1
    assert (j["name"], j["project"], j["class"], j["workers"], j["priority"]) == ("seg-a", "ouh-liver", "innovation", 2, 5)
    assert j["resources"] == {"gpus": 2, "cpus": 4.0, "memory_gb": 16.0, "gpu_model": ["A100"]}
    assert j["command"] == body["command"] and j["env"] == {"EPOCHS": "3"}
    with Session(engine) as s:
        row = s.get(Job, j["id"])
        assert row is not None and row.status == "PENDING" and row.gpu_models == ["A100"] and row.owner_token_id


def test_submit_calls_the_wakeup_hook_after_commit(client, app, engine):
    seen = []

    def hook():
        with Session(engine) as s:  # the row is committed when the hook runs
            seen.append(s.exec(__import__("sqlmodel").select(Job).where(Job.name == "hooked")).first() is not None)

    app.state.services.wakeup.connect(hook)
    try:
        submit(client, name="hooked")
    finally:
        app.state.services.wakeup.connect(None)
    assert seen == [True]


def test_get_shows_pending_reason_attempts_and_placements(client, engine):
    j = submit(client)
    with Session(engine) as s:
        jobstate.set_pending_reason(s, j["id"], code="QUOTA_LIMIT", message="over quota", details={"limit": 2},
                                    queue_position=3, estimated_start=123.0)
        s.commit()
    g = client.get(f"/api/v1/jobs/{j['id']}").json()
    JobPublic.model_validate(g)
    assert g["pending_reason"] == {"code": "QUOTA_LIMIT", "message": "over quota", "details": {"limit": 2}}
    assert (g["queue_position"], g["estimated_start"]) == (3, 123.0)
    with Session(engine) as s:
        row = s.get(Job, j["id"])
        assert jobstate.transition(s, row, JobStatus.ADMITTED, expected_version=1, now=200.0,
                                   flavor_pool="innovation", flavor_gpu_model="A100")
        from broker.models import Placement
        s.add(Placement(job_id=row.id, attempt=1, rank=0, node_id="inno-1", gpu_indices=[0], cuda_visible_devices="0"))
        s.commit()
    g = client.get(f"/api/v1/jobs/{j['id']}").json()
    assert g["status"] == "ADMITTED" and g["pending_reason"] is None and g["admitted_at"] == 200.0
    assert g["flavor"] == {"pool": "innovation", "gpu_model": "A100"}
    assert [a["number"] for a in g["attempts"]] == [1] and g["attempts"][0]["status"] == "ADMITTED"
    assert g["placements"] == [{"attempt": 1, "rank": 0, "node": "inno-1", "gpu_indices": [0], "cuda_visible_devices": "0"}]


def test_get_unknown_job_is_404(client):
    r = client.get("/api/v1/jobs/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "JOB_NOT_FOUND"


def test_list_filters_by_project_and_status(client, engine, new_project):
    p1, p2 = new_project(), new_project()
    a = submit(client, project=p1)
    b = submit(client, project=p1)
    submit(client, project=p2)
    with Session(engine) as s:
        jobstate.transition(s, s.get(Job, b["id"]), JobStatus.CANCELLED, expected_version=1)
        s.commit()
    ids = lambda r: [j["id"] for j in r.json()["items"]]  # noqa: E731
    assert sorted(ids(client.get("/api/v1/jobs", params={"project": p1}))) == sorted([a["id"], b["id"]])
    assert ids(client.get("/api/v1/jobs", params={"project": p1, "status": "PENDING"})) == [a["id"]]
    assert len(ids(client.get("/api/v1/jobs", params={"project": f"{p1},{p2}"}))) == 3
    assert len(ids(client.get("/api/v1/jobs", params=[("project", p1), ("project", p2), ("status", "PENDING")]))) == 2


def test_list_cursor_pagination_visits_every_job_once_newest_first(client, new_project):
    p = new_project()
    made = [submit(client, project=p)["id"] for _ in range(7)]
    seen, cursor, pages = [], None, 0
    while True:
        params = {"project": p, "limit": 3, **({"cursor": cursor} if cursor else {})}
        r = client.get("/api/v1/jobs", params=params)
        assert r.status_code == 200
        JobList.model_validate(r.json())
        seen += [j["id"] for j in r.json()["items"]]
        cursor, pages = r.json()["next_cursor"], pages + 1
        if not cursor:
            break
    assert pages == 3 and sorted(seen) == sorted(made) and len(seen) == len(set(seen))
    assert seen == list(reversed(made))


@pytest.mark.parametrize("params,code", [
    ({"limit": 501}, "VALIDATION_ERROR"),
    ({"limit": 0}, "VALIDATION_ERROR"),
    ({"status": "SLEEPING"}, "BAD_STATUS"),
    ({"cursor": "!!not-a-cursor!!"}, "BAD_CURSOR"),
], ids=["limit-too-big", "limit-zero", "unknown-status", "bad-cursor"])
def test_list_bad_parameters_are_422(client, params, code):
    r = client.get("/api/v1/jobs", params=params)
    assert r.status_code == 422 and r.json()["error"]["code"] == code


def test_cancel_pending_job_becomes_cancelled_and_stays_final(client):
    j = submit(client)
    r = client.post(f"/api/v1/jobs/{j['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "CANCELLED" and r.json()["finished_at"]
    again = client.post(f"/api/v1/jobs/{j['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "JOB_TERMINAL"
    assert client.get(f"/api/v1/jobs/{j['id']}").json()["status"] == "CANCELLED"


def test_cancel_running_job_requests_stop_from_the_executor(client, engine, fake_executor):
    j = submit(client)
    with Session(engine) as s:
        row = s.get(Job, j["id"])
        assert jobstate.transition(s, row, JobStatus.ADMITTED, expected_version=1)
        assert jobstate.transition(s, row, JobStatus.RUNNING, expected_version=2)
        s.commit()
    r = client.post(f"/api/v1/jobs/{j['id']}/cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "RUNNING" and r.json()["cancel_requested_at"] is not None
    assert fake_executor.stops[-1][:2] == (j["id"], 1)
    assert client.post(f"/api/v1/jobs/{j['id']}/cancel").status_code == 200  # twice: harmless
    kinds = [e["kind"] for e in client.get(f"/api/v1/jobs/{j['id']}/events").json()["items"]]
    assert kinds.count("cancel_requested") == 1


def test_cancel_unknown_job_is_404(client):
    assert client.post("/api/v1/jobs/doesnotexist/cancel").status_code == 404


def test_events_record_submit_and_transitions_in_order(client):
    j = submit(client)
    client.post(f"/api/v1/jobs/{j['id']}/cancel")
    r = client.get(f"/api/v1/jobs/{j['id']}/events")
    ev = JobEventList.model_validate(r.json()).items
    assert [(e.kind, e.from_status, e.to_status) for e in ev] == [
        ("submitted", None, "PENDING"), ("transition", "PENDING", "CANCELLED")]
    after = client.get(f"/api/v1/jobs/{j['id']}/events", params={"after": ev[0].id}).json()["items"]
    assert [e["kind"] for e in after] == ["transition"]


def test_logs_read_and_follow_through_the_executor(client, engine, fake_executor):
    from broker.ports import LaunchSpec, WorkerLaunch

    j = submit(client)
    fake_executor.launch(LaunchSpec(job_id=j["id"], attempt=1, image="x", command=("a",), env={}, runtime="container",
                                    workers=(WorkerLaunch(rank=0, node="inno-1", gpus=1, cpus=1, memory_gb=1),),
                                    max_runtime_s=60))
    fake_executor.write_log(j["id"], 1, 0, b"line 1\nline 2\n")
    r = client.get(f"/api/v1/jobs/{j['id']}/logs")
    assert r.status_code == 200 and r.text == "line 1\nline 2\n"
    assert client.get(f"/api/v1/jobs/{j['id']}/logs", params={"offset": 7}).text == "line 2\n"
    bad = client.get(f"/api/v1/jobs/{j['id']}/logs", params={"worker": 1})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "BAD_WORKER"
    with Session(engine) as s:  # the attempt has ended: follow returns everything, then stops
        row = s.get(Job, j["id"])
        jobstate.transition(s, row, JobStatus.CANCELLED, expected_version=1)
        s.commit()
    fake_executor.write_log(j["id"], 1, 0, b"line 3\n")
    f = client.get(f"/api/v1/jobs/{j['id']}/logs", params={"follow": "true"})
    assert f.status_code == 200 and f.text == "line 1\nline 2\nline 3\n"


def test_logs_follow_streams_until_the_attempt_ends(client, app, engine, fake_executor):
    import threading
    import time

    from broker.ports import LaunchSpec, WorkerLaunch

    j = submit(client)
    fake_executor.launch(LaunchSpec(job_id=j["id"], attempt=1, image="x", command=("a",), env={}, runtime="container",
                                    workers=(WorkerLaunch(rank=0, node="inno-1", gpus=1, cpus=1, memory_gb=1),),
                                    max_runtime_s=60))
    with Session(engine) as s:
        row = s.get(Job, j["id"])
        jobstate.transition(s, row, JobStatus.ADMITTED, expected_version=1)
        jobstate.transition(s, row, JobStatus.RUNNING, expected_version=2)
        s.commit()
    app.state.services.logs.poll_s = 0.02

    def worker_runs_then_ends():
        fake_executor.write_log(j["id"], 1, 0, b"a\n")
        time.sleep(0.1)  # a real producer on another thread: the stream must wait for it
        fake_executor.write_log(j["id"], 1, 0, b"b\n")
        with Session(engine) as s2:
            r2 = s2.get(Job, j["id"])
            jobstate.transition(s2, r2, JobStatus.SUCCEEDED, expected_version=3, exit_code=0)
            s2.commit()

    t = threading.Thread(target=worker_runs_then_ends)
    t.start()
    try:
        f = client.get(f"/api/v1/jobs/{j['id']}/logs", params={"follow": "true"})
    finally:
        t.join()
    assert f.text == "a\nb\n"


def test_logs_without_an_executor_are_503(settings, engine, admin_token):
    from fastapi.testclient import TestClient

    from broker.app import create_app

    with TestClient(create_app(settings, engine=engine, start_background=False),
                    headers={"Authorization": f"Bearer {admin_token}"}) as c:
        j = c.post("/api/v1/jobs", json=job_body()).json()
        for params in ({}, {"follow": "true"}):
            r = c.get(f"/api/v1/jobs/{j['id']}/logs", params=params)
            assert r.status_code == 503 and r.json()["error"]["code"] == "NO_EXECUTOR"
