"""Telemetry reads for users: node health and series, a job's and a project's GPU use.

Authorization is the policy's, as everywhere: node data names no tenant (any user); a job's
telemetry is visible to whoever may read the job (a foreign job answers like a missing one);
a project's to whoever the policy lets read its usage (members, its project- and
department-admins, platform-admins, ops-viewers).
"""

from __future__ import annotations

import time

from sqlalchemy.engine import Engine

from broker.auth.authn import Principal
from broker.auth.authz import Authz
from broker.auth.policy import Action
from broker.ports import Clock
from broker.services.telemetry import queries


class TelemetryReads:
    def __init__(self, engine: Engine, authz: Authz, *, clock: Clock = time.time) -> None:
        self.engine, self.authz, self.clock = engine, authz, clock

    def _range(self, start: float | None, end: float | None) -> tuple[float, float]:
        """`end` defaults to now, `start` to one hour before `end`."""
        end = self.clock() if end is None else end
        return (end - 3600.0 if start is None else start), end

    def nodes(self, principal: Principal) -> dict:
        return {"nodes": queries.nodes_health(self.engine)}

    def node(self, principal: Principal, node_id: str, *, start: float | None, end: float | None,
             resolution: str, gpu: int | None) -> dict:
        a, b = self._range(start, end)
        return queries.node_series(self.engine, node_id, a, b, resolution, gpu)

    def job(self, principal: Principal, job_id: str, *, start: float | None, end: float | None,
            resolution: str, attempt: int | None) -> dict:
        self.authz.require_job(principal, job_id, Action.JOB_READ)
        a, b = self._range(start, end)
        body = queries.job_series(self.engine, job_id, a, b, resolution)
        body["usage"] = queries.job_usage(self.engine, job_id, attempt)
        return body

    def job_usage(self, principal: Principal, job_id: str, *, attempt: int | None) -> dict:
        self.authz.require_job(principal, job_id, Action.JOB_READ)
        return queries.job_usage(self.engine, job_id, attempt)

    def project(self, principal: Principal, project_id: str, *, start: float | None, end: float | None,
                resolution: str) -> dict:
        self.authz.require_project(principal, project_id, Action.PROJECT_USAGE_READ)
        a, b = self._range(start, end)
        return queries.project_series(self.engine, project_id, a, b, resolution)
