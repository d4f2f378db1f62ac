"""Catalog and health routes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from broker.api.json import JSON
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from broker.api.deps import User
from broker.schemas import ErrorResponse, Health, NodePublic, PoolPublic, ProjectPublic

router = APIRouter(tags=["catalog"])
ERRORS = {401: {"model": ErrorResponse}}


class ProjectList(BaseModel):
    items: list[ProjectPublic]


class NodeList(BaseModel):
    items: list[NodePublic]


class PoolList(BaseModel):
    items: list[PoolPublic]


@router.get("/api/v1/projects", response_model=ProjectList, responses=ERRORS)
def projects(request: Request, principal: User):
    body = request.app.state.catalog.projects(principal=principal)
    authz = getattr(request.app.state, "authz", None)
    if authz is not None:  # lists never include foreign rows
        from broker.auth.policy import Ref, Resource

        scope = authz.scope(principal, Resource.PROJECT)
        body["items"] = [i for i in body["items"]
                         if scope.contains(Ref(Resource.PROJECT, department=i["department"], project=i["id"]))]
    return JSON(body)


@router.get("/api/v1/nodes", response_model=NodeList, responses=ERRORS)
def nodes(request: Request, principal: User):
    return JSON(request.app.state.catalog.nodes(principal=principal))


@router.get("/api/v1/pools", response_model=PoolList, responses=ERRORS)
def pools(request: Request, principal: User):
    return JSON(request.app.state.catalog.pools(principal=principal))


@router.get("/healthz", response_model=Health, tags=["health"])
async def healthz():
    """The process is up (no dependency checked)."""
    return JSON({"status": "ok", "checks": {}})


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}}, tags=["health"])
async def readyz(request: Request):
    """The database answers; 503 otherwise."""
    try:
        await run_in_threadpool(request.app.state.catalog.ready)
    except Exception:
        return JSON({"status": "unavailable", "checks": {"database": "unreachable"}}, status_code=503)
    return JSON({"status": "ok", "checks": {"database": "ok"}})
