"""Operations routes: idle allocations and idle policies; notification subscriptions.

Thin: parse, authorize in the service, return. Idle allocations are narrowed to the caller's
projects (members see their own jobs); pool admins set the per-pool policies.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from broker.api.deps import CallerDep, User
from broker.api.json import JSON
from broker.schemas import ErrorResponse
from broker.schemas.ops import (IdleAllocationList, IdlePolicyList, IdlePolicyPublic, IdlePolicyPut,
                                SubscriptionCreate, SubscriptionList, SubscriptionPublic)
from broker.services.idle import IdleService
from broker.services.notify import NotifyService

router = APIRouter(tags=["operations"])
ERRORS = {c: {"model": ErrorResponse} for c in (401, 403, 404, 422)}


def _idle(request: Request) -> IdleService:
    return request.app.state.services.idle


def _notify(request: Request) -> NotifyService:
    return request.app.state.services.notify


Idle = Annotated[IdleService, Depends(_idle)]
Notify = Annotated[NotifyService, Depends(_notify)]


@router.get("/api/v1/idle-allocations", response_model=IdleAllocationList, responses=ERRORS,
            summary="Allocations whose GPUs stayed idle over their pool's window (open flags)")
def list_idle(svc: Idle, principal: User, include_cleared: bool = False):
    return JSON(svc.list(principal, include_cleared=include_cleared))


@router.get("/api/v1/admin/idle-policies", response_model=IdlePolicyList, responses=ERRORS,
            summary="Per-pool idle thresholds and whether idle innovation work is reclaimed")
def list_policies(svc: Idle, principal: User):
    return JSON(svc.policies(principal))


@router.put("/api/v1/admin/idle-policies/{pool}", response_model=IdlePolicyPublic, responses=ERRORS,
            summary="Pool admins: set a pool's idle policy")
def put_policy(svc: Idle, pool: str, body: IdlePolicyPut, principal: User, caller: CallerDep):
    return JSON(svc.put_policy(principal, caller, pool, **body.model_dump()))


@router.delete("/api/v1/admin/idle-policies/{pool}", status_code=204, responses=ERRORS,
               summary="Pool admins: remove a pool's idle policy (no more flags there)")
def delete_policy(svc: Idle, pool: str, principal: User, caller: CallerDep):
    svc.delete_policy(principal, caller, pool)
    return Response(status_code=204)


@router.get("/api/v1/notifications/subscriptions", response_model=SubscriptionList, responses=ERRORS,
            summary="Your notification subscriptions (and the events one may subscribe to)")
def list_subscriptions(svc: Notify, principal: User):
    return JSON(svc.list(principal))


@router.post("/api/v1/notifications/subscriptions", status_code=201, response_model=SubscriptionPublic,
             responses=ERRORS, summary="Subscribe to events of a project (or region-wide: admins) by webhook or e-mail")
def subscribe(svc: Notify, body: SubscriptionCreate, principal: User):
    return JSON(svc.subscribe(principal, events=body.events, channel=body.channel, target=body.target,
                              project=body.project), status_code=201)


@router.delete("/api/v1/notifications/subscriptions/{sub_id}", status_code=204, responses=ERRORS,
               summary="Unsubscribe")
def unsubscribe(svc: Notify, sub_id: str, principal: User):
    svc.delete(principal, sub_id)
    return Response(status_code=204)
