"""Tenancy routes: users (platform-admins), memberships, departments and projects.

Updates of departments and projects need If-Match with the ETag of a GET (428 without,
412 when stale); responses carry the new ETag.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from fastapi import APIRouter, Header, Query
from fastapi.responses import Response
from pydantic import BaseModel

from broker.api.deps import CallerDep, Tenancy, User
from broker.api.json import JSON
from broker.schemas import ErrorResponse
from broker.schemas.tenancy import (
    DepartmentCreate, DepartmentList, DepartmentMemberAdd, DepartmentPatch, DepartmentPublic, MemberAdd,
    MembershipList, MembershipPublic, ProjectAdminPublic, ProjectCreate, ProjectPatch, UserCreate, UserList,
    UserPatch, UserPublic,
)

router = APIRouter(tags=["tenancy"])
ERRORS = {c: {"model": ErrorResponse} for c in (401, 403, 404, 409, 412, 422, 428)}
IfMatch = Annotated[Optional[str], Header(alias="If-Match", max_length=200)]


def _changes(body: BaseModel, nullable: set[str]) -> dict:
    """Fields the client sent; null clears only nullable fields (e.g. a budget) and is
    ignored for the others (a name or weight cannot be "unset")."""
    return {k: v for k, v in body.model_dump(exclude_unset=True).items() if v is not None or k in nullable}


def _etagged(body: dict, status: int = 200) -> JSON:
    return JSON(body, status_code=status, headers={"ETag": body["etag"]})


# ---------------------------------------------------------------- users
@router.post("/api/v1/admin/users", status_code=201, response_model=UserPublic, responses=ERRORS)
def create_user(svc: Tenancy, body: UserCreate, principal: User, caller: CallerDep):
    return JSON(svc.create_user(principal, caller, **body.model_dump()), status_code=201)


@router.get("/api/v1/admin/users", response_model=UserList, responses=ERRORS)
def list_users(svc: Tenancy, principal: User):
    return JSON(svc.list_users(principal))


@router.patch("/api/v1/admin/users/{user_id}", response_model=UserPublic, responses=ERRORS)
def patch_user(svc: Tenancy, user_id: str, body: UserPatch, principal: User, caller: CallerDep):
    return JSON(svc.set_user_disabled(principal, caller, user_id, body.disabled))


# ---------------------------------------------------------------- departments
@router.get("/api/v1/departments", response_model=DepartmentList, responses=ERRORS)
def list_departments(svc: Tenancy, principal: User):
    return JSON(svc.list_departments(principal))


@router.post("/api/v1/departments", status_code=201, response_model=DepartmentPublic, responses=ERRORS)
def create_department(svc: Tenancy, body: DepartmentCreate, principal: User, caller: CallerDep):
    return _etagged(svc.create_department(principal, caller, **body.model_dump()), 201)


@router.get("/api/v1/departments/{dept}", response_model=DepartmentPublic, responses=ERRORS)
def get_department(svc: Tenancy, dept: str, principal: User):
    return _etagged(svc.get_department(principal, dept))


@router.patch("/api/v1/departments/{dept}", response_model=DepartmentPublic, responses=ERRORS)
def patch_department(svc: Tenancy, dept: str, body: DepartmentPatch, principal: User, caller: CallerDep,
                     if_match: IfMatch = None):
    changes = _changes(body, {"budget_gpu_hours"})
    return _etagged(svc.update_department(principal, caller, dept, changes, if_match))


@router.post("/api/v1/departments/{dept}/projects", status_code=201, response_model=ProjectAdminPublic,
             responses=ERRORS)
def create_project(svc: Tenancy, dept: str, body: ProjectCreate, principal: User, caller: CallerDep):
    return _etagged(svc.create_project(principal, caller, department=dept, **body.model_dump()), 201)


@router.get("/api/v1/departments/{dept}/members", response_model=MembershipList, responses=ERRORS)
def department_members(svc: Tenancy, dept: str, principal: User):
    return JSON(svc.list_members(principal, department=dept))


@router.post("/api/v1/departments/{dept}/members", status_code=201, response_model=MembershipPublic,
             responses=ERRORS)
def add_department_member(svc: Tenancy, dept: str, body: DepartmentMemberAdd, principal: User,
                          caller: CallerDep):
    return JSON(svc.grant(principal, caller, user=body.user, role=body.role, department=dept),
                status_code=201)


@router.delete("/api/v1/departments/{dept}/members/{user}", status_code=204, responses=ERRORS)
def remove_department_member(svc: Tenancy, dept: str, user: str, principal: User, caller: CallerDep,
                             role: Annotated[Literal["department-admin", "ops-viewer"], Query()]):
    svc.revoke(principal, caller, user=user, role=role, department=dept)
    return Response(status_code=204)


# ---------------------------------------------------------------- projects
@router.get("/api/v1/projects/{project}", response_model=ProjectAdminPublic, responses=ERRORS)
def get_project(svc: Tenancy, project: str, principal: User):
    return _etagged(svc.get_project(principal, project))


@router.patch("/api/v1/projects/{project}", response_model=ProjectAdminPublic, responses=ERRORS,
              summary="Budgets, concurrency limits, weight (department-admins); needs If-Match")
def patch_project(svc: Tenancy, project: str, body: ProjectPatch, principal: User, caller: CallerDep,
                  if_match: IfMatch = None):
    changes = _changes(body, {"budget_gpu_hours", "max_running", "max_pending"})
    return _etagged(svc.update_project(principal, caller, project, changes, if_match))


@router.get("/api/v1/projects/{project}/members", response_model=MembershipList, responses=ERRORS)
def project_members(svc: Tenancy, project: str, principal: User):
    return JSON(svc.list_members(principal, project=project))


@router.post("/api/v1/projects/{project}/members", status_code=201, response_model=MembershipPublic,
             responses=ERRORS)
def add_project_member(svc: Tenancy, project: str, body: MemberAdd, principal: User, caller: CallerDep):
    return JSON(svc.grant(principal, caller, user=body.user, role=body.role, project=project),
                status_code=201)


@router.delete("/api/v1/projects/{project}/members/{user}", status_code=204, responses=ERRORS)
def remove_project_member(svc: Tenancy, project: str, user: str, principal: User, caller: CallerDep,
                          role: Annotated[Literal["member", "project-admin"], Query()]):
    svc.revoke(principal, caller, user=user, role=role, project=project)
    return Response(status_code=204)
