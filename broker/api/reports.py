"""Usage report routes: the usage report (JSON or CSV), a department's monthly statement (JSON,
CSV or printable HTML), the prices per pool that reports charge; and the capacity routes: the
recorded history as a trace, and what-if replays run in the background."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, Response

from broker.api.deps import CallerDep, Capacity, Reports, User
from broker.api.json import JSON
from broker.schemas import SLUG, ErrorResponse
from broker.schemas.reports import PricePut, WhatIf
from broker.services.reports_render import statement_html, usage_csv

router = APIRouter(tags=["reports"])
ERRORS = {c: {"model": ErrorResponse} for c in (401, 403, 404, 422)}
Format = Optional[Literal["json", "csv", "html"]]


def _wants(request: Request, fmt: Format, default: str = "json") -> str:
    if fmt:
        return fmt
    accept = request.headers.get("accept", "")
    if "text/csv" in accept:
        return "csv"
    if "text/html" in accept and default == "html":
        return "html"
    return default


def _csv(body: str, name: str) -> Response:
    return Response(body, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})


@router.get("/api/v1/reports/usage", responses=ERRORS,
            summary="GPU-hours allocated / used / idle, energy, jobs, preemptions, waits and cost per group "
                    "and period (JSON, or CSV with format=csv or Accept: text/csv)")
def usage_report(request: Request, svc: Reports, principal: User,
                 group_by: Annotated[Literal["department", "project", "pool", "gpu_model", "user"], Query()] = "department",
                 period: Annotated[Literal["day", "week", "month"], Query()] = "month",
                 from_: Annotated[Optional[str], Query(alias="from", max_length=40)] = None,
                 to: Annotated[Optional[str], Query(max_length=40)] = None,
                 department: Annotated[Optional[str], Query(max_length=64)] = None,
                 project: Annotated[Optional[str], Query(max_length=64)] = None,
                 format: Annotated[Optional[Literal["json", "csv"]], Query()] = None):
    rep = svc.usage(principal, group_by=group_by, period=period, start=from_, end=to, department=department,
                    project=project)
    if _wants(request, format) == "csv":
        return _csv(usage_csv(rep), f"usage-{group_by}-{period}")
    return JSON(rep)


@router.get("/api/v1/reports/statement", responses=ERRORS,
            summary="A department's monthly statement (JSON, CSV or printable HTML)")
def statement(request: Request, svc: Reports, principal: User,
              department: Annotated[str, Query(max_length=64)],
              month: Annotated[str, Query(max_length=7, description="YYYY-MM")],
              format: Annotated[Format, Query()] = None):
    st = svc.statement(principal, department=department, month=month)
    fmt = _wants(request, format)
    if fmt == "csv":
        return _csv(usage_csv(st), f"statement-{department}-{month}")
    if fmt == "html":
        return HTMLResponse(statement_html(st))
    return JSON(st)


@router.get("/api/v1/reports/prices", responses=ERRORS, summary="Prices per pool (GPU-hour, kWh)")
def list_prices(svc: Reports, principal: User):
    return JSON({"items": svc.prices(principal)})


@router.put("/api/v1/reports/prices/{pool}", responses=ERRORS,
            summary="Platform-admins: set a pool's price per GPU-hour and per kWh")
def put_price(svc: Reports, body: PricePut, principal: User, caller: CallerDep,
              pool: Annotated[str, Path(max_length=64, pattern=SLUG)]):
    return JSON(svc.set_price(principal, caller, pool, **body.model_dump()))


# --------------------------------------------------------------------------- capacity


@router.get("/api/v1/capacity/trace", responses=ERRORS, tags=["capacity"],
            summary="Platform-admins and ops-viewers: the recorded history as a canonical trace (CSV)")
def capacity_trace(svc: Capacity, principal: User,
                   from_: Annotated[Optional[str], Query(alias="from", max_length=40)] = None,
                   to: Annotated[Optional[str], Query(max_length=40)] = None):
    return _csv(svc.trace(principal, start=from_, end=to), "trace")


@router.post("/api/v1/capacity/whatif", status_code=202, responses={**ERRORS, 409: {"model": ErrorResponse}},
             tags=["capacity"], summary="Platform-admins and ops-viewers: start a what-if replay (a background "
                                        "run; poll GET /api/v1/capacity/whatif/{id})")
def start_whatif(svc: Capacity, body: WhatIf, principal: User):
    return JSON(svc.start_whatif(principal, **body.model_dump()), status_code=202)


@router.get("/api/v1/capacity/whatif", responses=ERRORS, tags=["capacity"],
            summary="Recent what-if runs of this broker (newest last), without their results")
def list_whatifs(svc: Capacity, principal: User):
    return JSON({"items": svc.list_whatifs(principal)})


@router.get("/api/v1/capacity/whatif/{run_id}", responses=ERRORS, tags=["capacity"],
            summary="A what-if run: phase, progress, then before/after figures and the queue plot (SVG)")
def get_whatif(svc: Capacity, principal: User, run_id: Annotated[str, Path(max_length=32)]):
    return JSON(svc.get_whatif(principal, run_id))
