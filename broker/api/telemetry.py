"""Telemetry routes: agents push, users read. Thin: parse, authorize, call, return.

POST /api/v1/telemetry                      agent token bound to the report's node
GET  /api/v1/telemetry/nodes                node health and agent state (any user)
GET  /api/v1/telemetry/nodes/{node}         series per GPU of a node (any user)
GET  /api/v1/telemetry/jobs/{job}           usage summary + series (whoever may read the job)
GET  /api/v1/telemetry/jobs/{job}/usage     usage summary only
GET  /api/v1/telemetry/projects/{project}   per-bucket GPU count and utilization (project
                                            members, its department admins, platform admins, ops viewers)

Time ranges are epoch seconds, `end` defaults to now and `start` to one hour before `end`.
Who may read what is decided in `TelemetryReads` by the policy; pushes by `TelemetryService`
(an agent token pushes for its own node only).
"""

from __future__ import annotations

from typing import Annotated, Optional

from fastapi import APIRouter, Query, Request

from broker.api.deps import AnyPrincipal, Telemetry, TelemetryRead, User
from broker.api.json import JSON
from broker.errors import Forbidden
from broker.schemas import ErrorResponse

# Documented for every route so the OpenAPI lists what clients really get: no token (401), a
# user token on push or a denied project (403), an unreadable job/project (404), an oversized
# body (413), bad parameters or a bad report (422).
ERRORS = {c: {"model": ErrorResponse} for c in (401, 403, 404, 413, 422)}
router = APIRouter(prefix="/api/v1/telemetry", tags=["telemetry"], responses=ERRORS)

Start = Annotated[Optional[float], Query(ge=0, description="epoch seconds; default end - 3600")]
End = Annotated[Optional[float], Query(ge=0, description="epoch seconds; default now")]
Resolution = Annotated[str, Query(pattern="^(auto|raw|1m|1h)$")]


@router.post("", summary="Push one agent report (samples + heartbeat)")
async def push(request: Request, p: AnyPrincipal, svc: Telemetry):
    if p.kind != "agent":
        raise Forbidden("telemetry is pushed with an agent token", code="AGENT_TOKEN_REQUIRED")
    ack = await svc.ingest_async(agent_node_id=p.node_id, body=await request.body())
    return JSON(ack.model_dump())


@router.get("/nodes", summary="Node health and agent state")
def nodes(p: User, svc: TelemetryRead):
    return JSON(svc.nodes(p))


@router.get("/nodes/{node_id}", summary="Per-GPU series of one node")
def node(node_id: str, p: User, svc: TelemetryRead, start: Start = None, end: End = None,
         resolution: Resolution = "auto", gpu: Annotated[Optional[int], Query(ge=0, le=1024)] = None):
    return JSON(svc.node(p, node_id, start=start, end=end, resolution=resolution, gpu=gpu))


@router.get("/jobs/{job_id}", summary="GPU use of one job: summary and series")
def job(job_id: str, p: User, svc: TelemetryRead, start: Start = None, end: End = None,
        resolution: Resolution = "auto", attempt: Annotated[Optional[int], Query(ge=1)] = None):
    return JSON(svc.job(p, job_id, start=start, end=end, resolution=resolution, attempt=attempt))


@router.get("/jobs/{job_id}/usage", summary="GPU utilization and memory of one job (average, peak)")
def job_usage(job_id: str, p: User, svc: TelemetryRead, attempt: Annotated[Optional[int], Query(ge=1)] = None):
    return JSON(svc.job_usage(p, job_id, attempt=attempt))


@router.get("/projects/{project_id}", summary="GPUs used by a project's jobs and how busy they were")
def project(project_id: str, p: User, svc: TelemetryRead, start: Start = None, end: End = None,
            resolution: Resolution = "auto"):
    return JSON(svc.project(p, project_id, start=start, end=end, resolution=resolution))
