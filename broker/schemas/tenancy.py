"""Tenancy shapes (admin): users, memberships, departments and projects."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field

from broker.schemas.base import SLUG, Input

USER_ID = r"^[a-z0-9][a-z0-9._@-]{0,63}$"
PROCESS_RUNTIME_DOC = ("allow runtime 'process' jobs: they run on the host as the broker's user, unconfined "
                       "(host code execution); platform-admins only")


class UserCreate(Input):
    id: str = Field(pattern=USER_ID)
    display_name: str = Field("", max_length=200)
    email: Optional[str] = Field(None, max_length=320)
    oidc_subject: Optional[str] = Field(None, max_length=255)


class UserPatch(Input):
    disabled: bool


class UserPublic(BaseModel):
    id: str
    display_name: str
    email: Optional[str] = None
    oidc_subject: Optional[str] = None
    disabled: bool
    created_at: float


class UserList(BaseModel):
    items: list[UserPublic]


class MemberAdd(Input):
    user: str = Field(pattern=USER_ID)
    role: Literal["member", "project-admin"]


class DepartmentMemberAdd(Input):
    user: str = Field(pattern=USER_ID)
    role: Literal["department-admin", "ops-viewer"]


class MembershipPublic(BaseModel):
    id: str
    user: str
    role: str
    department: Optional[str] = None
    project: Optional[str] = None
    created_at: float
    created_by: str


class MembershipList(BaseModel):
    items: list[MembershipPublic]


class DepartmentCreate(Input):
    id: str = Field(pattern=SLUG)
    name: str = Field(min_length=1, max_length=200)
    weight: float = Field(1.0, gt=0, le=1000)
    budget_gpu_hours: Optional[float] = Field(None, ge=0)


class DepartmentPatch(Input):
    name: Optional[str] = Field(None, min_length=1, max_length=200)
    weight: Optional[float] = Field(None, gt=0, le=1000)
    budget_gpu_hours: Optional[float] = Field(None, ge=0)


class DepartmentPublic(BaseModel):
    id: str
    name: str
    weight: float
    budget_gpu_hours: Optional[float] = None
    etag: str


class DepartmentList(BaseModel):
    items: list[DepartmentPublic]


class ProjectCreate(Input):
    id: str = Field(pattern=SLUG)
    name: str = Field("", max_length=200)
    weight: float = Field(1.0, gt=0, le=1000)
    budget_gpu_hours: Optional[float] = Field(None, ge=0)
    max_running: Optional[int] = Field(None, ge=0, le=100000)
    max_pending: Optional[int] = Field(None, ge=0, le=100000)
    allow_process_runtime: bool = Field(False, description=PROCESS_RUNTIME_DOC)


class ProjectPatch(Input):
    name: Optional[str] = Field(None, max_length=200)
    weight: Optional[float] = Field(None, gt=0, le=1000)
    budget_gpu_hours: Optional[float] = Field(None, ge=0)
    max_running: Optional[int] = Field(None, ge=0, le=100000)
    max_pending: Optional[int] = Field(None, ge=0, le=100000)
    allow_process_runtime: Optional[bool] = Field(None, description=PROCESS_RUNTIME_DOC)


class ProjectAdminPublic(BaseModel):
    id: str
    department: str
    name: str
    weight: float
    budget_gpu_hours: Optional[float] = None
    max_running: Optional[int] = None
    max_pending: Optional[int] = None
    allow_process_runtime: bool = False
    etag: str
