"""Catalog and health routes."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from broker.api.deps import Catalog, Overview, User
from broker.api.json import JSON
from broker.schemas import ErrorResponse, Health, NodeList, PoolList, ProjectList

router = APIRouter(tags=["catalog"])
ERRORS = {401: {"model": ErrorResponse}}


@router.get("/api/v1/projects", response_model=ProjectList, responses=ERRORS)
def projects(principal: User, svc: Catalog):
    return JSON(svc.projects(principal=principal))


@router.get("/api/v1/nodes", response_model=NodeList, responses=ERRORS)
def nodes(principal: User, svc: Catalog):
    return JSON(svc.nodes(principal=principal))


@router.get("/api/v1/pools", response_model=PoolList, responses=ERRORS)
def pools(principal: User, svc: Catalog):
    return JSON(svc.pools(principal=principal))


@router.get("/healthz", response_model=Health, tags=["health"])
async def healthz():
    """The process is up (no dependency checked)."""
    return JSON({"status": "ok", "checks": {}})


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}}, tags=["health"])
async def readyz(svc: Catalog, ops: Overview):
    """The database answers; 503 otherwise. `checks.leadership` says whether this broker runs
    the scheduling loop (leader) or serves the API only (follower); both are ready."""
    lead = ops.leadership()
    role = {"leadership": "leader" if lead.get("leader") else "follower"}
    try:
        await run_in_threadpool(svc.ready)
    except Exception:
        return JSON({"status": "unavailable", "checks": {"database": "unreachable", **role},
                     "details": {"leadership": lead}}, status_code=503)
    return JSON({"status": "ok", "checks": {"database": "ok", **role}, "details": {"leadership": lead}})
