"""Token routes: own tokens for every user; tokens for others and agent tokens for
platform-admins. The plaintext appears only in the 201 response of a create."""

from __future__ import annotations

from typing import Annotated, Optional

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from broker.api.deps import CallerDep, Tokens, User
from broker.api.json import JSON
from broker.schemas import ErrorResponse
from broker.schemas.tokens import OwnTokenCreate, TokenCreate, TokenCreated, TokenList, TokenPublic

router = APIRouter(tags=["tokens"])
ERRORS = {c: {"model": ErrorResponse} for c in (401, 403, 404, 422)}


@router.post("/api/v1/tokens", status_code=201, response_model=TokenCreated, responses=ERRORS,
             summary="Create a token for yourself (acts with your memberships)")
async def create_own(body: OwnTokenCreate, principal: User, caller: CallerDep, svc: Tokens):
    out = await run_in_threadpool(svc.create_own, principal, caller, name=body.name, ttl_days=body.ttl_days)
    return JSON(out, status_code=201, headers={"Cache-Control": "no-store"})


@router.get("/api/v1/tokens", response_model=TokenList, responses=ERRORS,
            summary="Your tokens (platform-admins: ?all=true or ?user=)")
def list_tokens(principal: User, svc: Tokens, all: bool = False,
                user: Annotated[Optional[str], Query(max_length=64)] = None):
    return JSON(svc.list(principal, all_users=all, user=user))


@router.delete("/api/v1/tokens/{token_id}", response_model=TokenPublic, responses=ERRORS,
               summary="Revoke a token (yours; platform-admins: any)")
def revoke(token_id: str, principal: User, caller: CallerDep, svc: Tokens):
    return JSON(svc.revoke(principal, caller, token_id))


@router.post("/api/v1/admin/tokens", status_code=201, response_model=TokenCreated, responses=ERRORS,
             summary="Platform-admins: a token for a user, a scoped service token, or a node-agent token")
async def create_for(body: TokenCreate, principal: User, caller: CallerDep, svc: Tokens):
    out = await run_in_threadpool(svc.create_for, principal, caller, name=body.name, kind=body.kind, role=body.role,
                                  user=body.user, project=body.project, department=body.department,
                                  node=body.node, ttl_days=body.ttl_days)
    return JSON(out, status_code=201, headers={"Cache-Control": "no-store"})
