"""Token routes: own tokens for every user; tokens for others and agent tokens for
platform-admins. The plaintext appears only in the 201 response of a create."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from broker.api.deps import CallerDep, Tokens, User
from broker.api.json import JSON
from broker.schemas import ErrorResponse

router = APIRouter(tags=["tokens"])
ERRORS = {c: {"model": ErrorResponse} for c in (401, 403, 404, 422)}
NAME = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}$"
SLUG = r"^[a-z0-9][a-z0-9-]{0,63}$"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OwnTokenCreate(_In):
    name: str = Field(pattern=NAME)
    ttl_days: Optional[float] = Field(None, gt=0, le=365, description="default 90 days")


class TokenCreate(_In):
    name: str = Field(pattern=NAME)
    kind: Literal["user", "agent"] = "user"
    role: str = Field("user", max_length=32, description="'user' (act with the owner's memberships) or a role")
    user: Optional[str] = Field(None, max_length=64)
    project: Optional[str] = Field(None, pattern=SLUG)
    department: Optional[str] = Field(None, pattern=SLUG)
    node: Optional[str] = Field(None, max_length=200)
    ttl_days: Optional[float] = Field(None, gt=0, le=365)


class TokenPublic(BaseModel):
    id: str
    prefix: str
    name: str
    kind: str
    role: str
    project: Optional[str] = None
    department: Optional[str] = None
    node: Optional[str] = None
    owner: Optional[str] = None
    created_at: float
    expires_at: Optional[float] = None
    revoked_at: Optional[float] = None


class TokenCreated(TokenPublic):
    token: str = Field(description="the secret; shown once, store it now")


class TokenList(BaseModel):
    items: list[TokenPublic]


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
