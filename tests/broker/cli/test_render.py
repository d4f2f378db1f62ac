"""The human views as text: fixed `now`, fixed time zone, exact snapshots.

Pure functions of (data, now), so these pin the layout people read: column order and widths,
relative times, local clock times, no raw JSON.
"""

from __future__ import annotations

import time

import pytest

from broker.cli import render

NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def job(**over) -> dict:
    j = {"id": "0123456789abcdef", "name": "train-1", "project": "ouh-liver", "class": "innovation", "image": "img:1",
         "command": ["python", "train.py"], "resources": {"gpus": 1, "cpus": 2.0, "memory_gb": 8.0, "gpu_model": None},
         "workers": 1, "runtime": "container", "pool": None, "status": "PENDING", "attempt": 1,
         "pending_reason": None, "queue_position": None, "estimated_start": None, "submit_time": NOW - 185,
         "created_at": NOW - 185, "started_at": None, "finished_at": None, "cancel_requested_at": None,
         "exit_code": None, "message": "", "borrowing": False, "attempts": [], "placements": []}
    j.update(over)
    return j


DURATIONS = [
    ("seconds", 42, "42 s"), ("minutes", 12 * 60 + 59, "12 min"), ("hours", 4800, "1 h 20 min"),
    ("whole-hours", 7200, "2 h"), ("days", 2 * 86400 + 3 * 3600, "2 d 3 h"), ("negative", -5, "0 s"),
]


@pytest.mark.parametrize("seconds,text", [d[1:] for d in DURATIONS], ids=[d[0] for d in DURATIONS])
def test_duration(seconds, text):
    assert render.duration(seconds) == text


def test_relative_and_clock_times():
    assert render.ago(NOW - 180, NOW) == "3 min ago"
    assert render.until(NOW + 725, NOW) == "in ~12 min" and render.until(NOW - 3, NOW) == "now"
    assert render.clock(NOW + 725, NOW) == "08:12" and render.clock(NOW + 86400, NOW) == "Jan 16 08:00"


def test_jobs_table_snapshot():
    rows = [
        job(id="aaaaaaaaaaaaaaaa", name="liver-ddp", resources={"gpus": 2, "cpus": 4.0, "memory_gb": 16.0}, workers=2,
            pending_reason={"code": "NO_CAPACITY", "message": "", "details": {}}, estimated_start=NOW + 725),
        job(id="bbbbbbbbbbbbbbbb", status="RUNNING", started_at=NOW - 95,
            placements=[{"attempt": 1, "rank": 0, "node": "inno-2", "gpu_indices": [0]}]),
        job(id="cccccccccccccccc", name="val", status="SUCCEEDED", started_at=NOW - 4000, finished_at=NOW - 400,
            submit_time=NOW - 4100),
    ]
    assert render.jobs_table(rows, NOW) == (
        "ID                NAME       PROJECT    STATUS     GPUS  WORKERS  AGE            START          RUNTIME  NODE    REASON\n"
        "aaaaaaaaaaaaaaaa  liver-ddp  ouh-liver  PENDING       4        2  3 min ago      in ~12 min                      NO_CAPACITY\n"
        "bbbbbbbbbbbbbbbb  train-1    ouh-liver  RUNNING       1        1  3 min ago      1 min ago      1 min    inno-2\n"
        "cccccccccccccccc  val        ouh-liver  SUCCEEDED     1        1  1 h 8 min ago  1 h 6 min ago  1 h"
    )


def test_job_summary_snapshot_pending():
    j = job(resources={"gpus": 2, "cpus": 4.0, "memory_gb": 16.0, "gpu_model": ["A100"]}, workers=2,
            pending_reason={"code": "QUOTA_LIMIT", "message": "ouh-liver would use 4 of its limit 2 GPUs",
                            "details": {"limit": 2}}, queue_position=3, estimated_start=NOW + 725)
    assert render.job_summary(j, NOW) == (
        "Job:         0123456789abcdef  train-1\n"
        "Project:     ouh-liver  (innovation)\n"
        "Status:      PENDING for 3 min, position 3 in the queue\n"
        "Why:         ouh-liver would use 4 of its limit 2 GPUs.\n"
        "Est. start:  08:12 (in ~12 min)\n"
        "Resources:   2 workers x (2 GPU, 4 CPU, 16 GiB (A100)) = 4 GPUs\n"
        "Runtime:     container  image img:1\n"
        "Command:     python train.py\n"
        "Submitted:   07:56 (3 min ago)"
    )


def test_job_summary_snapshot_failed_with_attempts():
    j = job(status="FAILED", started_at=NOW - 600, finished_at=NOW - 60, exit_code=3, message="exit code 3",
            attempts=[{"number": 1, "status": "FAILED", "started_at": NOW - 600, "ended_at": NOW - 60, "exit_code": 3,
                       "reason": "exit code 3"}],
            placements=[{"attempt": 1, "rank": 0, "node": "inno-1", "gpu_indices": [1]}])
    assert render.job_summary(j, NOW) == (
        "Job:        0123456789abcdef  train-1\n"
        "Project:    ouh-liver  (innovation)\n"
        "Status:     FAILED 1 min ago (exit code 3)\n"
        "Message:    exit code 3\n"
        "Resources:  1 GPU, 2 CPU, 8 GiB\n"
        "Runtime:    container  image img:1\n"
        "Command:    python train.py\n"
        "Submitted:  07:56 (3 min ago)\n"
        "Started:    07:50 (10 min ago), ran 9 min\n"
        "\n"
        "RANK  NODE    GPUS\n"
        "0     inno-1  1\n"
        "\n"
        "ATTEMPT  STATUS  STARTED  ENDED  EXIT  REASON\n"
        "      1  FAILED  07:50    07:59  3     exit code 3"
    )
