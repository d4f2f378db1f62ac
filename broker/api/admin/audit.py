"""Audit log routes: platform-admins see everything, department-admins their departments."""

from __future__ import annotations

from typing import Annotated, Optional

from fastapi import APIRouter, Query

from broker.api.deps import Audit, User
from broker.api.json import JSON
from broker.schemas import ErrorResponse

router = APIRouter(tags=["audit"])
ERRORS = {c: {"model": ErrorResponse} for c in (401, 403, 422)}
Str = Annotated[Optional[str], Query(max_length=255)]


@router.get("/api/v1/audit/verify", responses=ERRORS, summary="Platform-admins: check the whole hash chain")
def audit_verify(principal: User, svc: Audit):
    """Recompute every entry's hash in chain order: `intact`, how many `entries`, and the id of
    the first entry that was edited, or whose predecessor was removed (`first_broken_id`)."""
    return JSON(svc.verify(principal))


@router.get("/api/v1/audit", responses=ERRORS, summary="Audit entries, newest first")
def audit_log(principal: User, svc: Audit, action: Str = None, target_kind: Str = None, target_id: Str = None,
              actor: Str = None, department: Str = None, project: Str = None,
              since: Annotated[Optional[float], Query()] = None, until: Annotated[Optional[float], Query()] = None,
              cursor: Annotated[Optional[str], Query(max_length=20)] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 100):
    return JSON(svc.entries(principal, cursor=cursor, action=action, target_kind=target_kind, target_id=target_id,
                            actor=actor, department=department, project=project, since=since, until=until,
                            limit=limit))
