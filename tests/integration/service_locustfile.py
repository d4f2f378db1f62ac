"""Locust users for the service rollout test: each calls the service's entry point in a loop.

Environment: BROKER_TOKEN, SERVICE_PATH (e.g. /svc/ouh-liver/bench/predict).
"""

from __future__ import annotations

import os

from locust import HttpUser, constant, task

TOKEN = os.environ.get("BROKER_TOKEN", "")
PATH = os.environ.get("SERVICE_PATH", "/")


class ServiceClient(HttpUser):
    wait_time = constant(0.01)

    @task
    def predict(self) -> None:
        self.client.get(PATH, headers={"Authorization": f"Bearer {TOKEN}"}, name="entry point")
