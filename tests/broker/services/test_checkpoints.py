"""Checkpoint directories live as long as their job: kept across attempts, swept once final."""

from __future__ import annotations

import pytest
from sqlmodel import Session

from broker.models import Job
from broker.services.checkpoints import remove_finished_checkpoints
from tests.broker.conftest import job_body


@pytest.mark.parametrize("case, status, kept", [
    ("pending_between_attempts", "PENDING", True),
    ("running", "RUNNING", True),
    ("preempted", "PREEMPTED", True),
    ("succeeded", "SUCCEEDED", False),
    ("failed", "FAILED", False),
    ("cancelled", "CANCELLED", False),
])
def test_sweep_keeps_live_jobs_and_removes_final_ones(client, engine, tmp_path, case, status, kept):
    jid = client.post("/api/v1/jobs", json=job_body(checkpointable=True)).json()["id"]
    with Session(engine) as s:
        s.get(Job, jid).status = status
        s.commit()
    ckpt = tmp_path / "ouh-liver" / jid
    ckpt.mkdir(parents=True)
    (ckpt / "step").write_text("7")
    stray = tmp_path / "ouh-liver" / "no-such-job"
    stray.mkdir()
    removed = remove_finished_checkpoints(engine, tmp_path)
    assert ckpt.exists() is kept, case
    assert not stray.exists() and "no-such-job" in removed  # a job the broker does not know


def test_sweep_of_a_missing_root_does_nothing(engine, tmp_path):
    assert remove_finished_checkpoints(engine, tmp_path / "missing") == []
