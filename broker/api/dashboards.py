"""Dashboard routes: the JSON behind each page (`/api/v1/dashboards/...`) and the pages.

Routes are thin: parse, call `DashboardService` (which authorizes), return JSON. The service is
built once per app from its one `Services` object (the app's authorization, engine and jobs),
on first use; it keeps only the last rolled-up minute of the fleet's GPU readings. The pages are static
HTML (broker/static) whose own JavaScript calls these routes with the token the user gave (URL
fragment or login form; `dash.js`); a page needs no token to load, its data does.
"""

from __future__ import annotations

import weakref
from pathlib import Path as FilePath
from typing import Annotated, Literal, Optional

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import FileResponse

from broker.api.deps import ServicesDep, User
from broker.api.json import JSON
from broker.schemas import SLUG, ErrorResponse
from broker.services.dashboards import DashboardService

router = APIRouter(tags=["dashboards"])
ERRORS = {c: {"model": ErrorResponse} for c in (401, 403, 404, 422)}
STATIC = FilePath(__file__).resolve().parent.parent / "static"
PAGES = {"nodes": "dash-nodes.html", "queue": "dash-queue.html", "projects": "dash-projects.html",
         "capacity": "dash-capacity.html"}


_BUILT: dict[int, DashboardService] = {}


def dashboards(svc: ServicesDep) -> DashboardService:
    """The app's one `DashboardService`, built from its `Services` on first use (the GPU
    readings it keeps per rolled-up minute live as long as the app's services do)."""
    built = _BUILT.get(id(svc))
    if built is None:
        built = _BUILT[id(svc)] = DashboardService(svc.engine, svc.authz, jobs=svc.jobs)
        weakref.finalize(svc, _BUILT.pop, id(svc), None)
    return built


Dashboards = Annotated[DashboardService, Depends(dashboards)]
Department = Annotated[Optional[str], Query(max_length=64, pattern=SLUG)]


@router.get("/api/v1/dashboards/overview", responses=ERRORS,
            summary="Allocated vs used vs capacity per pool over 24 h / 7 d / 30 d, idle GPU-hours, energy")
def overview(principal: User, svc: Dashboards, range: Annotated[Literal["24h", "7d", "30d"], Query()] = "24h"):
    return JSON(svc.overview(principal, range=range))


@router.get("/api/v1/dashboards/nodes", responses=ERRORS,
            summary="Every GPU's last minute (utilization, memory, temperature), node health and cordon/drain, "
                    "and the job on each GPU (named only to those who may see its project)")
def nodes(principal: User, svc: Dashboards, pool: Annotated[Optional[str], Query(max_length=64, pattern=SLUG)] = None):
    return JSON(svc.nodes(principal, pool=pool))


@router.get("/api/v1/dashboards/queue", responses=ERRORS,
            summary="Pending jobs by department, reason and class with ETAs; the head of the queue")
def queue(principal: User, svc: Dashboards, department: Department = None):
    return JSON(svc.queue(principal, department=department))


@router.get("/api/v1/dashboards/projects", responses=ERRORS,
            summary="Per project: usage vs quota, borrowing both ways, budget burn-down, efficiency")
def projects(principal: User, svc: Dashboards, department: Department = None):
    return JSON(svc.projects(principal, department=department))


@router.get("/api/v1/dashboards/jobs/{job_id}", responses=ERRORS,
            summary="A job: timeline of states and attempts, per-GPU utilization and memory, log access")
def job(principal: User, svc: Dashboards, job_id: Annotated[str, Path(max_length=32)]):
    return JSON(svc.job(principal, job_id))


@router.get("/dashboard/jobs/{job_id}", include_in_schema=False)
def job_page(job_id: Annotated[str, Path(max_length=32)]):
    return FileResponse(STATIC / "dash-job.html", media_type="text/html")


@router.get("/dashboard/{page}", include_in_schema=False)
def page(page: str):
    name = PAGES.get(page)
    if name is None:
        return JSON({"error": {"code": "NOT_FOUND", "message": "no such dashboard page"}}, status_code=404)
    return FileResponse(STATIC / name, media_type="text/html")
