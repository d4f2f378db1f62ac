"""Audit log query: platform-admins see everything, department-admins their departments."""

from __future__ import annotations

import logging
from typing import Annotated, Optional

from fastapi import APIRouter, Query, Request
from sqlmodel import Session

from broker.api.deps import User
from broker.api.json import JSON
from broker.errors import Forbidden, Invalid
from broker.schemas import ErrorResponse
from broker.auth.policy import Resource
from broker.services.admin import audit as admin_audit

log = logging.getLogger("broker.audit")
router = APIRouter(tags=["audit"])
ERRORS = {c: {"model": ErrorResponse} for c in (401, 403, 422)}
Str = Annotated[Optional[str], Query(max_length=255)]


@router.get("/api/v1/audit/verify", responses=ERRORS, summary="Platform-admins: check the whole hash chain")
def audit_verify(request: Request, principal: User):
    """Recompute every entry's hash in chain order: `intact`, how many `entries`, and the id of
    the first entry that was edited, or whose predecessor was removed (`first_broken_id`)."""
    state = request.app.state
    scope = state.authz.scope(principal, Resource.AUDIT)
    if not scope.all:  # the chain spans every department
        raise Forbidden("verifying the whole audit chain is for platform-admins", code="FORBIDDEN")
    with Session(state.engine) as s:
        return JSON(admin_audit.verify_report(s))


@router.get("/api/v1/audit", responses=ERRORS, summary="Audit entries, newest first")
def audit_log(request: Request, principal: User, action: Str = None, target_kind: Str = None, target_id: Str = None,
              actor: Str = None, department: Str = None, project: Str = None,
              since: Annotated[Optional[float], Query()] = None, until: Annotated[Optional[float], Query()] = None,
              cursor: Annotated[Optional[str], Query(max_length=20)] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 100):
    state = request.app.state
    scope = state.authz.scope(principal, Resource.AUDIT)
    if scope.empty:
        raise Forbidden("the audit log is for platform- and department-admins", code="FORBIDDEN")
    after_id = None
    if cursor is not None:
        if not cursor.isdigit():
            raise Invalid("cursor is malformed; pass next_cursor unchanged", code="BAD_CURSOR")
        after_id = int(cursor)
    try:  # job submits of the last seconds are in the answer too (best effort: the task catches up)
        admin_audit.seal_pending(state.engine, rounds=5)
    except Exception as e:  # noqa: BLE001 - a read must not fail because sealing did
        log.warning("sealing job submits before an audit query failed: %s", e)
    with Session(state.engine) as s:
        body = admin_audit.query(s, scope, action=action, target_kind=target_kind, target_id=target_id, actor=actor,
                                 department=department, project=project, since=since, until=until,
                                 after_id=after_id, limit=limit)
    return JSON(body)
