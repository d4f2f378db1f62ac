"""Log caps and retention as the API and the periodic sweep see them (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import time
import uuid

import pytest
from sqlmodel import Session

from broker import jobstate
from broker.models import Job, JobStatus
from broker.ports import LaunchSpec, WorkerLaunch
from broker.services.logs import DAY_S, remove_expired_logs
from tests.broker.conftest import job_body


def _job(client, fake_executor, *, log: bytes = b"hello\n") -> str:
    j = client.post("/api/v1/jobs", json=job_body()).json()
    fake_executor.launch(LaunchSpec(job_id=j["id"], attempt=1, image="x", command=("a",), env={}, runtime="container",
                                    workers=(WorkerLaunch(rank=0, node="inno-1", gpus=1, cpus=1, memory_gb=1),),
                                    max_runtime_s=60))
    fake_executor.write_log(j["id"], 1, 0, log)
    return j["id"]


def _end(engine, job_id: str, finished_at: float | None = None, status: JobStatus = JobStatus.CANCELLED) -> None:
    with Session(engine) as s:
        row = s.get(Job, job_id)
        jobstate.transition(s, row, status, expected_version=row.version)
        if finished_at is not None:
            row.finished_at = finished_at
            s.add(row)
        s.commit()


@pytest.mark.parametrize("case, info, headers", [
    ("whole log", None, {}),
    ("capped", {"truncated": True, "dropped": 1234, "max_bytes": 1000, "error": ""},
     {"x-log-truncated": "true", "x-log-dropped-bytes": "1234", "x-log-max-bytes": "1000"}),
    ("full disk", {"truncated": False, "dropped": 0, "max_bytes": 0, "error": "log writing stopped: No space left"},
     {"x-log-error": "log writing stopped: No space left"}),
])
def test_log_read_says_when_the_log_was_capped_or_failed(client, fake_executor, case, info, headers):
    jid = _job(client, fake_executor)
    fake_executor.set_log_info(jid, 1, 0, info)
    for params in ({}, {"follow": "true"}) if case != "whole log" else ({},):
        if params:
            _end(client.app.state.services.engine, jid)
        r = client.get(f"/api/v1/jobs/{jid}/logs", params=params)
        assert r.status_code == 200 and r.text == "hello\n"
        got = {k: v for k, v in r.headers.items() if k.startswith("x-log-")}
        assert got == headers


@pytest.mark.parametrize("case, days_ago, status, code", [
    ("ended 31 days ago", 31, JobStatus.CANCELLED, 410),
    ("ended 29 days ago", 29, JobStatus.CANCELLED, 200),
])
def test_log_past_retention_is_410_not_an_empty_200(client, engine, fake_executor, case, days_ago, status, code):
    jid = _job(client, fake_executor)
    _end(engine, jid, time.time() - days_ago * DAY_S, status)
    for params in ({}, {"follow": "true"}):
        r = client.get(f"/api/v1/jobs/{jid}/logs", params=params)
        assert r.status_code == code, r.text
        if code == 410:
            err = r.json()["error"]
            assert err["code"] == "LOG_EXPIRED" and "30 days" in err["message"]


def test_sweep_removes_logs_past_retention_only(engine, tmp_path, client, fake_executor):
    now = time.time()
    old, recent, running = (_job(client, fake_executor) for _ in range(3))
    _end(engine, old, now - 31 * DAY_S)
    _end(engine, recent, now - 2 * DAY_S)
    orphan_old, orphan_new = f"gone{uuid.uuid4().hex[:6]}", f"gone{uuid.uuid4().hex[:6]}"
    for jid in (old, recent, running, orphan_old, orphan_new):
        d = tmp_path / jid / "1"
        d.mkdir(parents=True)
        (d / "worker-0.log").write_bytes(b"x")
    os.utime(tmp_path / orphan_old, (now - 40 * DAY_S, now - 40 * DAY_S))
    assert remove_expired_logs(engine, tmp_path, 30, now) == sorted([old, orphan_old])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([recent, running, orphan_new])
    assert remove_expired_logs(engine, tmp_path, 0, now + 1e9) == []  # 0: kept forever
    assert remove_expired_logs(engine, tmp_path / "missing", 30, now) == []
