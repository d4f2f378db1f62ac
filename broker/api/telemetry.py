"""Telemetry routes: agents push, users read. Thin: parse, authorize, call, return.

POST /api/v1/telemetry                      agent token bound to the report's node
GET  /api/v1/telemetry/nodes                node health and agent state (any user)
GET  /api/v1/telemetry/nodes/{node}         series per GPU of a node (any user)
GET  /api/v1/telemetry/jobs/{job}           usage summary + series (whoever may read the job)
GET  /api/v1/telemetry/jobs/{job}/usage     usage summary only
GET  /api/v1/telemetry/projects/{project}   per-bucket GPU count and utilization (project
                                            members, its department admins, platform admins, ops viewers)

Time ranges are epoch seconds, `end` defaults to now and `start` to one hour before `end`.
The service is taken from app.state.telemetry, created on first use when create_app did not.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Annotated, Optional

import anyio

from fastapi import APIRouter, Depends, Query, Request
from sqlmodel import Session

from broker.api.deps import User, principal
from broker.api.json import JSON
from broker.errors import Forbidden, NotFound
from broker.services import catalog_queries as catalog
from broker.schemas import ErrorResponse
from broker.auth.authn import Principal
from broker.services.telemetry import queries
from broker.services.telemetry.service import TelemetryConfig, TelemetryService

# Documented for every route so the OpenAPI lists what clients really get: no token (401), a
# user token on push or a denied project (403), an unreadable job/project (404), an oversized
# body (413), bad parameters or a bad report (422).
ERRORS = {c: {"model": ErrorResponse} for c in (401, 403, 404, 413, 422)}
router = APIRouter(prefix="/api/v1/telemetry", tags=["telemetry"], responses=ERRORS)

Start = Annotated[Optional[float], Query(ge=0, description="epoch seconds; default end - 3600")]
End = Annotated[Optional[float], Query(ge=0, description="epoch seconds; default now")]
Resolution = Annotated[str, Query(pattern="^(auto|raw|1m|1h)$")]


def service(request: Request) -> TelemetryService:
    svc = getattr(request.app.state, "telemetry", None)
    if svc is None:
        svc = TelemetryService(request.app.state.engine, TelemetryConfig.from_settings(request.app.state.settings))
        request.app.state.telemetry = svc
    return svc


def _range(start: float | None, end: float | None) -> tuple[float, float]:
    end = time.time() if end is None else end
    return (end - 3600.0 if start is None else start), end


@router.post("", summary="Push one agent report (samples + heartbeat)")
async def push(request: Request, p: Annotated[Principal, Depends(principal)]):
    if p.kind != "agent":
        raise Forbidden("telemetry is pushed with an agent token", code="AGENT_TOKEN_REQUIRED")
    body = await request.body()
    svc = service(request)
    ack = await anyio.to_thread.run_sync(partial(svc.ingest_bytes, agent_node_id=p.node_id, body=body),
                                         limiter=_ingest_limiter(request))
    return JSON(ack.model_dump())


def _ingest_limiter(request: Request) -> anyio.CapacityLimiter:
    """At most a few ingest threads per process. Why: ingest is mostly Python (validation,
    COPY rows) and holds the GIL; forty threads fighting over it cost more CPU than they
    overlap waiting on the database. Requests beyond the limit wait in the event loop."""
    lim = getattr(request.app.state, "telemetry_limiter", None)
    if lim is None:
        lim = anyio.CapacityLimiter(getattr(request.app.state.settings, "telemetry_ingest_threads", 4))
        request.app.state.telemetry_limiter = lim
    return lim


@router.get("/nodes", summary="Node health and agent state")
def nodes(request: Request, p: User):
    return JSON({"nodes": queries.nodes_health(service(request).engine)})


@router.get("/nodes/{node_id}", summary="Per-GPU series of one node")
def node(request: Request, node_id: str, p: User, start: Start = None, end: End = None,
         resolution: Resolution = "auto", gpu: Annotated[Optional[int], Query(ge=0, le=1024)] = None):
    a, b = _range(start, end)
    return JSON(queries.node_series(service(request).engine, node_id, a, b, resolution, gpu))


def _readable_job(request: Request, p: Principal, job_id: str) -> None:
    """Telemetry of a job is visible to whoever may read the job (the job service decides)."""
    request.app.state.jobs.get(principal=p, job_id=job_id)


@router.get("/jobs/{job_id}", summary="GPU use of one job: summary and series")
def job(request: Request, job_id: str, p: User, start: Start = None, end: End = None,
        resolution: Resolution = "auto", attempt: Annotated[Optional[int], Query(ge=1)] = None):
    _readable_job(request, p, job_id)
    engine = service(request).engine
    a, b = _range(start, end)
    body = queries.job_series(engine, job_id, a, b, resolution)
    body["usage"] = queries.job_usage(engine, job_id, attempt)
    return JSON(body)


@router.get("/jobs/{job_id}/usage", summary="GPU utilization and memory of one job (average, peak)")
def job_usage(request: Request, job_id: str, p: User, attempt: Annotated[Optional[int], Query(ge=1)] = None):
    _readable_job(request, p, job_id)
    return JSON(queries.job_usage(service(request).engine, job_id, attempt))


def _may_read_project(p: Principal, project_id: str, department_id: str) -> bool:
    if p.role in ("platform-admin", "ops-viewer"):
        return p.department_id in (None, department_id) if p.role == "ops-viewer" else True
    if p.role == "department-admin":
        return p.department_id == department_id
    return p.project_id == project_id


@router.get("/projects/{project_id}", summary="GPUs used by a project's jobs and how busy they were")
def project(request: Request, project_id: str, p: User, start: Start = None, end: End = None,
            resolution: Resolution = "auto"):
    engine = service(request).engine
    with Session(engine) as s:
        row = catalog.project(s, project_id)
    if row is None or not _may_read_project(p, project_id, row.department_id):
        authz = getattr(request.app.state, "authz", None)  # issue 4: memberships count too
        if row is None or authz is None:
            raise NotFound(f"project {project_id!r} not found", code="PROJECT_NOT_FOUND")
        from broker.auth.policy import Action

        authz.require_project(p, project_id, Action.PROJECT_USAGE_READ)
    a, b = _range(start, end)
    return JSON(queries.project_series(engine, project_id, a, b, resolution))
