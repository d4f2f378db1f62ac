"""Quota, pool and usage routes. Quota updates need If-Match (428 without, 412 stale)."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from broker.api.deps import CallerDep, Quotas, User
from broker.api.json import JSON
from broker.errors import Invalid
from broker.schemas import ErrorResponse

router = APIRouter(tags=["quotas"])
ERRORS = {c: {"model": ErrorResponse} for c in (401, 403, 404, 409, 412, 422, 428)}
SLUG = r"^[a-z0-9][a-z0-9-]{0,63}$"
IfMatch = Annotated[Optional[str], Header(alias="If-Match", max_length=200)]
QuotaId = Annotated[int, Path(ge=1, le=2**31 - 1)]
MAX_FIGURE = 1e9


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuotaCreate(_In):
    owner_kind: Literal["department", "project"]
    owner_id: str = Field(pattern=SLUG)
    pool: str = Field(pattern=SLUG)
    gpu_model: str = Field("", max_length=128, description="'' applies to every GPU model of the pool")
    resource: Literal["gpus", "cpus", "memory_gb"] = "gpus"
    guaranteed: float = Field(0.0, ge=0, le=MAX_FIGURE)
    nominal: float = Field(0.0, ge=0, le=MAX_FIGURE)
    limit: Optional[float] = Field(None, ge=0, le=MAX_FIGURE, description="null: unlimited")


class QuotaPatch(_In):
    guaranteed: Optional[float] = Field(None, ge=0, le=MAX_FIGURE)
    nominal: Optional[float] = Field(None, ge=0, le=MAX_FIGURE)
    limit: Optional[float] = Field(None, ge=0, le=MAX_FIGURE, description="null: unlimited")


class QuotaPublic(BaseModel):
    id: int
    owner_kind: str
    owner_id: str
    pool: str
    gpu_model: str
    resource: str
    guaranteed: float
    nominal: float
    limit: Optional[float] = None
    version: int
    etag: str
    updated_at: float


class QuotaList(BaseModel):
    items: list[QuotaPublic]


class PoolPut(_In):
    workload_class: Optional[Literal["operation", "innovation"]] = None
    lend_to_innovation: Optional[bool] = None
    description: Optional[str] = Field(None, max_length=1000)


class PoolAdminPublic(BaseModel):
    name: str
    workload_class: str = Field(alias="class")
    lend_to_innovation: bool
    description: str



def _etagged(body: dict, status: int = 200) -> JSON:
    return JSON(body, status_code=status, headers={"ETag": body["etag"]})


@router.get("/api/v1/quotas", response_model=QuotaList, responses=ERRORS, summary="Quotas you may see")
def list_quotas(svc: Quotas, principal: User,
                owner_kind: Annotated[Optional[Literal["department", "project"]], Query()] = None,
                owner_id: Annotated[Optional[str], Query(max_length=64)] = None):
    return JSON(svc.list(principal, owner_kind=owner_kind, owner_id=owner_id))


@router.post("/api/v1/quotas", status_code=201, response_model=QuotaPublic, responses=ERRORS)
def create_quota(svc: Quotas, body: QuotaCreate, principal: User, caller: CallerDep):
    return _etagged(svc.create(principal, caller, **body.model_dump()), 201)


@router.get("/api/v1/quotas/validation", responses=ERRORS, summary="Findings of the current quota tree")
def validation(svc: Quotas, principal: User):
    return JSON(svc.validate_all(principal))


@router.get("/api/v1/quotas/{quota_id}", response_model=QuotaPublic, responses=ERRORS)
def get_quota(svc: Quotas, quota_id: QuotaId, principal: User):
    return _etagged(svc.get(principal, quota_id))


@router.patch("/api/v1/quotas/{quota_id}", response_model=QuotaPublic, responses=ERRORS,
              summary="Change guaranteed / nominal / limit; needs If-Match")
def patch_quota(svc: Quotas, quota_id: QuotaId, body: QuotaPatch, principal: User, caller: CallerDep,
                if_match: IfMatch = None):
    changes = body.model_dump(exclude_unset=True)
    for k in ("guaranteed", "nominal"):
        if k in changes and changes[k] is None:
            changes.pop(k)
    return _etagged(svc.update(principal, caller, quota_id, if_match=if_match, changes=changes))


@router.delete("/api/v1/quotas/{quota_id}", status_code=204, responses=ERRORS)
def delete_quota(svc: Quotas, quota_id: QuotaId, principal: User, caller: CallerDep, if_match: IfMatch = None):
    svc.delete(principal, caller, quota_id, if_match=if_match)
    return Response(status_code=204)


@router.put("/api/v1/pools/{name}", response_model=PoolAdminPublic, responses=ERRORS,
            summary="Platform-admins: create or change a pool (class, lending to innovation)")
def put_pool(svc: Quotas, name: str, body: PoolPut, principal: User, caller: CallerDep):
    import re

    if not re.fullmatch(SLUG, name):
        raise Invalid("pool names are lower-case slugs", code="BAD_POOL_NAME")
    return JSON(svc.update_pool(principal, caller, name, body.model_dump(exclude_none=True)))


class NodePatch(_In):
    pool: Optional[str] = Field(None, pattern=SLUG, description="move the node to this pool; null: back to the "
                                                                "executor's label")
    state: Optional[Literal["ready", "cordoned", "draining"]] = Field(
        None, description="cordoned / draining: no new work; ready lifts an admin's cordon or drain")
    reason: Optional[str] = Field(None, max_length=500, description="why (kept with the state, audited)")


class NodeAdminPublic(BaseModel):
    id: str
    pool: str
    pool_source: Literal["admin", "executor"]
    state: str
    state_reason: str
    health_state: str
    admin_state: Optional[Literal["cordoned", "draining"]] = None


@router.patch("/api/v1/nodes/{node_id}", response_model=NodeAdminPublic, responses=ERRORS, tags=["nodes"],
              summary="Platform-admins: move a node between pools, cordon, drain or uncordon it")
def patch_node(svc: Quotas, node_id: Annotated[str, Path(max_length=200)], body: NodePatch, principal: User,
               caller: CallerDep):
    changes = body.model_dump(exclude_unset=True)
    if changes.get("state", "") is None:
        raise Invalid("state cannot be null", code="BAD_NODE_STATE")
    return JSON(svc.update_node(principal, caller, node_id, changes))


@router.get("/api/v1/projects/{project}/usage", responses=ERRORS,
            summary="Entitlement, usage, borrowing both ways, budget spent and reserved")
async def usage(svc: Quotas, project: str, principal: User):
    return JSON(await run_in_threadpool(svc.usage, principal, project))
