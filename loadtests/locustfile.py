"""Locust scenarios against a running broker (`broker up` or a deployment).

Users:
- `ProjectTeam`: submits small jobs (with an Idempotency-Key), polls them, lists its project's
  jobs, reads the pending reason: what a team's CI or notebook does all day.
- `OpsViewer`: reads the utilization overview and /metrics, as a dashboard and Prometheus do.

Configuration by environment: BROKER_TOKEN (bearer token), BROKER_PROJECTS (comma-separated
project ids to submit into; default the demo projects), BROKER_IMAGE.
Run headless with pass/fail thresholds through `python -m loadtests.run`.
"""

from __future__ import annotations

import os
import random
import uuid

from locust import HttpUser, between, task

TOKEN = os.environ.get("BROKER_TOKEN", "")
PROJECTS = [p for p in os.environ.get("BROKER_PROJECTS", "ouh-liver,ouh-radiology,slb-cardio,svs-pathology").split(",") if p]
IMAGE = os.environ.get("BROKER_IMAGE", "localhost/busybox:test")


def _headers(**extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", **extra}


class ProjectTeam(HttpUser):
    weight = 4
    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        self.project = random.choice(PROJECTS)
        self.mine: list[str] = []

    @task(5)
    def submit(self) -> None:
        body = {"name": "load", "project": self.project, "class": "innovation", "image": IMAGE,
                "command": ["/bin/busybox", "sleep", "1"], "resources": {"gpus": random.choice([0, 1]), "cpus": 1,
                                                                        "memory_gb": 1},
                "max_runtime_s": 600}
        with self.client.post("/api/v1/jobs", json=body, headers=_headers(**{"Idempotency-Key": uuid.uuid4().hex}),
                              name="POST /api/v1/jobs", catch_response=True) as r:
            if r.status_code == 201:
                self.mine.append(r.json()["id"])
                self.mine = self.mine[-50:]
            elif r.status_code == 429 and "PENDING_CAP" in r.text:
                r.success()  # the project's queue is full: the documented back-pressure, not a failure
            else:
                r.failure(f"{r.status_code}: {r.text[:200]}")

    @task(3)
    def get_one(self) -> None:
        if self.mine:
            self.client.get(f"/api/v1/jobs/{random.choice(self.mine)}", headers=_headers(), name="GET /api/v1/jobs/{id}")

    @task(1)
    def list_project(self) -> None:
        self.client.get("/api/v1/jobs", params={"project": self.project, "limit": 50}, headers=_headers(),
                        name="GET /api/v1/jobs?project")


class OpsViewer(HttpUser):
    fixed_count = 1  # one dashboard/Prometheus reader in every run, however few users
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        self.overview()  # a dashboard opens on the overview

    @task(2)
    def overview(self) -> None:
        self.client.get("/api/v1/overview", headers=_headers(), name="GET /api/v1/overview")

    @task(1)
    def metrics(self) -> None:
        self.client.get("/metrics", headers=_headers(), name="GET /metrics")
