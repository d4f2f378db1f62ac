"""Usage report routes: the usage report (JSON or CSV), a department's monthly statement (JSON,
CSV or printable HTML) and the prices per pool that reports charge."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, Response
from broker.api.deps import CallerDep, ServicesDep, User
from broker.api.json import JSON
from broker.schemas import SLUG, ErrorResponse
from broker.schemas.reports import PricePut
from broker.services.reports import ReportService
from broker.services.reports_render import statement_html, usage_csv

router = APIRouter(tags=["reports"])
ERRORS = {c: {"model": ErrorResponse} for c in (401, 403, 404, 422)}
Format = Optional[Literal["json", "csv", "html"]]


def _reports(svc: ServicesDep) -> ReportService:
    """Built per request from the app's engine and authorization (it holds no state)."""
    return ReportService(svc.engine, svc.authz)


Reports = Annotated[ReportService, Depends(_reports)]


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
