"""Quota, pool and usage routes. Quota updates need If-Match (428 without, 412 stale)."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from broker.api.deps import CallerDep, Quotas, User
from broker.api.json import JSON
from broker.errors import Invalid
from broker.schemas import SLUG, ErrorResponse
from broker.schemas.quotas import (
    NodeAdminPublic, NodePatch, PoolAdminPublic, PoolPut, QuotaCreate, QuotaList, QuotaPatch, QuotaPublic,
)

router = APIRouter(tags=["quotas"])
ERRORS = {c: {"model": ErrorResponse} for c in (401, 403, 404, 409, 412, 422, 428)}
IfMatch = Annotated[Optional[str], Header(alias="If-Match", max_length=200)]
QuotaId = Annotated[int, Path(ge=1, le=2**31 - 1)]


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
